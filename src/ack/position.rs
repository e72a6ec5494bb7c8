//! The flush position reported to PostgreSQL: monotonic, never ahead of a
//! confirm.
//!
//! Two sources feed it. While anything is in flight, only the tracker's
//! confirmed commit end LSN counts. When nothing is in flight and no
//! transaction is half received, the last keepalive `wal_end` may be reported
//! too: a keepalive promises that everything before it was sent, and we have
//! handled all of it, so an idle outbox (or one beside busy unrelated tables)
//! never makes the slot retain WAL. Whatever the candidate, the value never
//! moves backwards.

use crate::event::{EndLsn, KeepaliveLsn, Lsn, Position};

/// The newest position known confirmed (reported to the server, or about to
/// be), kept beyond one session: the
/// next START_REPLICATION may begin there instead of at the slot's own
/// position, which PostgreSQL 15 and 16 may have lost at a restart (they do
/// not save a slot whose only change is its confirmed position at a shutdown
/// checkpoint). Shared by the reader (writes) and the session (reads).
#[derive(Debug, Default)]
pub struct Reported(std::sync::atomic::AtomicU64);

impl Reported {
    /// Records a position everything before which the broker confirmed.
    pub fn remember(&self, position: Position) {
        self.0.fetch_max(position.0 .0, std::sync::atomic::Ordering::Relaxed);
    }

    /// The newest position reported, if any.
    pub fn get(&self) -> Option<Lsn> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            v => Some(Lsn(v)),
        }
    }

    /// Forgets it: a new slot starts from its own position.
    pub fn forget(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The monotonic flush position of one replication session.
#[derive(Debug, Clone, Copy)]
pub struct FlushPosition {
    /// The largest position ever offered; what status updates carry.
    current: Position,
    /// The position last actually sent to the server.
    sent: Position,
}

impl FlushPosition {
    /// Starts at the slot's `confirmed_flush_lsn`: the server will not
    /// accept anything lower anyway, and we have nothing newer.
    pub fn new(start: Lsn) -> Self {
        FlushPosition { current: Position(start), sent: Position(start) }
    }

    /// Offers a confirmed commit end LSN.
    pub fn confirmed(&mut self, lsn: EndLsn) {
        self.offer(lsn.0);
    }

    /// Offers a keepalive position. The caller guarantees that nothing is in
    /// flight and no transaction is half received.
    pub fn idle_keepalive(&mut self, lsn: KeepaliveLsn) {
        self.offer(lsn.0);
    }

    fn offer(&mut self, lsn: Lsn) {
        if lsn > self.current.0 {
            self.current = Position(lsn);
        }
    }

    /// The position to report.
    pub fn current(&self) -> Position {
        self.current
    }

    /// True when the current position has not been sent yet.
    pub fn unsent(&self) -> bool {
        self.current > self.sent
    }

    /// Records that `current()` was sent.
    pub fn mark_sent(&mut self) {
        self.sent = self.current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_moves_backwards() {
        let mut p = FlushPosition::new(Lsn(100));
        p.confirmed(EndLsn(Lsn(50)));
        assert_eq!(p.current(), Position(Lsn(100)));
        assert!(!p.unsent());
        p.idle_keepalive(KeepaliveLsn(Lsn(200)));
        assert!(p.unsent());
        p.mark_sent();
        p.confirmed(EndLsn(Lsn(150)));
        assert_eq!(p.current(), Position(Lsn(200)));
        assert!(!p.unsent());
    }
}
