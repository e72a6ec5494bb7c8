//! Assembles decoded pgoutput messages into whole committed transactions: the
//! unit the relay publishes and acknowledges. A pure state machine (no I/O;
//! the clock is injectable), so every ordering rule is unit tested.
//! Longer than our usual 600 lines on purpose: about 360 lines of code, then
//! those tests (property tests included), kept beside the rules they check.
//!
//! It owns two pieces of state: the relation cache (pgoutput describes a
//! table once per session and again whenever it changes, so a new Relation
//! message for a known id *replaces* the entry) and the transaction being
//! received.
//!
//! A transaction larger than a part ([`PART_EVENTS`] events or
//! [`PART_BYTES`] bytes of row data) is handed over in parts as its rows
//! arrive, so memory does not grow with the transaction: with protocol 1 the
//! server sends a transaction only once it has committed, so publishing its
//! first rows before its Commit arrives is safe. The position the relay
//! reports still waits for the last part (see [`crate::event::Part`]).
//!
//! Protocol surprises worth knowing:
//! - The end LSN — the only position safe to report as flushed — arrives
//!   last, in Commit. A transaction that fits in one part is stamped with it;
//!   the parts of a larger one carry its commit LSN (Begin's `final_lsn`,
//!   [`SourcePosition::WalCommit`]) until the last part, which is keyed by the
//!   end LSN.
//! - Begin's `final_lsn` is the commit record's *start* and must equal
//!   Commit's `commit_lsn`; it is not a flush position.
//! - A non-transactional logical decoding message is sent the moment it is
//!   decoded, outside any transaction, and becomes a one-event transaction of
//!   its own. Its end LSN is the message's own `lsn`, with no `+ 1`: see
//!   [`standalone_end_lsn`].
//! - pgoutput (PostgreSQL 15+) sends no Begin/Commit for transactions with
//!   nothing to publish, so gaps in transaction ids are normal.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::event::{Column, EndLsn, EventSource, Lsn, OutboxEvent, Part, PgTimestamp, SourcePosition, Transaction};

use super::pgoutput::PgOutputMessage;
use super::protocol::pg_clock_now;

/// Turns pgoutput messages into [`Transaction`]s. Feed every decoded message
/// to [`push`](Self::push) in arrival order.
///
/// After an error the replication stream is not trustworthy: drop the
/// connection, and call [`reset`](Self::reset) (or make a new assembler)
/// before feeding a new stream.
#[derive(Debug)]
pub struct TransactionAssembler {
    /// Relation id → (qualified name, columns). Replaced by newer Relation
    /// messages for the same id.
    relations: HashMap<u32, (String, Arc<Vec<Column>>)>,
    /// The transaction between Begin and Commit, if any.
    open: Option<OpenTransaction>,
    /// Source of "now" for standalone messages.
    clock: fn() -> PgTimestamp,
}

/// Events buffered before a part is handed over.
pub const PART_EVENTS: usize = 512;
/// Row bytes buffered before a part is handed over.
pub const PART_BYTES: usize = 256 * 1024;

/// A transaction whose Commit has not arrived yet.
#[derive(Debug)]
struct OpenTransaction {
    final_lsn: Lsn,
    xid: u32,
    commit_time: PgTimestamp,
    /// Events not handed over yet.
    sources: Vec<EventSource>,
    /// Row bytes in `sources`.
    bytes: usize,
    /// Events handed over in earlier parts (the next ordinal).
    sent: u32,
}

/// Why a message could not be applied to the transaction being assembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssembleError {
    /// A Begin arrived while another transaction was still open.
    BeginInsideTransaction {
        /// The new Begin's final LSN.
        final_lsn: Lsn,
        /// The new Begin's xid.
        xid: u32,
        /// Final LSN of the transaction still open.
        open_final_lsn: Lsn,
        /// Xid of the transaction still open.
        open_xid: u32,
    },
    /// An Insert arrived outside Begin..Commit.
    InsertOutsideTransaction {
        /// The Insert's relation id.
        relation_id: u32,
    },
    /// A transactional Message arrived outside Begin..Commit.
    MessageOutsideTransaction {
        /// The message's LSN.
        lsn: Lsn,
        /// The message's prefix.
        prefix: String,
    },
    /// An Insert named a relation id no Relation message described.
    UnknownRelation {
        /// The unknown id.
        relation_id: u32,
        /// Final LSN of the transaction containing the Insert.
        final_lsn: Lsn,
    },
    /// An Insert had a different number of values than its relation columns.
    ColumnCountMismatch {
        /// The relation id.
        relation_id: u32,
        /// The relation's qualified name.
        table: String,
        /// Columns in the cached Relation message.
        columns: usize,
        /// Values in the Insert.
        values: usize,
        /// Final LSN of the transaction containing the Insert.
        final_lsn: Lsn,
    },
    /// A transaction had more events than an ordinal (u32) can number.
    TooManyEvents {
        /// Final LSN of the transaction.
        final_lsn: Lsn,
    },
    /// A Commit arrived with no transaction open.
    CommitOutsideTransaction {
        /// The Commit's commit LSN.
        commit_lsn: Lsn,
        /// The Commit's end LSN.
        end_lsn: EndLsn,
    },
    /// A Commit's `commit_lsn` differed from the open Begin's `final_lsn`.
    CommitLsnMismatch {
        /// The Commit's commit LSN.
        commit_lsn: Lsn,
        /// The open Begin's final LSN.
        final_lsn: Lsn,
        /// The open Begin's xid.
        xid: u32,
    },
}

impl fmt::Display for AssembleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssembleError::BeginInsideTransaction { final_lsn, xid, open_final_lsn, open_xid } => write!(
                f,
                "Begin (xid {xid}, final LSN {final_lsn}) while transaction xid {open_xid} \
                 (final LSN {open_final_lsn}) has not committed"
            ),
            AssembleError::InsertOutsideTransaction { relation_id } => {
                write!(f, "Insert into relation {relation_id} outside a transaction (no Begin)")
            }
            AssembleError::MessageOutsideTransaction { lsn, prefix } => {
                write!(f, "transactional Message (prefix {prefix:?}, LSN {lsn}) outside a transaction (no Begin)")
            }
            AssembleError::UnknownRelation { relation_id, final_lsn } => write!(
                f,
                "Insert into relation {relation_id} with no Relation message for it \
                 (transaction final LSN {final_lsn})"
            ),
            AssembleError::ColumnCountMismatch { relation_id, table, columns, values, final_lsn } => write!(
                f,
                "Insert into {table} (relation {relation_id}) has {values} values but the relation \
                 has {columns} columns (transaction final LSN {final_lsn})"
            ),
            AssembleError::TooManyEvents { final_lsn } => {
                write!(f, "transaction with final LSN {final_lsn} has more than {} events", u32::MAX)
            }
            AssembleError::CommitOutsideTransaction { commit_lsn, end_lsn } => {
                write!(f, "Commit (commit LSN {commit_lsn}, end LSN {end_lsn}) outside a transaction (no Begin)")
            }
            AssembleError::CommitLsnMismatch { commit_lsn, final_lsn, xid } => {
                write!(f, "Commit LSN {commit_lsn} differs from final LSN {final_lsn} announced by Begin of xid {xid}")
            }
        }
    }
}

impl std::error::Error for AssembleError {}

/// The end LSN given to a non-transactional message (its own one-event
/// transaction): the message's `lsn`, unchanged.
///
/// pgoutput's Message `lsn` is the *end* of the message's WAL record (the
/// server passes the decoded record's end pointer, i.e. where the next record
/// may begin), exactly like Commit's `end_lsn`. On restart the server skips
/// records *starting* before `confirmed_flush`, so confirming `lsn`:
/// - does not re-send the message (its record starts before `lsn`), and
/// - does not skip the next record (it starts at or after `lsn`).
///
/// `lsn + 1` would be wrong: WAL records are 8-byte aligned and the next one
/// usually starts *exactly* at `lsn`, so a commit record there would be
/// skipped after a restart and its transaction lost. If the server ever sent
/// a record's start instead, confirming `lsn` would merely re-send the message
/// (a duplicate, which at-least-once delivery allows), never lose data.
pub fn standalone_end_lsn(lsn: Lsn) -> EndLsn {
    EndLsn(lsn)
}

impl Default for TransactionAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl TransactionAssembler {
    /// An assembler with an empty relation cache, using the system clock for
    /// standalone messages.
    pub fn new() -> Self {
        Self::with_clock(|| PgTimestamp(pg_clock_now()))
    }

    /// Like [`new`](Self::new) with a custom clock for the commit time of
    /// standalone (non-transactional) messages; for deterministic tests.
    pub fn with_clock(clock: fn() -> PgTimestamp) -> Self {
        Self { relations: HashMap::new(), open: None, clock }
    }

    /// True between a Begin and its Commit.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Forgets the open transaction and the relation cache, for a new
    /// replication connection (the server re-sends Relation messages to each
    /// new session before they are needed).
    pub fn reset(&mut self) {
        self.open = None;
        self.relations.clear();
    }

    /// Applies one message. Returns a transaction when one completes: at
    /// Commit, or immediately for a non-transactional logical decoding
    /// message (even one arriving inside a transaction, of which it is not
    /// part). A failing message leaves the state as it was.
    pub fn push(&mut self, msg: PgOutputMessage) -> Result<Option<Transaction>, AssembleError> {
        match msg {
            PgOutputMessage::Begin { final_lsn, xid, commit_time } => {
                if let Some(open) = &self.open {
                    return Err(AssembleError::BeginInsideTransaction {
                        final_lsn,
                        xid,
                        open_final_lsn: open.final_lsn,
                        open_xid: open.xid,
                    });
                }
                self.open =
                    Some(OpenTransaction { final_lsn, xid, commit_time, sources: Vec::new(), bytes: 0, sent: 0 });
                Ok(None)
            }
            PgOutputMessage::Relation(rel) => {
                let name = rel.qualified_name();
                self.relations.insert(rel.id, (name, Arc::new(rel.columns)));
                Ok(None)
            }
            PgOutputMessage::Insert { relation_id, values } => {
                let Some(open) = self.open.as_mut() else {
                    return Err(AssembleError::InsertOutsideTransaction { relation_id });
                };
                let Some((table, columns)) = self.relations.get(&relation_id) else {
                    return Err(AssembleError::UnknownRelation { relation_id, final_lsn: open.final_lsn });
                };
                if values.len() != columns.len() {
                    return Err(AssembleError::ColumnCountMismatch {
                        relation_id,
                        table: table.clone(),
                        columns: columns.len(),
                        values: values.len(),
                        final_lsn: open.final_lsn,
                    });
                }
                open.add(EventSource::Row { table: table.clone(), columns: Arc::clone(columns), values })?;
                Ok(open.part_if_full())
            }
            PgOutputMessage::Message { transactional: true, lsn, prefix, content } => {
                let Some(open) = self.open.as_mut() else {
                    return Err(AssembleError::MessageOutsideTransaction { lsn, prefix });
                };
                open.add(EventSource::Message { prefix, content })?;
                Ok(open.part_if_full())
            }
            PgOutputMessage::Message { transactional: false, lsn, prefix, content } => {
                let end_lsn = standalone_end_lsn(lsn);
                let commit_time = (self.clock)();
                let event = OutboxEvent {
                    source: EventSource::Message { prefix, content },
                    position: SourcePosition::Wal(end_lsn),
                    commit_time,
                    ordinal: 0,
                };
                Ok(Some(Transaction {
                    position: SourcePosition::Wal(end_lsn),
                    commit_time,
                    events: vec![event],
                    part: Part::WHOLE,
                }))
            }
            PgOutputMessage::Commit { commit_lsn, end_lsn, commit_time } => {
                let Some(open) = self.open.take_if(|open| open.final_lsn == commit_lsn) else {
                    return Err(match &self.open {
                        None => AssembleError::CommitOutsideTransaction { commit_lsn, end_lsn },
                        Some(open) => {
                            AssembleError::CommitLsnMismatch { commit_lsn, final_lsn: open.final_lsn, xid: open.xid }
                        }
                    });
                };
                let continued = open.sent > 0;
                // The events of a transaction in parts all carry its commit LSN.
                let stamp =
                    if continued { SourcePosition::WalCommit(open.final_lsn) } else { SourcePosition::Wal(end_lsn) };
                let events = (open.sent..)
                    .zip(open.sources)
                    .map(|(ordinal, source)| OutboxEvent { source, position: stamp, commit_time, ordinal })
                    .collect();
                Ok(Some(Transaction {
                    position: SourcePosition::Wal(end_lsn),
                    commit_time,
                    events,
                    part: Part { continued, more: false },
                }))
            }
            PgOutputMessage::Skipped { .. } => Ok(None),
        }
    }
}

impl OpenTransaction {
    /// Appends an event, keeping every ordinal representable as a u32.
    fn add(&mut self, source: EventSource) -> Result<(), AssembleError> {
        let count = u32::try_from(self.sources.len()).ok().and_then(|n| n.checked_add(self.sent));
        if count.is_none() {
            return Err(AssembleError::TooManyEvents { final_lsn: self.final_lsn });
        }
        self.bytes += source.data_bytes();
        self.sources.push(source);
        Ok(())
    }

    /// Hands over the buffered events as a part once there are enough.
    fn part_if_full(&mut self) -> Option<Transaction> {
        if self.sources.len() < PART_EVENTS && self.bytes < PART_BYTES {
            return None;
        }
        let position = SourcePosition::WalCommit(self.final_lsn);
        let (commit_time, first) = (self.commit_time, self.sent);
        let sources = std::mem::take(&mut self.sources);
        self.sent += sources.len() as u32;
        self.bytes = 0;
        let events = (first..)
            .zip(sources)
            .map(|(ordinal, source)| OutboxEvent { source, position, commit_time, ordinal })
            .collect();
        Some(Transaction { position, commit_time, events, part: Part { continued: first > 0, more: true } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Datum;
    use crate::source::replication::pgoutput::{self, Relation};
    use proptest::prelude::*;

    const NOW: PgTimestamp = PgTimestamp(123_456);

    fn assembler() -> TransactionAssembler {
        TransactionAssembler::with_clock(|| NOW)
    }

    fn relation(id: u32, name: &str, cols: &[&str]) -> PgOutputMessage {
        PgOutputMessage::Relation(Relation {
            id,
            namespace: "public".into(),
            name: name.into(),
            columns: cols.iter().map(|c| Column { name: (*c).into(), type_oid: 25 }).collect(),
        })
    }

    fn begin(final_lsn: u64) -> PgOutputMessage {
        PgOutputMessage::Begin { final_lsn: Lsn(final_lsn), commit_time: PgTimestamp(1), xid: 700 }
    }

    fn commit(commit_lsn: u64, end_lsn: u64, time: i64) -> PgOutputMessage {
        PgOutputMessage::Commit {
            commit_lsn: Lsn(commit_lsn),
            end_lsn: EndLsn(Lsn(end_lsn)),
            commit_time: PgTimestamp(time),
        }
    }

    fn insert(relation_id: u32, texts: &[&str]) -> PgOutputMessage {
        PgOutputMessage::Insert {
            relation_id,
            values: texts.iter().map(|t| Datum::Text(t.as_bytes().to_vec().into())).collect(),
        }
    }

    fn message(transactional: bool, lsn: u64, prefix: &str) -> PgOutputMessage {
        PgOutputMessage::Message { transactional, lsn: Lsn(lsn), prefix: prefix.into(), content: b"c".to_vec() }
    }

    /// Feeds messages through the real byte decoder too, to tie the modules together.
    fn push_wire(a: &mut TransactionAssembler, msg: &PgOutputMessage) -> Result<Option<Transaction>, AssembleError> {
        a.push(pgoutput::decode(&pgoutput::encode(msg)).unwrap())
    }

    #[test]
    fn three_inserts_and_a_message_get_ordinals_and_the_commit_end_lsn() {
        let mut a = assembler();
        assert!(push_wire(&mut a, &relation(1, "outbox", &["id", "body"])).unwrap().is_none());
        assert!(!a.in_transaction());
        assert!(push_wire(&mut a, &begin(0x100)).unwrap().is_none());
        assert!(a.in_transaction());
        for (i, msg) in
            [insert(1, &["1", "a"]), insert(1, &["2", "b"]), message(true, 0xF0, "px"), insert(1, &["3", "c"])]
                .iter()
                .enumerate()
        {
            assert!(push_wire(&mut a, msg).unwrap().is_none(), "message {i}");
        }
        assert!(push_wire(&mut a, &PgOutputMessage::Skipped { tag: b'U' }).unwrap().is_none());
        let tx = push_wire(&mut a, &commit(0x100, 0x128, 99)).unwrap().unwrap();
        assert!(!a.in_transaction());
        assert_eq!(tx.position, SourcePosition::Wal(EndLsn(Lsn(0x128))));
        assert_eq!(tx.commit_time, PgTimestamp(99));
        assert_eq!(tx.events.len(), 4);
        for (i, ev) in tx.events.iter().enumerate() {
            assert_eq!(ev.ordinal as usize, i);
            assert_eq!(ev.position, SourcePosition::Wal(EndLsn(Lsn(0x128))));
            assert_eq!(ev.commit_time, PgTimestamp(99));
        }
        match &tx.events[0].source {
            EventSource::Row { table, columns, values } => {
                assert_eq!(table, "public.outbox");
                assert_eq!(columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "body"]);
                assert_eq!(values, &vec![Datum::Text(b"1".to_vec().into()), Datum::Text(b"a".to_vec().into())]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(tx.events[2].source, EventSource::Message { prefix: "px".into(), content: b"c".to_vec() });
        assert!(
            matches!(&tx.events[3].source, EventSource::Row { values, .. } if values[0] == Datum::Text(b"3".to_vec().into()))
        );
    }

    #[test]
    fn empty_transaction_still_commits() {
        let mut a = assembler();
        a.push(begin(5)).unwrap();
        let tx = a.push(commit(5, 8, 2)).unwrap().unwrap();
        assert_eq!(
            tx,
            Transaction {
                position: SourcePosition::Wal(EndLsn(Lsn(8))),
                commit_time: PgTimestamp(2),
                events: vec![],
                part: Part::WHOLE
            }
        );
    }

    #[test]
    fn relation_replacement_changes_columns_for_later_inserts() {
        let mut a = assembler();
        a.push(relation(1, "outbox", &["id", "old"])).unwrap();
        a.push(begin(1)).unwrap();
        a.push(insert(1, &["1", "x"])).unwrap();
        // Schema change mid-stream (ALTER TABLE): the relation is re-sent.
        a.push(relation(1, "outbox2", &["id", "new", "extra"])).unwrap();
        assert!(matches!(
            a.push(insert(1, &["2", "y"])),
            Err(AssembleError::ColumnCountMismatch { columns: 3, values: 2, .. })
        ));
        a.push(insert(1, &["2", "y", "z"])).unwrap();
        let tx = a.push(commit(1, 2, 0)).unwrap().unwrap();
        let names = |ev: &OutboxEvent| match &ev.source {
            EventSource::Row { table, columns, .. } => {
                (table.clone(), columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>())
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(names(&tx.events[0]), ("public.outbox".into(), vec!["id".into(), "old".into()]));
        assert_eq!(names(&tx.events[1]), ("public.outbox2".into(), vec!["id".into(), "new".into(), "extra".into()]));
    }

    #[test]
    fn insert_without_begin_errors() {
        let mut a = assembler();
        a.push(relation(1, "outbox", &["id"])).unwrap();
        let err = a.push(insert(1, &["1"])).unwrap_err();
        assert_eq!(err, AssembleError::InsertOutsideTransaction { relation_id: 1 });
        assert!(err.to_string().contains("relation 1"), "{err}");
    }

    #[test]
    fn unknown_relation_and_nested_begin_error_with_context() {
        let mut a = assembler();
        a.push(begin(0x10)).unwrap();
        let err = a.push(insert(9, &["1"])).unwrap_err();
        assert_eq!(err, AssembleError::UnknownRelation { relation_id: 9, final_lsn: Lsn(0x10) });
        assert!(err.to_string().contains("0/10"), "{err}");
        let err = a.push(begin(0x20)).unwrap_err();
        assert!(matches!(err, AssembleError::BeginInsideTransaction { open_final_lsn: Lsn(0x10), .. }));
        assert!(a.in_transaction());
    }

    #[test]
    fn commit_errors_without_begin_or_with_a_different_lsn() {
        let mut a = assembler();
        assert_eq!(
            a.push(commit(1, 2, 0)),
            Err(AssembleError::CommitOutsideTransaction { commit_lsn: Lsn(1), end_lsn: EndLsn(Lsn(2)) })
        );
        a.push(begin(1)).unwrap();
        let err = a.push(commit(3, 4, 0)).unwrap_err();
        assert_eq!(err, AssembleError::CommitLsnMismatch { commit_lsn: Lsn(3), final_lsn: Lsn(1), xid: 700 });
        assert!(a.in_transaction(), "a failing Commit leaves the transaction open");
        assert!(a.push(commit(1, 4, 0)).unwrap().is_some());
    }

    #[test]
    fn transactional_message_outside_a_transaction_errors() {
        let mut a = assembler();
        assert!(matches!(a.push(message(true, 5, "p")), Err(AssembleError::MessageOutsideTransaction { .. })));
    }

    #[test]
    fn standalone_message_is_its_own_transaction_at_its_lsn() {
        let mut a = assembler();
        let tx = a.push(message(false, 0x1000, "p")).unwrap().unwrap();
        assert_eq!(tx.position, SourcePosition::Wal(EndLsn(Lsn(0x1000))));
        assert_eq!(tx.commit_time, NOW);
        assert_eq!(
            tx.events,
            vec![OutboxEvent {
                source: EventSource::Message { prefix: "p".into(), content: b"c".to_vec() },
                position: SourcePosition::Wal(EndLsn(Lsn(0x1000))),
                commit_time: NOW,
                ordinal: 0,
            }]
        );
        // Inside a transaction: emitted at once, not part of the transaction.
        a.push(relation(1, "outbox", &["id"])).unwrap();
        a.push(begin(0x2000)).unwrap();
        a.push(insert(1, &["1"])).unwrap();
        let alone = a.push(message(false, 0x1800, "q")).unwrap().unwrap();
        assert_eq!(alone.events.len(), 1);
        assert!(a.in_transaction());
        let tx = a.push(commit(0x2000, 0x2040, 0)).unwrap().unwrap();
        assert_eq!(tx.events.len(), 1);
    }

    #[test]
    fn reset_forgets_open_transaction_and_relations() {
        let mut a = assembler();
        a.push(relation(1, "outbox", &["id"])).unwrap();
        a.push(begin(1)).unwrap();
        a.reset();
        assert!(!a.in_transaction());
        a.push(begin(2)).unwrap();
        assert!(matches!(a.push(insert(1, &["1"])), Err(AssembleError::UnknownRelation { .. })));
        // The real clock is used by new().
        let tx = TransactionAssembler::new().push(message(false, 1, "p")).unwrap().unwrap();
        assert!(tx.commit_time.0 > 0);
    }

    fn arb_message() -> impl Strategy<Value = PgOutputMessage> {
        let lsn = 0u64..4;
        prop_oneof![
            lsn.clone().prop_map(begin),
            (lsn.clone(), lsn.clone()).prop_map(|(c, e)| commit(c, e, 0)),
            (0u32..3, 0usize..3).prop_map(|(id, n)| relation(id, "t", &["a", "b", "c"][..n])),
            (0u32..3, 0usize..3).prop_map(|(id, n)| insert(id, &["1", "2", "3"][..n])),
            (any::<bool>(), lsn).prop_map(|(t, l)| message(t, l, "p")),
            Just(PgOutputMessage::Skipped { tag: b'T' }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_sequences_never_panic_and_keep_invariants(msgs in proptest::collection::vec(arb_message(), 0..40)) {
            let mut a = assembler();
            for msg in msgs {
                if let Ok(Some(tx)) = a.push(msg) {
                    for (i, ev) in tx.events.iter().enumerate() {
                        prop_assert_eq!(ev.ordinal as usize, i);
                        prop_assert_eq!(ev.position, tx.position);
                        prop_assert_eq!(ev.commit_time, tx.commit_time);
                    }
                }
            }
        }
    }

    #[test]
    fn a_large_transaction_is_handed_over_in_parts_keyed_by_its_commit_lsn_until_the_last() {
        let mut a = assembler();
        a.push(relation(1, "outbox", &["id"])).unwrap();
        a.push(begin(0x500)).unwrap();
        let mut parts = Vec::new();
        for i in 0..(2 * PART_EVENTS + 3) {
            let values = vec![Datum::Text(i.to_string().into_bytes().into())];
            if let Some(part) = a.push(PgOutputMessage::Insert { relation_id: 1, values }).unwrap() {
                parts.push(part);
            }
        }
        parts.push(a.push(commit(0x500, 0x600, 9)).unwrap().expect("the last part at Commit"));
        assert_eq!(parts.len(), 3);
        let flags: Vec<(bool, bool)> = parts.iter().map(|p| (p.part.continued, p.part.more)).collect();
        assert_eq!(flags, [(false, true), (true, true), (true, false)]);
        assert_eq!(parts[0].position, SourcePosition::WalCommit(Lsn(0x500)), "known by its commit LSN meanwhile");
        assert_eq!(parts[2].position, SourcePosition::Wal(EndLsn(Lsn(0x600))), "the last part is keyed by the end LSN");
        let ordinals: Vec<u32> = parts.iter().flat_map(|p| p.events.iter().map(|e| e.ordinal)).collect();
        assert_eq!(ordinals, (0..(2 * PART_EVENTS as u32 + 3)).collect::<Vec<_>>());
        assert!(parts.iter().flat_map(|p| &p.events).all(|e| e.position == SourcePosition::WalCommit(Lsn(0x500))));
        assert!(!a.in_transaction());
    }

    #[test]
    fn a_part_is_also_cut_by_bytes() {
        let mut a = assembler();
        a.push(relation(1, "outbox", &["payload"])).unwrap();
        a.push(begin(0x500)).unwrap();
        let big = vec![Datum::Text(vec![b'x'; PART_BYTES].into())];
        let part = a.push(PgOutputMessage::Insert { relation_id: 1, values: big }).unwrap();
        assert_eq!(part.map(|p| p.events.len()), Some(1), "one row of PART_BYTES is a part of its own");
    }
}
