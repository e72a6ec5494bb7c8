//! The transaction assembler fed with decoded pgoutput messages, as the relay
//! feeds it: arbitrary sequences of Relation, Begin, Insert, Message, Commit
//! and skipped messages, in any order.
//!
//! Input format: a sequence of chunks, each a length byte `n` followed by `n`
//! bytes (a last, short chunk takes what is left). Each chunk goes through
//! `pgoutput::decode`; messages that decode are pushed into one assembler. A
//! zero-length chunk calls `reset()` instead (a new replication connection).
//!
//! Properties, checked against a small reference model of the assembler's
//! documented rules:
//! - nothing panics (including the errors' Display);
//! - an emitted transaction numbers its events 0..n, and every event carries
//!   the transaction's end LSN and commit time;
//! - the end LSN is the Commit's `end_lsn`, or a standalone message's own
//!   `lsn`; a Commit is accepted only for the open Begin's `final_lsn`;
//! - each push succeeds or fails (with the expected error kind) exactly when
//!   the model says, a failing push leaves the state unchanged, and the
//!   emitted transaction holds exactly the expected events.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use outbox_relay::event::{Column, EndLsn, EventSource, Lsn, OutboxEvent, Part, PgTimestamp, SourcePosition, Transaction};
use outbox_relay::source::replication::pgoutput::{self, PgOutputMessage};
use outbox_relay::source::replication::transaction::{AssembleError, TransactionAssembler};

/// Commit time of standalone messages (a fixed clock keeps runs deterministic).
const NOW: PgTimestamp = PgTimestamp(0x5EED);

/// What the assembler is documented to do.
#[derive(Default)]
struct Model {
    /// Relation id → (qualified name, columns); newer Relation messages replace.
    relations: HashMap<u32, (String, Arc<Vec<Column>>)>,
    /// The open transaction: Begin's final LSN and the events so far.
    open: Option<(Lsn, Vec<EventSource>)>,
}

impl Model {
    /// Applies `msg`; on error the model is left unchanged.
    fn push(&mut self, msg: &PgOutputMessage) -> Result<Option<Transaction>, &'static str> {
        match msg {
            PgOutputMessage::Begin { final_lsn, .. } => {
                if self.open.is_some() {
                    return Err("BeginInsideTransaction");
                }
                self.open = Some((*final_lsn, Vec::new()));
                Ok(None)
            }
            PgOutputMessage::Relation(rel) => {
                self.relations.insert(rel.id, (rel.qualified_name(), Arc::new(rel.columns.clone())));
                Ok(None)
            }
            PgOutputMessage::Insert { relation_id, values } => {
                let Some((_, events)) = self.open.as_mut() else {
                    return Err("InsertOutsideTransaction");
                };
                let Some((table, columns)) = self.relations.get(relation_id) else {
                    return Err("UnknownRelation");
                };
                if columns.len() != values.len() {
                    return Err("ColumnCountMismatch");
                }
                events.push(EventSource::Row {
                    table: table.clone(),
                    columns: Arc::clone(columns),
                    values: values.clone(),
                });
                Ok(None)
            }
            PgOutputMessage::Message { transactional: true, prefix, content, .. } => {
                let Some((_, events)) = self.open.as_mut() else {
                    return Err("MessageOutsideTransaction");
                };
                events.push(EventSource::Message { prefix: prefix.clone(), content: content.clone() });
                Ok(None)
            }
            PgOutputMessage::Message { transactional: false, lsn, prefix, content } => Ok(Some(transaction(
                EndLsn(*lsn),
                NOW,
                vec![EventSource::Message { prefix: prefix.clone(), content: content.clone() }],
            ))),
            PgOutputMessage::Commit { commit_lsn, end_lsn, commit_time } => match &self.open {
                None => Err("CommitOutsideTransaction"),
                Some((final_lsn, _)) if final_lsn != commit_lsn => Err("CommitLsnMismatch"),
                Some(_) => {
                    let (_, events) = self.open.take().expect("checked above");
                    Ok(Some(transaction(*end_lsn, *commit_time, events)))
                }
            },
            PgOutputMessage::Skipped { .. } => Ok(None),
        }
    }
}

fn transaction(end_lsn: EndLsn, commit_time: PgTimestamp, sources: Vec<EventSource>) -> Transaction {
    let position = SourcePosition::Wal(end_lsn);
    let events = sources
        .into_iter()
        .enumerate()
        .map(|(i, source)| OutboxEvent {
            source,
            position,
            commit_time,
            ordinal: u32::try_from(i).expect("fuzz inputs hold far fewer than 2^32 events"),
        })
        .collect();
    Transaction { position, commit_time, events, part: Part::WHOLE }
}

fn error_kind(err: &AssembleError) -> &'static str {
    match err {
        AssembleError::BeginInsideTransaction { .. } => "BeginInsideTransaction",
        AssembleError::InsertOutsideTransaction { .. } => "InsertOutsideTransaction",
        AssembleError::MessageOutsideTransaction { .. } => "MessageOutsideTransaction",
        AssembleError::UnknownRelation { .. } => "UnknownRelation",
        AssembleError::ColumnCountMismatch { .. } => "ColumnCountMismatch",
        AssembleError::TooManyEvents { .. } => "TooManyEvents",
        AssembleError::CommitOutsideTransaction { .. } => "CommitOutsideTransaction",
        AssembleError::CommitLsnMismatch { .. } => "CommitLsnMismatch",
    }
}

fuzz_target!(|data: &[u8]| {
    let mut assembler = TransactionAssembler::with_clock(|| NOW);
    let mut model = Model::default();
    // Events of the open transaction already handed over in parts.
    let mut streamed: Vec<OutboxEvent> = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        if len == 0 {
            assembler.reset();
            model = Model::default();
            streamed.clear();
            continue;
        }
        let msg = match pgoutput::decode(chunk) {
            Ok(msg) => msg,
            Err(err) => {
                let _ = err.to_string();
                continue;
            }
        };
        let expected = model.push(&msg);
        let actual = assembler.push(msg.clone());
        match (&actual, &expected) {
            // A part of a large transaction, before its Commit: the model
            // still holds its events; they are compared at the Commit.
            (Ok(Some(part)), Ok(None)) if part.part.more => {
                assert!(matches!(msg, PgOutputMessage::Insert { .. } | PgOutputMessage::Message { transactional: true, .. }));
                let final_lsn = model.open.as_ref().map(|(lsn, _)| *lsn).expect("a part inside a transaction");
                assert_eq!(part.position, SourcePosition::WalCommit(final_lsn));
                assert_eq!(part.part.continued, !streamed.is_empty());
                streamed.extend(part.events.iter().cloned());
            }
            (Ok(Some(tx)), _) => {
                // A standalone message inside a large transaction is not part of it.
                let is_commit = matches!(msg, PgOutputMessage::Commit { .. });
                let continued = is_commit && !streamed.is_empty();
                assert_eq!(tx.part.continued, continued);
                let mut events = if is_commit { std::mem::take(&mut streamed) } else { Vec::new() };
                events.extend(tx.events.iter().cloned());
                for (i, ev) in events.iter().enumerate() {
                    assert_eq!(ev.ordinal as usize, i, "ordinals not 0..n");
                    if !continued {
                        assert_eq!(ev.position, tx.position, "event end LSN differs from its transaction's");
                    }
                    assert_eq!(ev.commit_time, tx.commit_time);
                }
                match &msg {
                    PgOutputMessage::Commit { end_lsn, .. } => assert_eq!(tx.position, SourcePosition::Wal(*end_lsn)),
                    PgOutputMessage::Message { transactional: false, lsn, .. } => {
                        assert_eq!(tx.position, SourcePosition::Wal(EndLsn(*lsn)));
                        assert_eq!(tx.events.len(), 1);
                    }
                    other => panic!("{other:?} completed a transaction"),
                }
                let whole = Transaction { events, part: Part::WHOLE, ..tx.clone() };
                let sources = |t: &Transaction| t.events.iter().map(|e| e.source.clone()).collect::<Vec<_>>();
                let Ok(Some(model_tx)) = &expected else { panic!("after {msg:?}: the model completed nothing") };
                assert_eq!((model_tx.position, model_tx.commit_time), (whole.position, whole.commit_time));
                assert_eq!(sources(model_tx), sources(&whole), "after {msg:?}");
            }
            (Ok(None), Ok(None)) => {}
            (Err(err), Err(kind)) => {
                assert_eq!(error_kind(err), *kind, "after {msg:?}: {err}");
                let _ = err.to_string();
            }
            _ => panic!("pushing {msg:?}: assembler gave {actual:?}, model expected {expected:?}"),
        }
        assert_eq!(assembler.in_transaction(), model.open.is_some());
    }
});
