//! AMQP 0-9-1 frames: encoding what the relay sends (the handshake, channel
//! and confirm methods, basic.publish with its content header and body) and
//! decoding what the broker sends a publisher (the handshake replies,
//! basic.ack / basic.nack / basic.return, closes, blocked, flow). Pure: no
//! I/O. Only the parts of the protocol a confirm-mode publisher meets are
//! here; anything else the broker sends is a protocol error naming it.
//!
//! Layout of a frame: type (1 byte), channel (2), payload size (4), payload,
//! frame end `0xCE`. Integers are big-endian; a short string is a length byte
//! and up to 255 bytes, a long string a 4-byte length; a field table is a
//! 4-byte length and (short-string name, type byte, value) entries.

use bytes::{BufMut, Bytes, BytesMut};

use crate::route::{HeaderValue, OutboxHeaders, OutgoingMessage};

/// Frame types.
pub const METHOD: u8 = 1;
/// Content header frame.
pub const HEADER: u8 = 2;
/// Content body frame.
pub const BODY: u8 = 3;
/// Heartbeat frame.
pub const HEARTBEAT: u8 = 8;
/// Every frame ends with this byte.
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size.
pub const FRAME_HEADER_LEN: usize = 7;
/// Header plus the end byte.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;
/// What a client sends first.
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// (class, method) ids used here.
pub mod id {
    /// connection.start
    pub const CONNECTION_START: (u16, u16) = (10, 10);
    /// connection.start-ok
    pub const CONNECTION_START_OK: (u16, u16) = (10, 11);
    /// connection.secure
    pub const CONNECTION_SECURE: (u16, u16) = (10, 20);
    /// connection.tune
    pub const CONNECTION_TUNE: (u16, u16) = (10, 30);
    /// connection.tune-ok
    pub const CONNECTION_TUNE_OK: (u16, u16) = (10, 31);
    /// connection.open
    pub const CONNECTION_OPEN: (u16, u16) = (10, 40);
    /// connection.open-ok
    pub const CONNECTION_OPEN_OK: (u16, u16) = (10, 41);
    /// connection.close
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
    /// connection.close-ok
    pub const CONNECTION_CLOSE_OK: (u16, u16) = (10, 51);
    /// connection.blocked
    pub const CONNECTION_BLOCKED: (u16, u16) = (10, 60);
    /// connection.unblocked
    pub const CONNECTION_UNBLOCKED: (u16, u16) = (10, 61);
    /// channel.open
    pub const CHANNEL_OPEN: (u16, u16) = (20, 10);
    /// channel.open-ok
    pub const CHANNEL_OPEN_OK: (u16, u16) = (20, 11);
    /// channel.flow
    pub const CHANNEL_FLOW: (u16, u16) = (20, 20);
    /// channel.flow-ok
    pub const CHANNEL_FLOW_OK: (u16, u16) = (20, 21);
    /// channel.close
    pub const CHANNEL_CLOSE: (u16, u16) = (20, 40);
    /// channel.close-ok
    pub const CHANNEL_CLOSE_OK: (u16, u16) = (20, 41);
    /// exchange.declare
    pub const EXCHANGE_DECLARE: (u16, u16) = (40, 10);
    /// exchange.declare-ok
    pub const EXCHANGE_DECLARE_OK: (u16, u16) = (40, 11);
    /// basic.publish
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
    /// basic.return
    pub const BASIC_RETURN: (u16, u16) = (60, 50);
    /// basic.ack
    pub const BASIC_ACK: (u16, u16) = (60, 80);
    /// basic.nack
    pub const BASIC_NACK: (u16, u16) = (60, 120);
    /// confirm.select
    pub const CONFIRM_SELECT: (u16, u16) = (85, 10);
    /// confirm.select-ok
    pub const CONFIRM_SELECT_OK: (u16, u16) = (85, 11);
}

/// The basic class, for content headers.
const BASIC_CLASS: u16 = 60;
/// Property flags of a content header, in wire order.
const P_CONTENT_TYPE: u16 = 0x8000;
const P_HEADERS: u16 = 0x2000;
const P_DELIVERY_MODE: u16 = 0x1000;
const P_MESSAGE_ID: u16 = 0x0080;
const P_TIMESTAMP: u16 = 0x0040;
const P_TYPE: u16 = 0x0020;
const P_APP_ID: u16 = 0x0008;
/// Properties before `message_id`, in order, which a decoder must skip.
const P_CONTENT_ENCODING: u16 = 0x4000;
const P_PRIORITY: u16 = 0x0800;
const P_CORRELATION_ID: u16 = 0x0400;
const P_REPLY_TO: u16 = 0x0200;
const P_EXPIRATION: u16 = 0x0100;

/// A value that does not fit the protocol (a short string over 255 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLong {
    /// What it is: "message_id", "type", ...
    pub what: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is {} bytes; AMQP allows at most 255", self.what, self.len)
    }
}

/// Writes one frame: header, what `payload` puts, end byte.
fn frame<R>(buf: &mut BytesMut, kind: u8, channel: u16, payload: impl FnOnce(&mut BytesMut) -> R) -> R {
    let start = buf.len();
    buf.put_u8(kind);
    buf.put_u16(channel);
    buf.put_u32(0);
    let r = payload(buf);
    let size = (buf.len() - start - FRAME_HEADER_LEN) as u32;
    buf[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
    r
}

/// Writes a method frame with the arguments `args` puts.
pub fn method(buf: &mut BytesMut, channel: u16, (class, method): (u16, u16), args: impl FnOnce(&mut BytesMut)) {
    frame(buf, METHOD, channel, |b| {
        b.put_u16(class);
        b.put_u16(method);
        args(b);
    });
}

/// A heartbeat frame.
pub fn heartbeat(buf: &mut BytesMut) {
    frame(buf, HEARTBEAT, 0, |_| ());
}

/// A short string; the caller has checked the length (see [`short_checked`]).
pub fn short(buf: &mut BytesMut, s: &str) {
    let len = s.len().min(255);
    buf.put_u8(len as u8);
    buf.put_slice(&s.as_bytes()[..len]);
}

/// A short string, or [`TooLong`].
fn short_checked(buf: &mut BytesMut, s: &str, what: &'static str) -> Result<(), TooLong> {
    if s.len() > 255 {
        return Err(TooLong { what, len: s.len() });
    }
    short(buf, s);
    Ok(())
}

/// A long string.
pub fn long(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u32(s.len() as u32);
    buf.put_slice(s);
}

/// A field table. Names over 255 bytes are cut on a character boundary
/// (the config rules refuse such names; a `headers_column` may carry them).
pub fn table(buf: &mut BytesMut, entries: &[(String, HeaderValue)]) {
    sized(buf, |b| self::entries(b, entries));
}

fn entries(b: &mut BytesMut, entries: &[(String, HeaderValue)]) {
    for (name, value) in entries {
        let mut end = name.len().min(255);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        short(b, &name[..end]);
        field(b, value);
    }
}

/// The message's header table: its headers, then the relay's own, written
/// straight from their typed values.
fn message_headers(buf: &mut BytesMut, headers: &[(String, HeaderValue)], outbox: &OutboxHeaders) {
    sized(buf, |b| {
        entries(b, headers);
        if outbox.all {
            short(b, "x-outbox-table");
            b.put_u8(b'S');
            long(b, outbox.table.as_bytes());
        }
        if let Some(lsn) = outbox.lsn.filter(|_| outbox.all) {
            short(b, "x-outbox-lsn");
            b.put_u8(b'S');
            long_fmt(b, format_args!("{lsn}"));
        }
        if outbox.replay {
            short(b, "x-outbox-replay");
            b.put_u8(b't');
            b.put_u8(1);
        }
        if outbox.all {
            short(b, "x-outbox-commit-time");
            b.put_u8(b'S');
            sized(b, |b| outbox.commit_time.write_rfc3339(&mut b.writer()));
        }
    });
}

/// A long string from format arguments, without an intermediate String.
fn long_fmt(buf: &mut BytesMut, args: std::fmt::Arguments<'_>) {
    sized(buf, |b| {
        let _ = std::fmt::Write::write_fmt(b, args);
    });
}

/// A field table given as (name, value) pairs of plain strings and bools, for
/// client properties.
pub fn table_of(buf: &mut BytesMut, entries: &[(&str, Field<'_>)]) {
    sized(buf, |b| {
        for (name, value) in entries {
            short(b, name);
            match value {
                Field::Str(s) => {
                    b.put_u8(b'S');
                    long(b, s.as_bytes());
                }
                Field::Bool(v) => {
                    b.put_u8(b't');
                    b.put_u8(u8::from(*v));
                }
                Field::Table(t) => {
                    b.put_u8(b'F');
                    table_of(b, t);
                }
            }
        }
    });
}

/// A value of [`table_of`].
#[derive(Debug)]
pub enum Field<'a> {
    /// A long string.
    Str(&'a str),
    /// A boolean.
    Bool(bool),
    /// A nested table.
    Table(&'a [(&'a str, Field<'a>)]),
}

/// A 4-byte length, then what `body` puts.
fn sized(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at - 4) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn field(buf: &mut BytesMut, v: &HeaderValue) {
    match v {
        HeaderValue::Str(s) => {
            buf.put_u8(b'S');
            long(buf, s.as_bytes());
        }
        HeaderValue::Long(i) => {
            buf.put_u8(b'l');
            buf.put_i64(*i);
        }
        HeaderValue::Double(d) => {
            buf.put_u8(b'd');
            buf.put_f64(*d);
        }
        HeaderValue::Bool(b) => {
            buf.put_u8(b't');
            buf.put_u8(u8::from(*b));
        }
        HeaderValue::Table(t) => {
            buf.put_u8(b'F');
            table(buf, t);
        }
        HeaderValue::Array(a) => {
            buf.put_u8(b'A');
            sized(buf, |b| a.iter().for_each(|v| field(b, v)));
        }
        HeaderValue::Void => buf.put_u8(b'V'),
    }
}

/// basic.publish (mandatory, persistent) with its content header and body
/// frames, each body frame at most `frame_max` bytes long. Nothing is
/// written when a value does not fit.
///
/// # Errors
///
/// [`TooLong`] for an exchange, routing key, `message_id`, `type` or
/// `content_type` over 255 bytes.
pub fn publish(buf: &mut BytesMut, channel: u16, msg: &OutgoingMessage, frame_max: usize) -> Result<(), TooLong> {
    let start = buf.len();
    let r = publish_frames(buf, channel, msg, frame_max);
    if r.is_err() {
        buf.truncate(start);
    }
    r
}

fn publish_frames(buf: &mut BytesMut, channel: u16, msg: &OutgoingMessage, frame_max: usize) -> Result<(), TooLong> {
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    buf.reserve(msg.body.len() + 256 + (msg.body.len() / chunk + 1) * FRAME_OVERHEAD);
    frame(buf, METHOD, channel, |b| {
        b.put_u16(id::BASIC_PUBLISH.0);
        b.put_u16(id::BASIC_PUBLISH.1);
        b.put_u16(0); // ticket
        short_checked(b, &msg.exchange, "exchange")?;
        short_checked(b, &msg.routing_key, "routing key")?;
        b.put_u8(0b01); // mandatory, not immediate
        Ok(())
    })?;
    frame(buf, HEADER, channel, |b| {
        b.put_u16(BASIC_CLASS);
        b.put_u16(0); // weight
        b.put_u64(msg.body.len() as u64);
        let mut flags = P_CONTENT_TYPE | P_HEADERS | P_DELIVERY_MODE | P_MESSAGE_ID | P_TIMESTAMP | P_APP_ID;
        if msg.message_type.is_some() {
            flags |= P_TYPE;
        }
        b.put_u16(flags);
        short_checked(b, &msg.content_type, "content_type")?;
        message_headers(b, &msg.headers, &msg.outbox);
        b.put_u8(2); // persistent
        short_checked(b, &msg.message_id, "message_id")?;
        b.put_u64(msg.timestamp);
        if let Some(t) = &msg.message_type {
            short_checked(b, t, "type")?;
        }
        short(b, "outbox-relay");
        Ok(())
    })?;
    for part in msg.body.chunks(chunk) {
        frame(buf, BODY, channel, |b| b.put_slice(part));
    }
    Ok(())
}

/// One frame from the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method: its channel, (class, method) and arguments.
    Method {
        /// Channel number.
        channel: u16,
        /// (class, method).
        id: (u16, u16),
        /// The arguments, undecoded.
        args: Bytes,
    },
    /// A content header (of a basic.return, for a publisher).
    Header {
        /// Channel number.
        channel: u16,
        /// The payload.
        payload: Bytes,
    },
    /// A content body part.
    Body {
        /// Channel number.
        channel: u16,
        /// The payload.
        payload: Bytes,
    },
    /// A heartbeat.
    Heartbeat,
}

/// Why bytes from the broker are not AMQP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Takes one whole frame off the front of `buf`, or `None` while it is
/// incomplete (the caller reads more). `max` bounds a frame's payload.
///
/// # Errors
///
/// [`Malformed`] for a bad end byte, an unknown frame type or an oversized frame.
pub fn next(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, Malformed> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > max {
        return Err(Malformed(format!("a frame of {size} bytes, over the negotiated frame_max {max}")));
    }
    if buf.len() < FRAME_HEADER_LEN + size + 1 {
        buf.reserve(FRAME_HEADER_LEN + size + 1 - buf.len());
        return Ok(None);
    }
    if buf[FRAME_HEADER_LEN + size] != FRAME_END {
        return Err(Malformed(format!("frame end byte {:#04x}, expected 0xce", buf[FRAME_HEADER_LEN + size])));
    }
    let mut whole = buf.split_to(FRAME_HEADER_LEN + size + 1);
    let _ = whole.split_to(FRAME_HEADER_LEN);
    whole.truncate(size);
    let payload = whole.freeze();
    Ok(Some(match kind {
        METHOD => {
            if payload.len() < 4 {
                return Err(Malformed(format!("a method frame of {} bytes", payload.len())));
            }
            let id = (u16::from_be_bytes([payload[0], payload[1]]), u16::from_be_bytes([payload[2], payload[3]]));
            Frame::Method { channel, id, args: payload.slice(4..) }
        }
        HEADER => Frame::Header { channel, payload },
        BODY => Frame::Body { channel, payload },
        HEARTBEAT => Frame::Heartbeat,
        other => return Err(Malformed(format!("unknown frame type {other}"))),
    }))
}

/// Reads method arguments and content headers.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed(format!("a field needs {n} bytes, {} left", self.rest.len())));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    /// A 16-bit integer.
    pub fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A 32-bit integer.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A 64-bit integer.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    /// A short string (lossy UTF-8).
    pub fn short(&mut self) -> Result<String, Malformed> {
        let n = usize::from(self.u8()?);
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    /// A long string's bytes.
    pub fn long(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Skips a short string.
    fn skip_short(&mut self) -> Result<(), Malformed> {
        let n = usize::from(self.u8()?);
        self.take(n).map(|_| ())
    }
}

/// The reply code and text of a connection.close or channel.close.
///
/// # Errors
///
/// [`Malformed`] for truncated arguments.
pub fn close_reason(args: &[u8]) -> Result<(u16, String), Malformed> {
    let mut r = Reader::new(args);
    Ok((r.u16()?, r.short()?))
}

/// The `message_id` of a content header (basic.return's copy of our
/// properties), if it has one.
///
/// # Errors
///
/// [`Malformed`] for a truncated header.
pub fn header_message_id(payload: &[u8]) -> Result<Option<String>, Malformed> {
    let mut r = Reader::new(payload);
    let _class = r.u16()?;
    let _weight = r.u16()?;
    let _size = r.u64()?;
    let flags = r.u16()?;
    if flags & P_CONTENT_TYPE != 0 {
        r.skip_short()?;
    }
    if flags & P_CONTENT_ENCODING != 0 {
        r.skip_short()?;
    }
    if flags & P_HEADERS != 0 {
        r.long()?;
    }
    if flags & P_DELIVERY_MODE != 0 {
        r.u8()?;
    }
    if flags & P_PRIORITY != 0 {
        r.u8()?;
    }
    for flag in [P_CORRELATION_ID, P_REPLY_TO, P_EXPIRATION] {
        if flags & flag != 0 {
            r.skip_short()?;
        }
    }
    if flags & P_MESSAGE_ID != 0 {
        return r.short().map(Some);
    }
    Ok(None)
}

/// The body size a content header announces.
///
/// # Errors
///
/// [`Malformed`] for a truncated header.
pub fn header_body_size(payload: &[u8]) -> Result<u64, Malformed> {
    let mut r = Reader::new(payload);
    r.take(4)?;
    r.u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> OutgoingMessage {
        OutgoingMessage {
            route: 0,
            exchange: "ex".into(),
            routing_key: "a.b".into(),
            message_id: "id-1".into(),
            message_type: Some("T".into()),
            content_type: "application/json".into(),
            timestamp: 7,
            headers: vec![
                ("s".into(), HeaderValue::Str("v".into())),
                ("n".into(), HeaderValue::Long(-2)),
                ("a".into(), HeaderValue::Array(vec![HeaderValue::Bool(true), HeaderValue::Void])),
                ("t".into(), HeaderValue::Table(vec![("d".into(), HeaderValue::Double(0.5))])),
            ],
            outbox: OutboxHeaders {
                all: true,
                table: "public.outbox".into(),
                lsn: Some(crate::event::Lsn(0x1_0000_00AB)),
                replay: false,
                commit_time: crate::event::PgTimestamp(1_000_000),
            },
            body: body.to_vec().into(),
            trace_id: None,
        }
    }

    fn frames(mut buf: BytesMut, max: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = next(&mut buf, max).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        out
    }

    #[test]
    fn a_publish_is_a_method_a_header_and_body_frames_cut_at_frame_max() {
        let mut buf = BytesMut::new();
        publish(&mut buf, 1, &message(&[7u8; 25]), 18).unwrap();
        let f = frames(buf, 1 << 20);
        assert_eq!(f.len(), 2 + 3, "{f:?}"); // 25 bytes in parts of 10
        let Frame::Method { channel: 1, id, args } = &f[0] else { panic!("{:?}", f[0]) };
        assert_eq!(*id, id::BASIC_PUBLISH);
        let mut r = Reader::new(args);
        assert_eq!(
            (r.u16().unwrap(), r.short().unwrap(), r.short().unwrap(), r.u8().unwrap()),
            (0, "ex".into(), "a.b".into(), 1)
        );
        let Frame::Header { payload, .. } = &f[1] else { panic!() };
        assert_eq!(header_body_size(payload).unwrap(), 25);
        assert_eq!(header_message_id(payload).unwrap().as_deref(), Some("id-1"));
        let body: Vec<u8> = f[2..]
            .iter()
            .flat_map(|x| match x {
                Frame::Body { payload, .. } => payload.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(body, vec![7u8; 25]);
    }

    #[test]
    fn the_content_header_carries_every_property_in_wire_order() {
        let mut buf = BytesMut::new();
        publish(&mut buf, 1, &message(b"{}"), 4096).unwrap();
        let f = frames(buf, 4096);
        let Frame::Header { payload, .. } = &f[1] else { panic!() };
        let mut r = Reader::new(payload);
        assert_eq!((r.u16().unwrap(), r.u16().unwrap(), r.u64().unwrap()), (60, 0, 2));
        assert_eq!(r.u16().unwrap(), 0x8000 | 0x2000 | 0x1000 | 0x0080 | 0x0040 | 0x0020 | 0x0008);
        assert_eq!(r.short().unwrap(), "application/json");
        let mut t = Reader::new(r.long().unwrap());
        assert_eq!((t.short().unwrap(), t.u8().unwrap(), t.long().unwrap()), ("s".into(), b'S', &b"v"[..]));
        assert_eq!((t.short().unwrap(), t.u8().unwrap(), t.u64().unwrap() as i64), ("n".into(), b'l', -2));
        assert_eq!((t.short().unwrap(), t.u8().unwrap(), t.long().unwrap()), ("a".into(), b'A', &[b't', 1, b'V'][..]));
        assert_eq!((t.short().unwrap(), t.u8().unwrap()), ("t".into(), b'F'));
        let mut inner = Reader::new(t.long().unwrap());
        assert_eq!(
            (inner.short().unwrap(), inner.u8().unwrap(), f64::from_bits(inner.u64().unwrap())),
            ("d".into(), b'd', 0.5)
        );
        let mut text = || (t.short().unwrap(), t.u8().unwrap(), String::from_utf8(t.long().unwrap().to_vec()).unwrap());
        assert_eq!(text(), ("x-outbox-table".into(), b'S', "public.outbox".into()));
        assert_eq!(text(), ("x-outbox-lsn".into(), b'S', "1/AB".into()));
        assert_eq!(text(), ("x-outbox-commit-time".into(), b'S', "2000-01-01T00:00:01Z".into()));
        assert!(t.rest.is_empty());
        assert_eq!(r.u8().unwrap(), 2);
        assert_eq!(r.short().unwrap(), "id-1");
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.short().unwrap(), "T");
        assert_eq!(r.short().unwrap(), "outbox-relay");
        assert!(r.rest.is_empty());
    }

    #[test]
    fn without_outbox_headers_the_table_holds_only_the_messages_own() {
        let mut m = message(b"{}");
        m.outbox.all = false;
        m.headers.truncate(1);
        let mut buf = BytesMut::new();
        publish(&mut buf, 1, &m, 4096).unwrap();
        let f = frames(buf, 4096);
        let Frame::Header { payload, .. } = &f[1] else { panic!() };
        let mut r = Reader::new(payload);
        r.take(14).unwrap(); // class, weight, size, flags
        r.short().unwrap(); // content type
        let mut t = Reader::new(r.long().unwrap());
        assert_eq!((t.short().unwrap(), t.u8().unwrap(), t.long().unwrap()), ("s".into(), b'S', &b"v"[..]));
        assert!(t.rest.is_empty());
    }

    #[test]
    fn a_value_over_255_bytes_writes_nothing_and_names_itself() {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let mut m = message(b"x");
        m.message_id = "i".repeat(256);
        assert_eq!(publish(&mut buf, 1, &m, 4096), Err(TooLong { what: "message_id", len: 256 }));
        assert_eq!(&buf[..], b"kept");
    }

    #[test]
    fn frames_are_taken_only_when_whole() {
        let mut all = BytesMut::new();
        heartbeat(&mut all);
        method(&mut all, 0, id::CONNECTION_CLOSE, |b| {
            b.put_u16(320);
            short(b, "CONNECTION_FORCED");
            b.put_u32(0);
        });
        let bytes = all.freeze();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in bytes.iter() {
            buf.put_u8(*byte);
            while let Some(f) = next(&mut buf, 1024).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Frame::Heartbeat);
        let Frame::Method { id, args, .. } = &got[1] else { panic!() };
        assert_eq!(*id, id::CONNECTION_CLOSE);
        assert_eq!(close_reason(args).unwrap(), (320, "CONNECTION_FORCED".into()));
    }

    #[test]
    fn bad_frames_are_named() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 0, 0, 4, 0, 10, 0, 10, 0xAB][..]);
        assert!(next(&mut buf, 1024).unwrap_err().0.contains("end byte 0xab"));
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 1, 0, 0][..]);
        assert!(next(&mut buf, 1024).unwrap_err().0.contains("over the negotiated frame_max"));
        let mut buf = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert!(next(&mut buf, 1024).unwrap_err().0.contains("unknown frame type 9"));
    }
}
