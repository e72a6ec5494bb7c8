//! What the relay is doing, for the outside world: the readiness state
//! (`/readyz`, systemd STATUS=) and the heartbeat of the streaming loop
//! (`/healthz`, the systemd watchdog). Written by the supervisor and the
//! session, read by `http` and `notify`; never read back to decide what the
//! relay does next (code paths return what happened instead).

use std::sync::atomic::{AtomicU8, Ordering};

/// The streaming loop turns at least every 100 ms; this long without a turn
/// means it is wedged (`/healthz` fails, the systemd watchdog stops pinging).
pub const WEDGED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What the relay is doing, for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Connecting or reconnecting.
    Starting = 0,
    /// Connected to both ends and streaming.
    Streaming = 1,
    /// Another instance holds the slot; this one waits to take over.
    Standby = 2,
    /// Stopping.
    Stopping = 3,
    /// The slot is lost; nothing streams until an operator recovers
    /// ([`Health::lost_reason`] says what happened).
    SlotLost = 4,
}

/// Shared, lock-free health state: what the relay is doing, and when its
/// pipeline last showed it is turning (for the systemd watchdog).
#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
    /// Unix milliseconds of the last [`Health::beat`].
    beat: std::sync::atomic::AtomicU64,
    /// What happened to the slot, while the state is [`State::SlotLost`].
    /// A mutex for a string written once per incident and read per probe;
    /// never held across an await.
    lost: std::sync::Mutex<String>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Health {
    /// Sets the state.
    pub fn set(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
        self.beat();
    }

    /// Enters [`State::SlotLost`] with the reason `/readyz` shows.
    pub fn slot_lost(&self, reason: &str) {
        *self.lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reason.to_owned();
        self.set(State::SlotLost);
    }

    /// What happened to the slot (empty unless the slot is lost).
    pub fn lost_reason(&self) -> String {
        self.lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Records that the streaming loop is turning.
    pub fn beat(&self) {
        self.beat.store(unix_ms(), Ordering::Relaxed);
    }

    /// Whether the process is not wedged: while streaming, the loop must have
    /// turned within `within`; other states are bounded by their own timeouts.
    pub fn alive(&self, within: std::time::Duration) -> bool {
        self.get() != State::Streaming
            || unix_ms().saturating_sub(self.beat.load(Ordering::Relaxed)) <= within.as_millis() as u64
    }

    /// The state.
    pub fn get(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Streaming,
            2 => State::Standby,
            3 => State::Stopping,
            4 => State::SlotLost,
            _ => State::Starting,
        }
    }
}
