//! The in-flight set: transactions in commit order, each with a count of
//! events not yet confirmed.
//!
//! The invariant this module exists for: the reported position is the end LSN
//! of the newest transaction that, *together with every transaction before
//! it*, is fully confirmed. A confirmed later transaction never moves the
//! position past an earlier one that is still waiting (returned, nacked or
//! unanswered): the position stops at the first gap. Owned by the publisher
//! task alone; no lock.

use std::collections::VecDeque;

use crate::event::{PgTimestamp, SourcePosition};

/// Identifies a registered transaction: a sequence number, so the entry's
/// index in the queue is `id - front_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(u64);

/// What the publisher reports to the source after each change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The newest transaction confirmed with all before it (its end LSN, or
    /// its polling batch).
    pub confirmed: Option<SourcePosition>,
    /// Commit time of that transaction (for the durable progress record).
    pub confirmed_commit_time: Option<PgTimestamp>,
    /// How many transactions have been fully confirmed since the pipeline
    /// started. The source compares it with how many it handed over to know
    /// whether anything is still in flight.
    pub txns_done: u64,
}

#[derive(Debug)]
struct Entry {
    /// The transaction's place in its source's order.
    position: SourcePosition,
    /// Commit time, for `lag_seconds`.
    commit_time: PgTimestamp,
    /// Events of this transaction not yet confirmed.
    unconfirmed: usize,
    /// More parts of it are still to come: it cannot complete yet.
    open: bool,
}

/// Ordered in-flight transactions.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Oldest first. Entries leave only from the front, and only once
    /// confirmed, so the front is always the first gap.
    entries: VecDeque<Entry>,
    /// Id of `entries[0]` (or of the next registered one when empty).
    front_id: u64,
    /// The newest fully confirmed prefix, and how many transactions it holds.
    progress: Progress,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Tracker::default()
    }

    /// Registers a transaction of `events` events, before any of them is
    /// published. Transactions must be registered in commit order; a
    /// transaction with no events completes at once, unless `open` (more
    /// parts follow: see [`Tracker::extend`]).
    ///
    /// # Panics
    ///
    /// In debug builds, if `position` sorts before the previous one.
    pub fn register(&mut self, position: SourcePosition, commit_time: PgTimestamp, events: usize, open: bool) -> TxnId {
        debug_assert!(
            self.entries.back().is_none_or(|e| e.position.sort_key() <= position.sort_key()),
            "transactions registered out of commit order"
        );
        let id = TxnId(self.front_id + self.entries.len() as u64);
        self.entries.push_back(Entry { position, commit_time, unconfirmed: events, open });
        self.advance();
        id
    }

    /// Adds the next part of an open transaction: `events` more events, and,
    /// with `last`, its final position (the end LSN), closing it.
    ///
    /// # Panics
    ///
    /// If `txn` is not in flight or not open.
    pub fn extend(&mut self, txn: TxnId, events: usize, last: Option<SourcePosition>) {
        let idx = txn.0.checked_sub(self.front_id).expect("extend of a transaction already done") as usize;
        let entry = self.entries.get_mut(idx).expect("extend of an unknown transaction");
        assert!(entry.open, "extend of a closed transaction");
        entry.unconfirmed += events;
        if let Some(position) = last {
            entry.position = position;
            entry.open = false;
        }
        if idx == 0 {
            self.advance();
        }
    }

    /// Records the broker's confirm of one event of `txn`. Returns true when
    /// the confirmed position moved.
    ///
    /// # Panics
    ///
    /// If `txn` is not in flight or has no unconfirmed event left: that would
    /// be a double confirm, a bug that could move the position too early.
    pub fn confirm(&mut self, txn: TxnId) -> bool {
        let idx = txn.0.checked_sub(self.front_id).expect("confirm for a transaction already done") as usize;
        let entry = self.entries.get_mut(idx).expect("confirm for an unknown transaction");
        assert!(entry.unconfirmed > 0, "more confirms than events for a transaction");
        entry.unconfirmed -= 1;
        idx == 0 && self.advance()
    }

    /// Pops every fully confirmed transaction at the front.
    fn advance(&mut self) -> bool {
        let mut moved = false;
        while let Some(front) = self.entries.front() {
            if front.unconfirmed > 0 || front.open {
                break;
            }
            let done = self.entries.pop_front().expect("front exists");
            self.front_id += 1;
            self.progress.confirmed = Some(done.position);
            self.progress.confirmed_commit_time = Some(done.commit_time);
            self.progress.txns_done += 1;
            moved = true;
        }
        moved
    }

    /// The confirmed prefix.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// True when no transaction is waiting for a confirm.
    pub fn is_idle(&self) -> bool {
        self.entries.is_empty()
    }

    /// Commit time of the oldest transaction not yet fully confirmed.
    pub fn oldest_pending_commit(&self) -> Option<PgTimestamp> {
        self.entries.front().map(|e| e.commit_time)
    }

    /// Commit time of an in-flight transaction.
    pub fn commit_time(&self, txn: TxnId) -> Option<PgTimestamp> {
        let idx = txn.0.checked_sub(self.front_id)? as usize;
        self.entries.get(idx).map(|e| e.commit_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{BatchSeq, EndLsn, Lsn};
    use proptest::prelude::*;

    fn lsn(n: u64) -> SourcePosition {
        SourcePosition::Wal(EndLsn(Lsn(n)))
    }

    #[test]
    fn a_transaction_in_parts_completes_only_with_its_last_part_at_its_end_lsn() {
        let mut t = Tracker::new();
        let a = t.register(SourcePosition::WalCommit(Lsn(100)), PgTimestamp(0), 2, true);
        t.confirm(a);
        t.confirm(a);
        assert_eq!(t.progress().confirmed, None, "all confirmed so far, but more parts follow");
        t.extend(a, 1, None);
        t.confirm(a);
        assert_eq!(t.progress().confirmed, None);
        t.extend(a, 0, Some(lsn(120)));
        assert_eq!(t.progress().confirmed, Some(lsn(120)), "closed: the end LSN, never the commit LSN");
        let b = t.register(lsn(130), PgTimestamp(0), 1, false);
        t.confirm(b);
        assert_eq!(t.progress().txns_done, 2);
    }

    #[test]
    fn polling_batches_are_tracked_by_their_own_sequence() {
        let mut t = Tracker::new();
        let a = t.register(SourcePosition::Batch(BatchSeq(1)), PgTimestamp(0), 2, false);
        t.confirm(a);
        assert_eq!(t.progress().confirmed, None);
        t.confirm(a);
        assert_eq!(t.progress().confirmed, Some(SourcePosition::Batch(BatchSeq(1))));
        assert_eq!(t.progress().confirmed.and_then(SourcePosition::end_lsn), None, "a batch is never an LSN");
    }

    #[test]
    fn position_stops_at_the_first_unconfirmed_transaction() {
        let mut t = Tracker::new();
        let a = t.register(lsn(10), PgTimestamp(0), 2, false);
        let b = t.register(lsn(20), PgTimestamp(0), 1, false);
        assert!(!t.confirm(b), "a later confirm must not move the position past an earlier gap");
        assert_eq!(t.progress().confirmed, None);
        assert!(!t.confirm(a));
        assert!(t.confirm(a));
        assert_eq!(
            t.progress(),
            Progress { confirmed: Some(lsn(20)), confirmed_commit_time: Some(PgTimestamp(0)), txns_done: 2 }
        );
        assert!(t.is_idle());
    }

    #[test]
    fn empty_transaction_completes_when_everything_before_it_did() {
        let mut t = Tracker::new();
        let a = t.register(lsn(10), PgTimestamp(0), 1, false);
        t.register(lsn(20), PgTimestamp(0), 0, false);
        assert_eq!(t.progress().confirmed, None);
        t.confirm(a);
        assert_eq!(t.progress().confirmed, Some(lsn(20)));
        t.register(lsn(30), PgTimestamp(0), 0, false);
        assert_eq!(t.progress().confirmed, Some(lsn(30)));
        assert_eq!(t.progress().txns_done, 3);
    }

    #[test]
    #[should_panic(expected = "more confirms than events")]
    fn a_double_confirm_is_a_bug_not_a_position() {
        let mut t = Tracker::new();
        let _a = t.register(lsn(10), PgTimestamp(0), 1, false);
        let b = t.register(lsn(20), PgTimestamp(0), 2, false);
        t.confirm(b);
        t.confirm(b);
        t.confirm(b);
    }

    proptest! {
        /// Whatever order confirms arrive in, the reported position is always
        /// the end of the longest fully confirmed prefix, and never goes back.
        #[test]
        fn position_is_the_longest_confirmed_prefix(
            sizes in proptest::collection::vec(0usize..4, 1..30),
            seed in any::<u64>(),
        ) {
            let mut t = Tracker::new();
            let ids: Vec<TxnId> = sizes.iter().enumerate()
                .map(|(i, &n)| t.register(lsn((i as u64 + 1) * 10), PgTimestamp(0), n, false))
                .collect();
            let mut confirms: Vec<usize> = sizes.iter().enumerate()
                .flat_map(|(i, &n)| std::iter::repeat_n(i, n)).collect();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(&mut confirms);
            let mut left = sizes.clone();
            let mut last = t.progress().confirmed;
            for i in confirms {
                t.confirm(ids[i]);
                left[i] -= 1;
                let prefix = left.iter().take_while(|&&n| n == 0).count();
                let expected = if prefix == 0 { None } else { Some(lsn(prefix as u64 * 10)) };
                prop_assert_eq!(t.progress().confirmed, expected);
                prop_assert!(t.progress().confirmed >= last);
                last = t.progress().confirmed;
            }
            prop_assert!(t.is_idle());
            prop_assert_eq!(t.progress().txns_done, sizes.len() as u64);
        }
    }
}
