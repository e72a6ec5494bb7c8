//! Decoder (and test encoder) for pgoutput logical replication messages,
//! protocol version 1: the payload of one XLogData frame in, one typed
//! message out. Only what the relay needs is decoded in full (Begin, Commit,
//! Relation, Insert, logical decoding Message); other DML and metadata
//! messages are recognised and skipped so they cannot be mistaken for garbage.
//! Longer than our usual 600 lines on purpose: one wire format (about 520
//! lines) with its test encoder and tests; split across files, the offsets of
//! one message would be read in one place and written in another.
//!
//! Protocol surprises worth knowing:
//! - Integers are big endian, strings NUL terminated; nothing says how long a
//!   message is, so every count and length is checked against the bytes that
//!   are actually present before anything is allocated.
//! - Begin's `final_lsn` is the *start* of the commit record and equals
//!   Commit's `commit_lsn`; only Commit's `end_lsn` may be reported as
//!   flushed.
//! - A Relation message precedes the first change to a table in a session and
//!   is re-sent when the table changes; it may arrive inside a transaction.
//! - The Relation namespace is the empty string for `pg_catalog`.
//! - A Message's `lsn` is the *end* of its WAL record (where the next record
//!   may start), like Commit's `end_lsn`, not the record's start.
//! - pgoutput sends logical decoding messages only with `messages 'true'` in
//!   the START_REPLICATION options (PostgreSQL 14+); proto v1 carries no xid.
//! - Streaming ('S','E','c','A') and two-phase ('b','P','K','r','p') messages
//!   only appear when requested; with proto v1 they mean a misconfiguration.

use std::fmt;

use crate::event::{Column, Datum, EndLsn, Lsn, PgTimestamp};

use super::protocol::show_tag;

/// A table description from a pgoutput Relation ('R') message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Relation OID, as referenced by later Insert messages.
    pub id: u32,
    /// Schema name; empty for `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Columns in tuple order (dropped and generated columns excluded by the
    /// server).
    pub columns: Vec<Column>,
}

impl Relation {
    /// `schema.table`, unquoted (the empty namespace reads as `pg_catalog`).
    pub fn qualified_name(&self) -> String {
        let schema = if self.namespace.is_empty() { "pg_catalog" } else { &self.namespace };
        format!("{schema}.{}", self.name)
    }
}

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgOutputMessage {
    /// 'B': a transaction starts.
    Begin {
        /// LSN of the commit record (equals the Commit's `commit_lsn`).
        final_lsn: Lsn,
        /// Commit timestamp.
        commit_time: PgTimestamp,
        /// Transaction id.
        xid: u32,
    },
    /// 'C': the transaction commits.
    Commit {
        /// LSN of the commit record (equals the Begin's `final_lsn`).
        commit_lsn: Lsn,
        /// End of the commit record: where decoding resumes after it.
        end_lsn: EndLsn,
        /// Commit timestamp.
        commit_time: PgTimestamp,
    },
    /// 'R': a table description.
    Relation(Relation),
    /// 'I': a new row.
    Insert {
        /// The Relation message's `id`.
        relation_id: u32,
        /// One value per column of that relation.
        values: Vec<Datum>,
    },
    /// 'M': a logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Part of the enclosing transaction (flags bit 0), or sent on its own.
        transactional: bool,
        /// End LSN of the message's WAL record.
        lsn: Lsn,
        /// The prefix.
        prefix: String,
        /// The content.
        content: Vec<u8>,
    },
    /// 'U' Update, 'D' Delete, 'T' Truncate, 'Y' Type or 'O' Origin: not
    /// needed by the relay and not decoded further.
    Skipped {
        /// The message tag.
        tag: u8,
    },
}

/// Why a pgoutput message could not be decoded. Offsets count from the tag
/// byte (offset 0) of the XLogData payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload was empty: no tag byte.
    Empty,
    /// The payload ended before a field was complete.
    Truncated {
        /// Message tag.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left at that offset.
        available: usize,
    },
    /// A string field had no NUL terminator before the end of the payload.
    UnterminatedString {
        /// Message tag.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the string.
        offset: usize,
    },
    /// A string field was not valid UTF-8.
    InvalidUtf8 {
        /// Message tag.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the string.
        offset: usize,
    },
    /// A count or length was negative.
    Negative {
        /// Message tag.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// The value found.
        value: i32,
    },
    /// A marker byte had a value this decoder does not accept.
    UnexpectedByte {
        /// Message tag.
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the byte.
        offset: usize,
        /// The byte found.
        found: u8,
        /// What was acceptable.
        expected: &'static str,
    },
    /// A message kind that is valid pgoutput but was not requested.
    Unexpected {
        /// Message tag.
        tag: u8,
        /// Why it cannot be handled.
        reason: &'static str,
    },
    /// A tag that is not a pgoutput message.
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },
    /// Bytes remained after the last field of the message.
    TrailingBytes {
        /// Message tag.
        tag: u8,
        /// Where the unexpected bytes start.
        offset: usize,
        /// Total payload length.
        len: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty pgoutput message: no tag byte"),
            DecodeError::Truncated { tag, field, offset, needed, available } => write!(
                f,
                "pgoutput message {} truncated: field `{field}` at byte offset {offset} \
                 needs {needed} bytes, {available} left",
                show_tag(*tag)
            ),
            DecodeError::UnterminatedString { tag, field, offset } => write!(
                f,
                "pgoutput message {}: string `{field}` at byte offset {offset} has no NUL terminator",
                show_tag(*tag)
            ),
            DecodeError::InvalidUtf8 { tag, field, offset } => write!(
                f,
                "pgoutput message {}: string `{field}` at byte offset {offset} is not valid UTF-8",
                show_tag(*tag)
            ),
            DecodeError::Negative { tag, field, offset, value } => write!(
                f,
                "pgoutput message {}: `{field}` at byte offset {offset} is negative ({value})",
                show_tag(*tag)
            ),
            DecodeError::UnexpectedByte { tag, field, offset, found, expected } => write!(
                f,
                "pgoutput message {}: `{field}` at byte offset {offset} is {}, expected {expected}",
                show_tag(*tag),
                show_tag(*found)
            ),
            DecodeError::Unexpected { tag, reason } => {
                write!(f, "unexpected pgoutput message {}: {reason}", show_tag(*tag))
            }
            DecodeError::UnknownTag { tag } => {
                write!(f, "unknown pgoutput message tag {}", show_tag(*tag))
            }
            DecodeError::TrailingBytes { tag, offset, len } => write!(
                f,
                "pgoutput message {} has {} trailing bytes after its last field (offset {offset})",
                show_tag(*tag),
                len.saturating_sub(*offset)
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one pgoutput (proto v1) message: the data of one XLogData frame.
/// The whole payload must be consumed; trailing bytes are an error, except
/// for skipped messages whose bodies are not examined.
pub fn decode(data: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    decode_shared(&bytes::Bytes::copy_from_slice(data))
}

/// [`decode`], with column values that are slices of `data` (no copy).
pub fn decode_shared(shared: &bytes::Bytes) -> Result<PgOutputMessage, DecodeError> {
    let data: &[u8] = shared;
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader { data, shared, pos: 1, tag };
    let msg = match tag {
        b'B' => PgOutputMessage::Begin {
            final_lsn: Lsn(r.u64("final_lsn")?),
            commit_time: PgTimestamp(r.i64("commit_time")?),
            xid: r.u32("xid")?,
        },
        b'C' => {
            let _flags = r.u8("flags")?; // unused by the server
            PgOutputMessage::Commit {
                commit_lsn: Lsn(r.u64("commit_lsn")?),
                end_lsn: EndLsn(Lsn(r.u64("end_lsn")?)),
                commit_time: PgTimestamp(r.i64("commit_time")?),
            }
        }
        b'R' => PgOutputMessage::Relation(decode_relation(&mut r)?),
        b'I' => {
            let relation_id = r.u32("relation_id")?;
            r.expect_byte("new tuple marker", b'N', "'N'")?;
            PgOutputMessage::Insert { relation_id, values: decode_tuple(&mut r)? }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = Lsn(r.u64("lsn")?);
            let prefix = r.cstr("prefix")?;
            let len = r.u32("content length")?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let content = r.take(len, "content")?.to_vec();
            PgOutputMessage::Message { transactional: flags & 1 != 0, lsn, prefix, content }
        }
        b'U' | b'D' | b'T' | b'Y' | b'O' => return Ok(PgOutputMessage::Skipped { tag }),
        b'S' | b'E' | b'c' | b'A' => {
            return Err(DecodeError::Unexpected {
                tag,
                reason: "streaming of in-progress transactions was not requested (proto_version 1)",
            })
        }
        b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unexpected { tag, reason: "two-phase decoding was not requested" })
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish()?;
    Ok(msg)
}

/// Smallest encoding of one Relation column: flags, empty name, oid, typmod.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

fn decode_relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32("relation_id")?;
    let namespace = r.cstr("namespace")?;
    let name = r.cstr("relation name")?;
    let _replica_identity = r.u8("replica identity")?;
    let count = r.count("column count")?;
    let mut columns = Vec::with_capacity(count.min(r.remaining() / MIN_COLUMN_LEN));
    for _ in 0..count {
        let _flags = r.u8("column flags")?;
        let name = r.cstr("column name")?;
        let type_oid = r.u32("column type oid")?;
        let _typmod = r.i32("column typmod")?;
        columns.push(Column { name, type_oid });
    }
    Ok(Relation { id, namespace, name, columns })
}

fn decode_tuple(r: &mut Reader<'_>) -> Result<Vec<Datum>, DecodeError> {
    let count = r.count("tuple column count")?;
    // Every datum takes at least its kind byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let offset = r.pos;
        let kind = r.u8("tuple value kind")?;
        values.push(match kind {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => {
                let len_offset = r.pos;
                let len = r.i32("tuple value length")?;
                let len = usize::try_from(len).map_err(|_| DecodeError::Negative {
                    tag: r.tag,
                    field: "tuple value length",
                    offset: len_offset,
                    value: len,
                })?;
                let start = r.pos;
                r.take(len, "tuple value")?;
                Datum::Text(r.shared.slice(start..start + len))
            }
            b'b' => {
                return Err(DecodeError::UnexpectedByte {
                    tag: r.tag,
                    field: "tuple value kind",
                    offset,
                    found: kind,
                    expected: "'n', 'u' or 't' (binary values were not requested)",
                })
            }
            found => {
                return Err(DecodeError::UnexpectedByte {
                    tag: r.tag,
                    field: "tuple value kind",
                    offset,
                    found,
                    expected: "'n', 'u' or 't'",
                })
            }
        });
    }
    Ok(values)
}

/// A cursor over one message that turns short reads into [`DecodeError`]s.
struct Reader<'a> {
    data: &'a [u8],
    /// The same bytes, to slice column values from.
    shared: &'a bytes::Bytes,
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated { tag: self.tag, field, offset: self.pos, needed: n, available });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    /// An i16 count; negative is an error.
    fn count(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let value = i16::from_be_bytes(self.array(field)?);
        usize::try_from(value).map_err(|_| DecodeError::Negative {
            tag: self.tag,
            field,
            offset,
            value: i32::from(value),
        })
    }

    fn expect_byte(&mut self, field: &'static str, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8(field)?;
        if found != want {
            return Err(DecodeError::UnexpectedByte { tag: self.tag, field, offset, found, expected });
        }
        Ok(())
    }

    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.data.get(offset..).unwrap_or_default();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString { tag: self.tag, field, offset });
        };
        let s =
            std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 { tag: self.tag, field, offset })?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.pos < self.data.len() {
            return Err(DecodeError::TrailingBytes { tag: self.tag, offset: self.pos, len: self.data.len() });
        }
        Ok(())
    }
}

/// Encodes a message the way pgoutput (proto v1) would send it; used by tests
/// and fuzz targets, never on the wire by the relay. Fields that
/// [`PgOutputMessage`] does not keep are written as PostgreSQL would for a
/// plain table: Commit flags 0, replica identity 'd', column flags 0, typmod
/// -1; a skipped message is written as its bare tag.
///
/// `decode(&encode(m)) == Ok(m)` holds for every message PostgreSQL can
/// produce. It cannot hold for strings containing NUL, more than `i16::MAX`
/// columns or values, values or contents longer than `i32::MAX`/`u32::MAX`
/// bytes (counts and lengths saturate), or a `Skipped` tag that is not one of
/// 'U', 'D', 'T', 'Y', 'O'.
pub fn encode(msg: &PgOutputMessage) -> Vec<u8> {
    let mut out = Vec::new();
    match msg {
        PgOutputMessage::Begin { final_lsn, commit_time, xid } => {
            out.push(b'B');
            out.extend_from_slice(&final_lsn.0.to_be_bytes());
            out.extend_from_slice(&commit_time.0.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        }
        PgOutputMessage::Commit { commit_lsn, end_lsn, commit_time } => {
            out.extend_from_slice(&[b'C', 0]);
            out.extend_from_slice(&commit_lsn.0.to_be_bytes());
            out.extend_from_slice(&end_lsn.0 .0.to_be_bytes());
            out.extend_from_slice(&commit_time.0.to_be_bytes());
        }
        PgOutputMessage::Relation(rel) => {
            out.push(b'R');
            out.extend_from_slice(&rel.id.to_be_bytes());
            put_cstr(&mut out, &rel.namespace);
            put_cstr(&mut out, &rel.name);
            out.push(b'd');
            out.extend_from_slice(&saturating_i16(rel.columns.len()).to_be_bytes());
            for col in &rel.columns {
                out.push(0);
                put_cstr(&mut out, &col.name);
                out.extend_from_slice(&col.type_oid.to_be_bytes());
                out.extend_from_slice(&(-1i32).to_be_bytes());
            }
        }
        PgOutputMessage::Insert { relation_id, values } => {
            out.push(b'I');
            out.extend_from_slice(&relation_id.to_be_bytes());
            out.push(b'N');
            out.extend_from_slice(&saturating_i16(values.len()).to_be_bytes());
            for value in values {
                match value {
                    Datum::Null => out.push(b'n'),
                    Datum::UnchangedToast => out.push(b'u'),
                    Datum::Text(bytes) => {
                        out.push(b't');
                        let len = i32::try_from(bytes.len()).unwrap_or(i32::MAX);
                        out.extend_from_slice(&len.to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        PgOutputMessage::Message { transactional, lsn, prefix, content } => {
            out.push(b'M');
            out.push(u8::from(*transactional));
            out.extend_from_slice(&lsn.0.to_be_bytes());
            put_cstr(&mut out, prefix);
            let len = u32::try_from(content.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(content);
        }
        PgOutputMessage::Skipped { tag } => out.push(*tag),
    }
    out
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn saturating_i16(n: usize) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn be(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn sample_messages() -> Vec<PgOutputMessage> {
        vec![
            PgOutputMessage::Begin { final_lsn: Lsn(0x16_B374_D848), commit_time: PgTimestamp(-7), xid: 812 },
            PgOutputMessage::Commit {
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: EndLsn(Lsn(0x16_B374_D878)),
                commit_time: PgTimestamp(1_500_000),
            },
            PgOutputMessage::Relation(Relation {
                id: 16_384,
                namespace: "public".into(),
                name: "outbox".into(),
                columns: vec![
                    Column { name: "id".into(), type_oid: 20 },
                    Column { name: "payload".into(), type_oid: 3802 },
                ],
            }),
            PgOutputMessage::Insert {
                relation_id: 16_384,
                values: vec![
                    Datum::Text(b"42".to_vec().into()),
                    Datum::Null,
                    Datum::UnchangedToast,
                    Datum::Text(bytes::Bytes::new()),
                ],
            },
            PgOutputMessage::Message {
                transactional: true,
                lsn: Lsn(99),
                prefix: "outbox".into(),
                content: b"{\"a\":1}".to_vec(),
            },
        ]
    }

    #[test]
    fn decodes_begin_from_hand_built_bytes() {
        let b = be(&[b"B", &0x0000_0016_B374_D848u64.to_be_bytes(), &1_000_000i64.to_be_bytes(), &7u32.to_be_bytes()]);
        assert_eq!(
            decode(&b).unwrap(),
            PgOutputMessage::Begin { final_lsn: Lsn(0x16_B374_D848), commit_time: PgTimestamp(1_000_000), xid: 7 }
        );
    }

    #[test]
    fn decodes_commit_ignoring_flags() {
        let b = be(&[b"C", &[0], &5u64.to_be_bytes(), &9u64.to_be_bytes(), &3i64.to_be_bytes()]);
        let want = PgOutputMessage::Commit { commit_lsn: Lsn(5), end_lsn: EndLsn(Lsn(9)), commit_time: PgTimestamp(3) };
        assert_eq!(decode(&b).unwrap(), want);
        assert_eq!(encode(&want), b);
    }

    #[test]
    fn decodes_relation_from_hand_built_bytes() {
        let b = be(&[
            b"R",
            &16_385u32.to_be_bytes(),
            b"app\0outbox\0d",
            &2i16.to_be_bytes(),
            b"\x01id\0",
            &20u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            b"\x00body\0",
            &25u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
        ]);
        let PgOutputMessage::Relation(rel) = decode(&b).unwrap() else { panic!("not a relation") };
        assert_eq!(rel.id, 16_385);
        assert_eq!(rel.qualified_name(), "app.outbox");
        assert_eq!(
            rel.columns,
            vec![Column { name: "id".into(), type_oid: 20 }, Column { name: "body".into(), type_oid: 25 }]
        );
        let catalog = Relation { id: 1, namespace: String::new(), name: "pg_class".into(), columns: vec![] };
        assert_eq!(catalog.qualified_name(), "pg_catalog.pg_class");
    }

    #[test]
    fn decodes_insert_with_null_toast_and_text() {
        let b =
            be(&[b"I", &7u32.to_be_bytes(), b"N", &3i16.to_be_bytes(), b"n", b"u", b"t", &2i32.to_be_bytes(), b"hi"]);
        assert_eq!(
            decode(&b).unwrap(),
            PgOutputMessage::Insert {
                relation_id: 7,
                values: vec![Datum::Null, Datum::UnchangedToast, Datum::Text(b"hi".to_vec().into())]
            }
        );
    }

    #[test]
    fn decodes_message_both_flavours() {
        for (flags, transactional) in [(0u8, false), (1, true)] {
            let b = be(&[b"M", &[flags], &77u64.to_be_bytes(), b"pfx\0", &3u32.to_be_bytes(), b"abc"]);
            assert_eq!(
                decode(&b).unwrap(),
                PgOutputMessage::Message {
                    transactional,
                    lsn: Lsn(77),
                    prefix: "pfx".into(),
                    content: b"abc".to_vec()
                }
            );
        }
    }

    #[test]
    fn skipped_messages_are_recognised_whatever_follows() {
        for tag in [b'U', b'D', b'T', b'Y', b'O'] {
            assert_eq!(decode(&[tag]).unwrap(), PgOutputMessage::Skipped { tag });
            assert_eq!(decode(&[tag, 1, 2, 3]).unwrap(), PgOutputMessage::Skipped { tag });
        }
    }

    #[test]
    fn streaming_two_phase_and_unknown_tags_error_by_name() {
        for tag in [b'S', b'E', b'c', b'A'] {
            let err = decode(&[tag, 0, 0, 0, 0]).unwrap_err();
            assert!(matches!(err, DecodeError::Unexpected { tag: t, .. } if t == tag));
            assert!(err.to_string().contains("unexpected"), "{err}");
        }
        assert!(matches!(decode(b"P"), Err(DecodeError::Unexpected { tag: b'P', .. })));
        let err = decode(b"Z").unwrap_err();
        assert_eq!(err, DecodeError::UnknownTag { tag: b'Z' });
        assert!(err.to_string().contains("'Z'"));
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn every_strict_prefix_of_a_valid_message_errors() {
        for msg in sample_messages() {
            let full = encode(&msg);
            assert_eq!(decode(&full).unwrap(), msg);
            for cut in 0..full.len() {
                assert!(decode(&full[..cut]).is_err(), "prefix {cut} of {msg:?} decoded");
            }
        }
    }

    #[test]
    fn trailing_bytes_error_with_offset() {
        for msg in sample_messages() {
            let mut b = encode(&msg);
            let len = b.len();
            b.push(0);
            assert_eq!(decode(&b), Err(DecodeError::TrailingBytes { tag: b[0], offset: len, len: len + 1 }));
        }
    }

    #[test]
    fn huge_declared_counts_with_short_input_error() {
        let rel = be(&[b"R", &1u32.to_be_bytes(), b"s\0t\0d", &i16::MAX.to_be_bytes(), b"\0ab"]);
        assert!(matches!(decode(&rel), Err(DecodeError::UnterminatedString { field: "column name", .. })));
        let ins = be(&[b"I", &1u32.to_be_bytes(), b"N", &i16::MAX.to_be_bytes(), b"nnn"]);
        let err = decode(&ins).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated { tag: b'I', field: "tuple value kind", offset: 11, needed: 1, available: 0 }
        );
        assert!(err.to_string().contains("offset 11"), "{err}");
        let text = be(&[b"I", &1u32.to_be_bytes(), b"N", &1i16.to_be_bytes(), b"t", &i32::MAX.to_be_bytes(), b"x"]);
        assert!(
            matches!(decode(&text), Err(DecodeError::Truncated { field: "tuple value", needed, available: 1, .. }) if needed == i32::MAX as usize)
        );
        let msg = be(&[b"M", &[1], &1u64.to_be_bytes(), b"p\0", &u32::MAX.to_be_bytes(), b"abc"]);
        assert!(matches!(decode(&msg), Err(DecodeError::Truncated { field: "content", available: 3, .. })));
    }

    #[test]
    fn negative_counts_and_lengths_error() {
        let rel = be(&[b"R", &1u32.to_be_bytes(), b"s\0t\0d", &(-1i16).to_be_bytes()]);
        assert_eq!(
            decode(&rel),
            Err(DecodeError::Negative { tag: b'R', field: "column count", offset: 10, value: -1 })
        );
        let ins = be(&[b"I", &1u32.to_be_bytes(), b"N", &(-2i16).to_be_bytes()]);
        assert!(matches!(decode(&ins), Err(DecodeError::Negative { field: "tuple column count", value: -2, .. })));
        let text = be(&[b"I", &1u32.to_be_bytes(), b"N", &1i16.to_be_bytes(), b"t", &(-1i32).to_be_bytes()]);
        assert_eq!(
            decode(&text),
            Err(DecodeError::Negative { tag: b'I', field: "tuple value length", offset: 9, value: -1 })
        );
    }

    #[test]
    fn bad_markers_binary_datums_and_bad_utf8_error() {
        let old_tuple = be(&[b"I", &1u32.to_be_bytes(), b"K", &0i16.to_be_bytes()]);
        assert!(matches!(
            decode(&old_tuple),
            Err(DecodeError::UnexpectedByte { field: "new tuple marker", found: b'K', offset: 5, .. })
        ));
        let binary = be(&[b"I", &1u32.to_be_bytes(), b"N", &1i16.to_be_bytes(), b"b", &1i32.to_be_bytes(), b"x"]);
        let err = decode(&binary).unwrap_err();
        assert!(matches!(err, DecodeError::UnexpectedByte { found: b'b', offset: 8, .. }));
        assert!(err.to_string().contains("binary"), "{err}");
        let utf8 = be(&[b"M", &[0], &1u64.to_be_bytes(), b"\xff\xfe\0", &0u32.to_be_bytes()]);
        assert_eq!(decode(&utf8), Err(DecodeError::InvalidUtf8 { tag: b'M', field: "prefix", offset: 10 }));
    }

    fn arb_string() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,12}"
    }

    fn arb_datum() -> impl Strategy<Value = Datum> {
        prop_oneof![
            Just(Datum::Null),
            Just(Datum::UnchangedToast),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(|v| Datum::Text(v.into())),
        ]
    }

    fn arb_message() -> impl Strategy<Value = PgOutputMessage> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(l, t, xid)| {
                PgOutputMessage::Begin { final_lsn: Lsn(l), commit_time: PgTimestamp(t), xid }
            }),
            (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(c, e, t)| {
                PgOutputMessage::Commit { commit_lsn: Lsn(c), end_lsn: EndLsn(Lsn(e)), commit_time: PgTimestamp(t) }
            }),
            (any::<u32>(), arb_string(), arb_string(), proptest::collection::vec((arb_string(), any::<u32>()), 0..8))
                .prop_map(|(id, namespace, name, cols)| PgOutputMessage::Relation(Relation {
                    id,
                    namespace,
                    name,
                    columns: cols.into_iter().map(|(name, type_oid)| Column { name, type_oid }).collect(),
                })),
            (any::<u32>(), proptest::collection::vec(arb_datum(), 0..8))
                .prop_map(|(relation_id, values)| PgOutputMessage::Insert { relation_id, values }),
            (any::<bool>(), any::<u64>(), arb_string(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(transactional, l, prefix, content)| {
                    PgOutputMessage::Message { transactional, lsn: Lsn(l), prefix, content }
                }
            ),
            prop::sample::select(vec![b'U', b'D', b'T', b'Y', b'O']).prop_map(|tag| PgOutputMessage::Skipped { tag }),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(msg in arb_message()) {
            prop_assert_eq!(decode(&encode(&msg)), Ok(msg));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_valid_tags_with_noise(
            tag in prop::sample::select(b"BCRIM".to_vec()),
            rest in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut bytes = vec![tag];
            bytes.extend(rest);
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_valid_messages_never_panic(msg in arb_message(), idx: usize, byte: u8) {
            let mut bytes = encode(&msg);
            let i = idx % bytes.len();
            bytes[i] = byte;
            let _ = decode(&bytes);
        }
    }
}
