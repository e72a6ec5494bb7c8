//! The reader's two judgements about the walsender, kept free of I/O so
//! they can be tested on tokio's paused clock:
//!
//! - [`ReceiveTimer`]: is the connection dead? Every message from the server
//!   resets it; after `receive_timeout / 3` of silence the reader asks for a
//!   reply (a status update with the reply-requested flag, which the
//!   walsender answers with a keepalive), again after `2/3`, and at
//!   `receive_timeout` it gives up. The timer does not run while the reader
//!   is not reading because the channel to the publisher is full (the server
//!   cannot be blamed for what we do not read): it restarts from zero when
//!   reading resumes.
//! - [`ShutdownWatch`]: is the walsender waiting for our flush position to
//!   shut down? See the module doc of [`super`] for the mechanism.

use std::time::Duration;

use tokio::time::Instant;

use crate::event::Lsn;

/// What the receive timer asks the reader to do when it wakes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// Nothing yet (woken early).
    Nothing,
    /// Ask the server for a reply.
    Ping,
    /// Nothing arrived for this long: the connection is dead.
    Dead(Duration),
}

/// Silence on the replication connection (see the module doc).
#[derive(Debug)]
pub(super) struct ReceiveTimer {
    timeout: Duration,
    /// Last message from the server, or when reading (re)started.
    last_heard: Instant,
    /// Our last ping since then.
    pinged: Option<Instant>,
}

impl ReceiveTimer {
    pub(super) fn new(timeout: Duration, now: Instant) -> Self {
        ReceiveTimer { timeout, last_heard: now, pinged: None }
    }

    /// A message arrived, or reading resumed after backpressure.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.pinged = None;
    }

    fn ping_every(&self) -> Duration {
        self.timeout / 3
    }

    /// When the reader must next wake up for this timer.
    pub(super) fn next_wake(&self) -> Instant {
        let deadline = self.last_heard + self.timeout;
        let ping = self.pinged.unwrap_or(self.last_heard) + self.ping_every();
        ping.min(deadline)
    }

    /// Decides at `now` (called when [`next_wake`](Self::next_wake) passed).
    pub(super) fn on_wake(&mut self, now: Instant) -> Wake {
        let silent = now.saturating_duration_since(self.last_heard);
        if silent >= self.timeout {
            return Wake::Dead(silent);
        }
        if now >= self.pinged.unwrap_or(self.last_heard) + self.ping_every() {
            self.pinged = Some(now);
            return Wake::Ping;
        }
        Wake::Nothing
    }
}

/// A reply-requested keepalive that follows our answer to the previous one
/// within this much is part of a shutdown ping-pong: in normal operation the
/// walsender asks only after `wal_sender_timeout / 2` without a reply.
const PING_PONG_GAP: Duration = Duration::from_millis(500);
/// How long the ping-pong must last (and at least [`MIN_PINGS`] pings) before
/// the reader gives up on catching up: time for in-flight confirms to land,
/// after which the walsender stops on its own.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
const MIN_PINGS: u32 = 3;

#[derive(Debug)]
struct Streak {
    since: Instant,
    wal_end: Lsn,
    pings: u32,
    answered: Instant,
}

/// Recognises a walsender that waits, at shutdown, for our flush position to
/// reach what it sent.
#[derive(Debug, Default)]
pub(super) struct ShutdownWatch {
    streak: Option<Streak>,
}

impl ShutdownWatch {
    /// WAL data arrived: the walsender is streaming, not waiting.
    pub(super) fn data(&mut self) {
        self.streak = None;
    }

    /// A keepalive with the reply-requested flag, answered at `now`.
    /// Returns the walsender's `wal_end` when the exchange looks like a
    /// shutdown waiting for us (see [`PING_PONG_GAP`], [`SHUTDOWN_GRACE`]).
    pub(super) fn ping(&mut self, now: Instant, wal_end: Lsn) -> Option<Lsn> {
        match &mut self.streak {
            Some(s) if s.wal_end == wal_end && now.saturating_duration_since(s.answered) <= PING_PONG_GAP => {
                s.pings += 1;
                s.answered = now;
            }
            _ => self.streak = Some(Streak { since: now, wal_end, pings: 1, answered: now }),
        }
        let s = self.streak.as_ref()?;
        (s.pings >= MIN_PINGS && now.saturating_duration_since(s.since) >= SHUTDOWN_GRACE).then_some(wal_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(3);

    #[tokio::test(start_paused = true)]
    async fn pings_at_a_third_and_two_thirds_then_gives_up() {
        let start = Instant::now();
        let mut t = ReceiveTimer::new(T, start);
        let mut seen = Vec::new();
        loop {
            tokio::time::sleep_until(t.next_wake()).await;
            let w = t.on_wake(Instant::now());
            seen.push((Instant::now() - start, w));
            if matches!(w, Wake::Dead(_)) {
                break;
            }
        }
        assert_eq!(
            seen,
            [
                (Duration::from_secs(1), Wake::Ping),
                (Duration::from_secs(2), Wake::Ping),
                (Duration::from_secs(3), Wake::Dead(T)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn any_message_resets_the_timer() {
        let mut t = ReceiveTimer::new(T, Instant::now());
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(2900)).await;
            assert_ne!(t.on_wake(Instant::now()), Wake::Dead(Duration::from_millis(2900)));
            t.heard(Instant::now());
        }
        assert_eq!(t.next_wake(), Instant::now() + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn backpressure_does_not_count() {
        // The reader stops reading (the timer is not polled) for longer than
        // the timeout, then resumes: it starts counting from zero.
        let mut t = ReceiveTimer::new(T, Instant::now());
        tokio::time::sleep(Duration::from_secs(30)).await;
        t.heard(Instant::now());
        assert_eq!(t.on_wake(Instant::now()), Wake::Nothing);
        assert_eq!(t.next_wake(), Instant::now() + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ping_pong_is_recognised_after_the_grace() {
        let mut w = ShutdownWatch::default();
        let end = Lsn(100);
        let mut found = None;
        for _ in 0..200 {
            if let Some(at) = w.ping(Instant::now(), end) {
                found = Some(at);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(found, Some(end));
    }

    #[tokio::test(start_paused = true)]
    async fn regular_keepalive_requests_are_not_a_shutdown() {
        // wal_sender_timeout = 2 s: a request every second, answered at once.
        let mut w = ShutdownWatch::default();
        for _ in 0..20 {
            assert_eq!(w.ping(Instant::now(), Lsn(100)), None);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn data_or_a_new_wal_end_breaks_the_streak() {
        let mut w = ShutdownWatch::default();
        for i in 0..200u64 {
            if i % 50 == 49 {
                w.data();
            }
            assert_eq!(w.ping(Instant::now(), Lsn(100)), None, "ping {i}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for i in 0..200u64 {
            assert_eq!(w.ping(Instant::now(), Lsn(100 + i)), None);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
