//! Streaming replication framing: backend messages off the wire, the CopyData
//! payloads exchanged during `START_REPLICATION`, and the standby status
//! update we send back. Bytes in, values out; no I/O happens here, so every
//! decoder can be unit tested and fuzzed on arbitrary input.
//!
//! Protocol surprises worth knowing:
//! - The i32 length of a backend message counts itself but not the tag byte,
//!   so a complete message occupies `1 + length` bytes and `length >= 4`.
//! - During `START_REPLICATION` everything arrives wrapped in CopyData ('d')
//!   frames whose payload starts with a second tag: 'w' (XLogData) or 'k'
//!   (primary keepalive). The standby status update ('r') we send is likewise
//!   a CopyData payload, and must itself be wrapped in a frontend 'd' frame.
//! - XLogData's `wal_start`/`wal_end` describe the WAL the server has read, not
//!   commit positions: they must never be reported as flushed while events are
//!   in flight (see `crate::event` for the LSN kinds).
//! - Clocks are microseconds since 2000-01-01 UTC, not the Unix epoch.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::event::Lsn;

/// Bytes in a backend message header: the tag byte plus the i32 length.
const HEADER_LEN: usize = 5;
/// Bytes in an XLogData header: 'w', start, end, clock.
const XLOG_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Bytes in a primary keepalive: 'k', wal_end, clock, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Bytes in a standby status update: 'r', write, flush, apply, clock, reply.
const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;
/// Microseconds between the Unix epoch and 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_MICROS: i128 = 946_684_800 * 1_000_000;

/// One complete message from the PostgreSQL backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendFrame {
    /// The message type byte ('d' CopyData, 'E' ErrorResponse, 'c' CopyDone, ...).
    pub tag: u8,
    /// The message body, without tag and length.
    pub body: Bytes,
}

/// A CopyData payload received during `START_REPLICATION`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// 'w': a chunk of WAL data; for logical replication exactly one pgoutput
    /// message.
    XLogData {
        /// WAL position where `data` starts.
        wal_start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Server clock at transmission, µs since 2000-01-01 UTC.
        server_clock: i64,
        /// The payload (a pgoutput message).
        data: Bytes,
    },
    /// 'k': primary keepalive.
    PrimaryKeepalive {
        /// The server's current end of WAL: every change before it was sent.
        wal_end: Lsn,
        /// Server clock at transmission, µs since 2000-01-01 UTC.
        server_clock: i64,
        /// The server asks for a standby status update right away (or it will
        /// disconnect us at `wal_sender_timeout`).
        reply_requested: bool,
    },
}

/// Why a replication protocol message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A backend message declared a length below 4 (the length counts itself).
    FrameTooShort {
        /// Tag byte of the offending message.
        tag: u8,
        /// The declared length.
        len: i32,
    },
    /// A backend message declared a length above the configured maximum.
    FrameTooLong {
        /// Tag byte of the offending message.
        tag: u8,
        /// The declared length.
        len: usize,
        /// The configured maximum.
        max_len: usize,
    },
    /// A CopyData payload was empty, so it has no sub-tag.
    EmptyCopyData,
    /// A CopyData payload ended before a field was complete.
    Truncated {
        /// The CopyData sub-tag ('w' or 'k').
        tag: u8,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field within the payload.
        offset: usize,
        /// Total payload length.
        len: usize,
    },
    /// A fixed-size CopyData payload had bytes after its last field.
    TrailingBytes {
        /// The CopyData sub-tag.
        tag: u8,
        /// Where the unexpected bytes start.
        offset: usize,
        /// Total payload length.
        len: usize,
    },
    /// A CopyData payload with a sub-tag other than 'w' or 'k'.
    UnknownCopyDataTag {
        /// The sub-tag byte.
        tag: u8,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::FrameTooShort { tag, len } => {
                write!(f, "backend message {} declares length {len}, below the minimum of 4", show_tag(*tag))
            }
            ProtocolError::FrameTooLong { tag, len, max_len } => {
                write!(f, "backend message {} declares length {len}, above the maximum of {max_len}", show_tag(*tag))
            }
            ProtocolError::EmptyCopyData => {
                write!(f, "empty CopyData payload during replication: no sub-tag")
            }
            ProtocolError::Truncated { tag, field, offset, len } => write!(
                f,
                "CopyData {} truncated: field `{field}` at byte offset {offset} \
                 does not fit in {len} bytes",
                show_tag(*tag)
            ),
            ProtocolError::TrailingBytes { tag, offset, len } => write!(
                f,
                "CopyData {} has {} unexpected trailing bytes from offset {offset}",
                show_tag(*tag),
                len.saturating_sub(*offset)
            ),
            ProtocolError::UnknownCopyDataTag { tag } => {
                write!(f, "unknown CopyData sub-tag {} during replication (expected 'w' or 'k')", show_tag(*tag))
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// A tag byte for messages: `'w' (0x77)`, or just the hex for non-printables.
pub(crate) fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}' (0x{tag:02x})", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// The whole length (tag included) of the frame at the start of `buf`, once
/// its header is there; `None` before that or for a malformed length (which
/// [`parse_frame`] reports). The reader reserves it only once
/// [`parse_frame`] has accepted the length against its bound.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    usize::try_from(declared).ok().filter(|&len| len >= 4).map(|len| len + 1)
}

/// Splits one complete backend message off the front of `buf`.
///
/// Returns `Ok(None)` and leaves `buf` untouched while the message is
/// incomplete. The declared length is checked as soon as the 5-byte header is
/// present, so an oversized message fails before its body is awaited; nothing
/// is reserved based on it. On error `buf` is left untouched too (the
/// connection cannot be resynchronised and should be dropped). `max_len`
/// bounds the declared length (which counts its own 4 bytes).
pub fn parse_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<BackendFrame>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = match usize::try_from(declared) {
        Ok(len) if len >= 4 => len,
        _ => return Err(ProtocolError::FrameTooShort { tag, len: declared }),
    };
    if len > max_len {
        return Err(ProtocolError::FrameTooLong { tag, len, max_len });
    }
    // `len` fits in an i32, so `1 + len` cannot overflow a usize.
    if buf.len() < 1 + len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(len - 4).freeze();
    Ok(Some(BackendFrame { tag, body }))
}

/// Decodes the payload of a CopyData ('d') frame received during
/// `START_REPLICATION`: XLogData ('w') or primary keepalive ('k').
///
/// XLogData's `data` shares `body`'s buffer (no copy). A keepalive with bytes
/// after its reply flag is rejected, as is any other sub-tag.
pub fn decode_copy_data(body: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    let Some(&tag) = body.first() else {
        return Err(ProtocolError::EmptyCopyData);
    };
    let len = body.len();
    let field8 = |field: &'static str, offset: usize| -> Result<[u8; 8], ProtocolError> {
        body.get(offset..offset + 8).and_then(|s| <[u8; 8]>::try_from(s).ok()).ok_or(ProtocolError::Truncated {
            tag,
            field,
            offset,
            len,
        })
    };
    match tag {
        b'w' => {
            let wal_start = Lsn(u64::from_be_bytes(field8("wal_start", 1)?));
            let wal_end = Lsn(u64::from_be_bytes(field8("wal_end", 9)?));
            let server_clock = i64::from_be_bytes(field8("server_clock", 17)?);
            let data = body.slice(XLOG_HEADER_LEN..);
            Ok(ReplicationMessage::XLogData { wal_start, wal_end, server_clock, data })
        }
        b'k' => {
            let wal_end = Lsn(u64::from_be_bytes(field8("wal_end", 1)?));
            let server_clock = i64::from_be_bytes(field8("server_clock", 9)?);
            let reply =
                *body.get(17).ok_or(ProtocolError::Truncated { tag, field: "reply_requested", offset: 17, len })?;
            if len > KEEPALIVE_LEN {
                return Err(ProtocolError::TrailingBytes { tag, offset: KEEPALIVE_LEN, len });
            }
            Ok(ReplicationMessage::PrimaryKeepalive { wal_end, server_clock, reply_requested: reply != 0 })
        }
        other => Err(ProtocolError::UnknownCopyDataTag { tag: other }),
    }
}

/// Builds a standby status update CopyData *payload* (34 bytes: 'r', then
/// write, flush and apply positions, clock, and the reply-requested flag, big
/// endian). Wrap it with [`copy_data_frame`] before sending.
///
/// PostgreSQL treats `flush` as the slot's `confirmed_flush_lsn`: decoding
/// resumes there after a reconnect, so it must be a position whose every
/// earlier change is durably handled (a commit end LSN, never a start LSN).
pub fn encode_standby_status_update(write: Lsn, flush: Lsn, apply: Lsn, clock: i64, reply_requested: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(STATUS_UPDATE_LEN);
    out.put_u8(b'r');
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(clock);
    out.put_u8(u8::from(reply_requested));
    out.freeze()
}

/// Wraps a payload as a frontend CopyData message: 'd', i32 length (payload
/// length + 4), payload.
///
/// # Panics
/// If `payload` is longer than `i32::MAX - 4` bytes, which no frame can
/// describe. Only our own small payloads (status updates) are passed here,
/// never received data.
pub fn copy_data_frame(payload: &[u8]) -> Bytes {
    let len = payload
        .len()
        .checked_add(4)
        .and_then(|n| i32::try_from(n).ok())
        .expect("CopyData payload longer than a PostgreSQL message can be");
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u8(b'd');
    out.put_i32(len);
    out.put_slice(payload);
    out.freeze()
}

/// The current time as PostgreSQL counts it: microseconds since
/// 2000-01-01 00:00:00 UTC. A system clock before 1970 gives a negative
/// value rather than an error; values beyond i64 saturate.
pub fn pg_clock_now() -> i64 {
    let unix_micros: i128 = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_micros()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_micros()).unwrap_or(i128::MAX),
    };
    let pg = unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS);
    i64::try_from(pg).unwrap_or(if pg < 0 { i64::MIN } else { i64::MAX })
}

/// Builds an XLogData CopyData payload ('w'). Used by tests and fuzz targets
/// to produce what the server sends; the relay itself never sends one.
pub fn encode_xlog_data(wal_start: Lsn, wal_end: Lsn, server_clock: i64, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(XLOG_HEADER_LEN + data.len());
    out.put_u8(b'w');
    out.put_u64(wal_start.0);
    out.put_u64(wal_end.0);
    out.put_i64(server_clock);
    out.put_slice(data);
    out.freeze()
}

/// Builds a primary keepalive CopyData payload ('k'). Used by tests and fuzz
/// targets to produce what the server sends; the relay itself never sends one.
pub fn encode_keepalive(wal_end: Lsn, server_clock: i64, reply_requested: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(KEEPALIVE_LEN);
    out.put_u8(b'k');
    out.put_u64(wal_end.0);
    out.put_i64(server_clock);
    out.put_u8(u8::from(reply_requested));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(i32::try_from(body.len()).unwrap() + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parse_frame_splits_complete_messages_and_keeps_the_rest() {
        let mut bytes = frame(b'd', b"hello");
        bytes.extend(frame(b'Z', b"I"));
        bytes.extend_from_slice(&[b'd', 0, 0]); // start of a third one
        let mut buf = BytesMut::from(&bytes[..]);
        let f1 = parse_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f1, BackendFrame { tag: b'd', body: Bytes::from_static(b"hello") });
        let f2 = parse_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f2, BackendFrame { tag: b'Z', body: Bytes::from_static(b"I") });
        assert_eq!(parse_frame(&mut buf, 1024).unwrap(), None);
        assert_eq!(&buf[..], &[b'd', 0, 0]);
    }

    #[test]
    fn parse_frame_accepts_an_empty_body() {
        let mut buf = BytesMut::from(&frame(b'c', b"")[..]);
        let f = parse_frame(&mut buf, 4).unwrap().unwrap();
        assert_eq!(f.tag, b'c');
        assert!(f.body.is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn parse_frame_waits_at_every_prefix_without_consuming() {
        let bytes = frame(b'd', b"some body bytes");
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(parse_frame(&mut buf, 1024).unwrap(), None, "prefix {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn parse_frame_rejects_bad_lengths_early() {
        for len in [0i32, 3, -1, i32::MIN] {
            let mut buf = BytesMut::from(&[&[b'd'][..], &len.to_be_bytes()[..]].concat()[..]);
            assert_eq!(parse_frame(&mut buf, 1024), Err(ProtocolError::FrameTooShort { tag: b'd', len }));
            assert_eq!(buf.len(), 5, "untouched on error");
        }
        // A huge declared length errors with only the header present.
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        let err = parse_frame(&mut buf, 1 << 20).unwrap_err();
        assert_eq!(err, ProtocolError::FrameTooLong { tag: b'd', len: i32::MAX as usize, max_len: 1 << 20 });
        assert!(err.to_string().contains("'d'"), "{err}");
        // Exactly max_len is allowed.
        let mut buf = BytesMut::from(&frame(b'd', b"12345")[..]);
        assert!(parse_frame(&mut buf, 9).unwrap().is_some());
    }

    #[test]
    fn decodes_xlog_data() {
        let payload = encode_xlog_data(Lsn(0x16_B374_D848), Lsn(0x17_0000_0000), -5, b"Bpayload");
        assert_eq!(payload.len(), 25 + 8);
        assert_eq!(
            decode_copy_data(payload).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: Lsn(0x16_B374_D848),
                wal_end: Lsn(0x17_0000_0000),
                server_clock: -5,
                data: Bytes::from_static(b"Bpayload"),
            }
        );
        // Empty data is fine (header only).
        let payload = encode_xlog_data(Lsn(1), Lsn(2), 3, b"");
        assert!(matches!(decode_copy_data(payload), Ok(ReplicationMessage::XLogData { data, .. }) if data.is_empty()));
    }

    #[test]
    fn decodes_keepalive_from_hand_built_bytes() {
        let mut b = vec![b'k'];
        b.extend_from_slice(&0x0000_0001_0000_0002u64.to_be_bytes());
        b.extend_from_slice(&42i64.to_be_bytes());
        b.push(1);
        assert_eq!(
            decode_copy_data(Bytes::from(b.clone())).unwrap(),
            ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0x1_0000_0002),
                server_clock: 42,
                reply_requested: true
            }
        );
        assert_eq!(Bytes::from(b.clone()), encode_keepalive(Lsn(0x1_0000_0002), 42, true));
        b.push(0);
        assert_eq!(
            decode_copy_data(Bytes::from(b)),
            Err(ProtocolError::TrailingBytes { tag: b'k', offset: 18, len: 19 })
        );
    }

    #[test]
    fn truncated_copy_data_errors_at_every_prefix() {
        for full in [encode_xlog_data(Lsn(1), Lsn(2), 3, b""), encode_keepalive(Lsn(1), 2, false)] {
            for cut in 0..full.len() {
                assert!(decode_copy_data(full.slice(..cut)).is_err(), "prefix {cut} of {full:?}");
            }
        }
        let err = decode_copy_data(Bytes::from_static(b"w\0\0\0\0\0\0\0\0\0\0")).unwrap_err();
        assert_eq!(err, ProtocolError::Truncated { tag: b'w', field: "wal_end", offset: 9, len: 11 });
        assert!(err.to_string().contains("wal_end") && err.to_string().contains("offset 9"));
        assert_eq!(decode_copy_data(Bytes::new()), Err(ProtocolError::EmptyCopyData));
    }

    #[test]
    fn unknown_copy_data_tag_is_named() {
        let err = decode_copy_data(Bytes::from_static(b"r0000")).unwrap_err();
        assert_eq!(err, ProtocolError::UnknownCopyDataTag { tag: b'r' });
        assert!(err.to_string().contains("'r'"), "{err}");
        assert!(ProtocolError::UnknownCopyDataTag { tag: 0 }.to_string().contains("0x00"));
    }

    #[test]
    fn standby_status_update_layout() {
        let b = encode_standby_status_update(Lsn(1), Lsn(0x0102_0304_0506_0708), Lsn(3), -2, true);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &1u64.to_be_bytes());
        assert_eq!(&b[9..17], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[17..25], &3u64.to_be_bytes());
        assert_eq!(&b[25..33], &(-2i64).to_be_bytes());
        assert_eq!(b[33], 1);
        let f = copy_data_frame(&b);
        assert_eq!(f.len(), 39);
        assert_eq!(&f[..5], &[b'd', 0, 0, 0, 38]);
        assert_eq!(&f[5..], &b[..]);
        // And our own parser reads the frame back.
        let mut buf = BytesMut::from(&f[..]);
        assert_eq!(parse_frame(&mut buf, 64).unwrap().unwrap().body, b);
    }

    #[test]
    fn pg_clock_is_after_2020_and_before_2200() {
        let now = pg_clock_now();
        let year = 365 * 24 * 3600 * 1_000_000i64;
        assert!(now > 20 * year && now < 200 * year, "{now}");
    }

    proptest! {
        #[test]
        fn xlog_data_round_trips(s: u64, e: u64, c: i64, data: Vec<u8>) {
            let decoded = decode_copy_data(encode_xlog_data(Lsn(s), Lsn(e), c, &data)).unwrap();
            prop_assert_eq!(decoded, ReplicationMessage::XLogData {
                wal_start: Lsn(s), wal_end: Lsn(e), server_clock: c, data: Bytes::from(data),
            });
        }

        #[test]
        fn keepalive_round_trips(e: u64, c: i64, r: bool) {
            let decoded = decode_copy_data(encode_keepalive(Lsn(e), c, r)).unwrap();
            prop_assert_eq!(decoded, ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(e), server_clock: c, reply_requested: r,
            });
        }

        #[test]
        fn decode_copy_data_never_panics(bytes: Vec<u8>) {
            let _ = decode_copy_data(Bytes::from(bytes));
        }

        #[test]
        fn parse_frame_never_panics_and_consumes_exactly_one_frame(bytes: Vec<u8>, max in 0usize..512) {
            let mut buf = BytesMut::from(&bytes[..]);
            match parse_frame(&mut buf, max) {
                Ok(Some(f)) => prop_assert_eq!(buf.len() + f.body.len() + 5, bytes.len()),
                Ok(None) | Err(_) => prop_assert_eq!(buf.len(), bytes.len()),
            }
        }

        #[test]
        fn frames_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut buf = BytesMut::new();
            for p in &payloads {
                buf.extend_from_slice(&copy_data_frame(p));
            }
            for p in &payloads {
                let f = parse_frame(&mut buf, 1024).unwrap().unwrap();
                prop_assert_eq!(f.tag, b'd');
                prop_assert_eq!(&f.body[..], &p[..]);
            }
            prop_assert!(buf.is_empty());
        }
    }
}
