//! The values that travel through the pipeline: LSN newtypes and the
//! decoded outbox event.
//!
//! PostgreSQL hands out several kinds of log sequence numbers and mixing them
//! up loses data (a flush position must be a commit *end* LSN; restarting at a
//! start LSN + 1 skips WAL). Each kind gets its own type so the compiler keeps
//! them apart; they convert to the raw [`Lsn`] only where the protocol needs
//! the number.

use std::fmt;
use std::str::FromStr;

/// A raw WAL position. Printed the way PostgreSQL prints it: `16/B374D848`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The zero position ("0/0"): START_REPLICATION from the slot's own position.
    pub const ZERO: Lsn = Lsn(0);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Error for a string that is not of the form `X/Y` in hexadecimal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(pub String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid LSN {:?}: expected two hexadecimal numbers like \"16/B374D848\"", self.0)
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// The end LSN of a committed transaction (pgoutput Commit `end_lsn`).
/// The only kind of position that may be reported as flushed while work is in
/// flight: a restart from it resumes *after* that transaction.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct EndLsn(pub Lsn);

/// The server's WAL position carried by a primary keepalive (`wal_end`): every
/// change before it has been sent. Safe to report only when nothing is in
/// flight and no transaction is half received.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct KeepaliveLsn(pub Lsn);

/// The position reported to PostgreSQL as flushed in a standby status update.
/// Monotonic: see [`crate::ack::position`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Position(pub Lsn);

impl fmt::Display for EndLsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The sequence number of a polling batch: polling's own order, which has
/// nothing to do with the WAL.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct BatchSeq(pub u64);

/// Where a transaction sits in its source's order: what the tracker orders
/// in-flight transactions by and hands back as confirmed progress. A
/// replication transaction is known by its commit end LSN, a polling batch or
/// a replayed page by its sequence number; they never mix within one pipeline.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum SourcePosition {
    /// A committed transaction from logical replication.
    Wal(EndLsn),
    /// A batch of rows read by the polling source.
    Batch(BatchSeq),
    /// A replication transaction streamed in parts before its Commit
    /// arrived (one larger than a part), known meanwhile by its commit
    /// record's start (Begin's `final_lsn`). Not a flush position: its last
    /// part is [`SourcePosition::Wal`] with the end LSN.
    WalCommit(Lsn),
    /// A page of rows re-published by `outbox-relay replay` ([`crate::replay`]):
    /// its messages carry `x-outbox-replay: true` and no LSN.
    Replay(BatchSeq),
}

impl SourcePosition {
    /// The LSN a message's `x-outbox-lsn` header shows: the end LSN, or for
    /// a transaction streamed in parts its commit LSN.
    pub fn header_lsn(self) -> Option<Lsn> {
        match self {
            SourcePosition::Wal(lsn) => Some(lsn.0),
            SourcePosition::WalCommit(lsn) => Some(lsn),
            _ => None,
        }
    }

    /// Where it sorts among its source's positions: by LSN for replication
    /// (a transaction's commit LSN is past every earlier one's end LSN).
    pub fn sort_key(self) -> (u8, u64) {
        match self {
            SourcePosition::Wal(lsn) => (0, lsn.0 .0),
            SourcePosition::WalCommit(lsn) => (0, lsn.0),
            SourcePosition::Batch(seq) => (1, seq.0),
            SourcePosition::Replay(seq) => (2, seq.0),
        }
    }

    /// The commit end LSN, for a replication transaction.
    pub fn end_lsn(self) -> Option<EndLsn> {
        match self {
            SourcePosition::Wal(lsn) => Some(lsn),
            SourcePosition::WalCommit(_) | SourcePosition::Batch(_) | SourcePosition::Replay(_) => None,
        }
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcePosition::Wal(lsn) => write!(f, "WAL {lsn}"),
            SourcePosition::WalCommit(lsn) => write!(f, "WAL commit {lsn} (in parts)"),
            SourcePosition::Batch(seq) => write!(f, "polling batch {}", seq.0),
            SourcePosition::Replay(seq) => write!(f, "replay page {}", seq.0),
        }
    }
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's timestamp epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Default)]
pub struct PgTimestamp(pub i64);

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

impl PgTimestamp {
    /// The current time.
    pub fn now() -> PgTimestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        PgTimestamp(micros - PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    /// Whole seconds since the Unix epoch (the AMQP `timestamp` property).
    pub fn unix_seconds(self) -> i64 {
        PG_EPOCH_UNIX_SECS + self.0.div_euclid(1_000_000)
    }

    /// As a `SystemTime`, for lag computations.
    pub fn to_system_time(self) -> std::time::SystemTime {
        let micros = i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000 + i128::from(self.0);
        if micros >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros as u64)
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_micros((-micros) as u64)
        }
    }

    /// RFC 3339 with microseconds, UTC (`x-outbox-commit-time`).
    pub fn to_rfc3339(self) -> String {
        let mut out = Vec::with_capacity(32);
        self.write_rfc3339(&mut out);
        String::from_utf8(out).unwrap_or_else(|_| String::from("invalid"))
    }

    /// Writes [`to_rfc3339`](Self::to_rfc3339)'s text into `out`.
    pub fn write_rfc3339(self, out: &mut impl std::io::Write) {
        let micros = i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000 + i128::from(self.0);
        let written = time::OffsetDateTime::from_unix_timestamp_nanos(micros * 1000)
            .ok()
            .and_then(|t| t.format_into(out, &time::format_description::well_known::Rfc3339).ok());
        if written.is_none() {
            let _ = out.write_all(b"invalid");
        }
    }
}

/// One value of a decoded row, as pgoutput sent it (text format).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that the server did not send. Never occurs
    /// for an INSERT; kept so a decoder bug cannot pass for a NULL.
    UnchangedToast,
    /// The value in PostgreSQL's text output format: for replication, a
    /// slice of the frame it arrived in (no copy).
    Text(bytes::Bytes),
}

/// Where an event came from: a table row or a logical decoding message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum EventSource {
    /// An INSERT into `schema.table`.
    Row {
        /// Schema-qualified table name, e.g. `public.outbox`.
        table: String,
        /// Column names, in the order of `values`.
        columns: std::sync::Arc<Vec<Column>>,
        /// One value per column.
        values: Vec<Datum>,
    },
    /// `pg_logical_emit_message(true, prefix, content)`.
    Message {
        /// The message prefix.
        prefix: String,
        /// The message content, as bytes.
        content: Vec<u8>,
    },
}

/// A column of a replicated relation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID (17 bytea, 25 text, 114 json, 3802 jsonb, ...).
    pub type_oid: u32,
}

/// One committed outbox event, ready to be routed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutboxEvent {
    /// The row or message.
    pub source: EventSource,
    /// The transaction that committed it: its end LSN, or its polling batch.
    pub position: SourcePosition,
    /// Commit time of that transaction.
    pub commit_time: PgTimestamp,
    /// Position within its transaction, from 0.
    pub ordinal: u32,
}

/// A whole committed transaction: what the source hands to the publisher.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transaction {
    /// Its place in the source's order: for replication the end LSN of the
    /// commit record, the position to report once every event of this and
    /// every earlier transaction is confirmed.
    pub position: SourcePosition,
    /// Commit time.
    pub commit_time: PgTimestamp,
    /// The events, in insert order. May be empty (a transaction that touched
    /// only filtered rows still moves the position).
    pub events: Vec<OutboxEvent>,
    /// Which part of its transaction this is: a large replication transaction
    /// is handed over in parts as its rows arrive, so memory does not grow
    /// with its size.
    pub part: Part,
}

/// Which part of a transaction a [`Transaction`] value carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Part {
    /// Earlier parts of the same transaction were handed over before.
    pub continued: bool,
    /// More parts follow (the transaction's Commit has not arrived yet).
    pub more: bool,
}

impl Part {
    /// A whole transaction in one part.
    pub const WHOLE: Part = Part { continued: false, more: false };
}

impl EventSource {
    /// Bytes of row data it carries (for memory budgets).
    pub fn data_bytes(&self) -> usize {
        match self {
            EventSource::Row { values, .. } => values
                .iter()
                .map(|d| match d {
                    Datum::Text(b) => b.len(),
                    Datum::Null | Datum::UnchangedToast => 0,
                })
                .sum(),
            EventSource::Message { prefix, content } => prefix.len() + content.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for v in [0u64, 1, 0x16_B374_D848, u64::MAX] {
            let l = Lsn(v);
            assert_eq!(l.to_string().parse::<Lsn>().unwrap(), l);
        }
        assert_eq!(Lsn(0x1_0000_00FF).to_string(), "1/FF");
        assert!("16".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn pg_timestamp_converts_to_unix_and_rfc3339() {
        let t = PgTimestamp(1_500_000); // 2000-01-01T00:00:01.5Z
        assert_eq!(t.unix_seconds(), PG_EPOCH_UNIX_SECS + 1);
        assert_eq!(t.to_rfc3339(), "2000-01-01T00:00:01.5Z");
    }
}
