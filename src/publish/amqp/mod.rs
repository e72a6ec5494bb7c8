//! The relay's own AMQP 0-9-1 publisher connection: one socket, one
//! channel in confirm mode, driven by the publisher task itself.
//!
//! Why our own and not a client library: a publisher needs a small part of
//! AMQP (the handshake, basic.publish, confirms, returns, closes, blocked,
//! heartbeats), and the libraries put two task hops and a system call
//! between each publish and the socket, and two more between each confirm
//! and its reader. Here [`Connection::publish`] only encodes the message's
//! frames into a write buffer, and [`Connection::io`], one arm of the
//! publisher's select, writes everything buffered in one call and reads
//! whatever the broker sent, decoding it into [`BrokerEvent`]s in arrival
//! order. A window of publishes costs one `write`, a batch of confirms one
//! `read`, and no thread ever wakes another (measured in the README's
//! benchmark section).
//!
//! Order is the protocol's: RabbitMQ sends a message's basic.return (method,
//! content header, body) before the basic.ack that covers it, and the
//! events come out in exactly the order the frames came in.
//!
//! Confirms can wait a little while the window is nearly empty
//! ([`Connection::batch_confirms`], see [`lowat`]): at a steady trickle of
//! events the relay then wakes for a batch of acks, not for each one.
//!
//! Heartbeats: a heartbeat frame goes out when nothing was written for half
//! the negotiated interval, and a broker silent for two intervals is dead
//! ([`Connection::tick`]); that covers a broker that vanishes without a RST.

pub mod frame;
mod lowat;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, ErrorKind, Result};
use crate::route::OutgoingMessage;
use frame::{id, Field, Frame, Reader};
use lowat::LowWater;

/// A byte stream to the broker: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Something the broker told us, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    /// basic.ack for `tag` (and every earlier tag when `multiple`).
    Ack {
        /// Delivery tag.
        tag: u64,
        /// Covers every unconfirmed tag up to `tag`.
        multiple: bool,
    },
    /// basic.nack: the broker could not take the message(s).
    Nack {
        /// Delivery tag.
        tag: u64,
        /// Covers every unconfirmed tag up to `tag`.
        multiple: bool,
    },
    /// basic.return: a mandatory message had no route. Arrives before the
    /// ack that covers it.
    Return {
        /// The returned message's `message_id`.
        message_id: Option<String>,
        /// 312 NO_ROUTE, ...
        reply_code: u16,
        /// The broker's text.
        reply_text: String,
    },
    /// The broker closed our channel (404 exchange not found, 403, ...).
    ChannelClosed {
        /// AMQP reply code.
        code: u16,
        /// Reply text.
        text: String,
    },
    /// The broker closed the connection.
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// connection.blocked (memory or disk alarm) or channel.flow off:
    /// publishing pauses.
    Blocked(String),
    /// connection.unblocked, or channel.flow on.
    Unblocked,
}

/// Who connects, and as what (its `Debug` leaves the password out).
#[derive(Clone, Copy)]
pub struct Login<'a> {
    /// User (ignored with `external`).
    pub user: &'a str,
    /// Password (ignored with `external`).
    pub password: &'a str,
    /// Virtual host.
    pub vhost: &'a str,
    /// SASL EXTERNAL (the TLS client certificate names the user).
    pub external: bool,
    /// Shown in the broker's management UI.
    pub name: &'a str,
    /// Requested heartbeat in seconds (0 disables).
    pub heartbeat: u16,
}

impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"***")
            .field("vhost", &self.vhost)
            .field("external", &self.external)
            .field("name", &self.name)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// The one channel the relay publishes on.
const CHANNEL: u16 = 1;
/// The largest frame we accept and send (RabbitMQ's default).
const FRAME_MAX: u32 = 131_072;
/// Free space kept in the read buffer before each read.
const READ_CHUNK: usize = 64 * 1024;
/// An empty write buffer larger than this (after a big message or a big
/// window) is given back, so that one large payload does not stay resident.
const KEEP_WRITE_BUFFER: usize = 1024 * 1024;

/// A basic.return whose content has not all arrived.
#[derive(Debug)]
struct Returning {
    reply_code: u16,
    reply_text: String,
    message_id: Option<String>,
    /// Body bytes still to come; `None` until the content header.
    remaining: Option<u64>,
}

/// An open connection with channel 1 in confirm mode.
pub struct Connection {
    io: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes written since the last flush (TLS buffers inside).
    unflushed: bool,
    /// The write buffer grew past [`KEEP_WRITE_BUFFER`]: replace it once empty.
    wbuf_grown: bool,
    frame_max: usize,
    heartbeat: Duration,
    last_read: Instant,
    last_written: Instant,
    events: VecDeque<BrokerEvent>,
    /// Replies to our own synchronous methods on channel 1 (declare-ok, close-ok).
    replies: VecDeque<(u16, u16)>,
    returning: Option<Returning>,
    next_tag: u64,
    channel_open: bool,
    connection_open: bool,
    /// "host:port", for messages.
    endpoint: String,
    /// The socket's receive low-water mark, when it is a TCP socket of ours.
    low_water: Option<LowWater>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("next_tag", &self.next_tag)
            .field("frame_max", &self.frame_max)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl Connection {
    /// Runs the handshake on `io` (protocol header, SASL PLAIN or EXTERNAL,
    /// tune, open), opens channel 1 and puts it in confirm mode. The caller
    /// bounds the time.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` naming `endpoint` and what the broker said (a
    /// refused login, an unknown vhost, a closed socket).
    /// `fd` is the TCP socket under `io`, for [`batch_confirms`](Self::batch_confirms).
    pub async fn open(
        io: Box<dyn Stream>,
        fd: Option<std::os::fd::RawFd>,
        login: &Login<'_>,
        endpoint: &str,
    ) -> Result<Self> {
        let now = Instant::now();
        let mut c = Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            unflushed: false,
            wbuf_grown: false,
            frame_max: FRAME_MAX as usize,
            heartbeat: Duration::ZERO,
            last_read: now,
            last_written: now,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            returning: None,
            next_tag: 1,
            channel_open: false,
            connection_open: false,
            endpoint: endpoint.to_owned(),
            low_water: fd.map(LowWater::new),
        };
        c.wbuf.put_slice(frame::PROTOCOL_HEADER);
        c.flush().await?;

        let start = c.expect(0, id::CONNECTION_START, "connection.start").await?;
        let mut r = Reader::new(&start);
        let (_major, _minor) = (r.u8().map_err(|e| c.malformed(e))?, r.u8().map_err(|e| c.malformed(e))?);
        r.long().map_err(|e| c.malformed(e))?; // server properties
        let mechanisms = String::from_utf8_lossy(r.long().map_err(|e| c.malformed(e))?).into_owned();
        let mechanism = if login.external { "EXTERNAL" } else { "PLAIN" };
        if !mechanisms.split_whitespace().any(|m| m == mechanism) {
            return Err(c.error(format!(
                "the broker offers SASL mechanisms {mechanisms:?}, not {mechanism}{}",
                if login.external { " (enable rabbitmq_auth_mechanism_ssl for client certificates)" } else { "" }
            )));
        }
        let version = env!("CARGO_PKG_VERSION");
        frame::method(&mut c.wbuf, 0, id::CONNECTION_START_OK, |b| {
            let capabilities = [
                ("publisher_confirms", Field::Bool(true)),
                ("connection.blocked", Field::Bool(true)),
                ("authentication_failure_close", Field::Bool(true)),
                ("basic.nack", Field::Bool(true)),
            ];
            frame::table_of(
                b,
                &[
                    ("product", Field::Str("outbox-relay")),
                    ("version", Field::Str(version)),
                    ("platform", Field::Str("Rust")),
                    ("connection_name", Field::Str(login.name)),
                    ("capabilities", Field::Table(&capabilities)),
                ],
            );
            frame::short(b, mechanism);
            if login.external {
                frame::long(b, b"");
            } else {
                let mut response = Vec::with_capacity(login.user.len() + login.password.len() + 2);
                response.push(0);
                response.extend_from_slice(login.user.as_bytes());
                response.push(0);
                response.extend_from_slice(login.password.as_bytes());
                frame::long(b, &response);
            }
            frame::short(b, "en_US");
        });
        c.flush().await?;

        let tune = c.expect(0, id::CONNECTION_TUNE, "connection.tune (after the login)").await?;
        let mut r = Reader::new(&tune);
        let channel_max = r.u16().map_err(|e| c.malformed(e))?;
        let frame_max = r.u32().map_err(|e| c.malformed(e))?;
        let server_heartbeat = r.u16().map_err(|e| c.malformed(e))?;
        let frame_max = if frame_max == 0 { FRAME_MAX } else { frame_max.min(FRAME_MAX) };
        let heartbeat = match (login.heartbeat, server_heartbeat) {
            (0, _) => 0,
            (ours, 0) => ours,
            (ours, theirs) => ours.min(theirs),
        };
        frame::method(&mut c.wbuf, 0, id::CONNECTION_TUNE_OK, |b| {
            b.put_u16(if channel_max == 0 { 2047 } else { channel_max });
            b.put_u32(frame_max);
            b.put_u16(heartbeat);
        });
        c.frame_max = frame_max as usize;
        c.heartbeat = Duration::from_secs(u64::from(heartbeat));
        frame::method(&mut c.wbuf, 0, id::CONNECTION_OPEN, |b| {
            frame::short(b, login.vhost);
            frame::short(b, "");
            b.put_u8(0);
        });
        c.flush().await?;
        c.expect(0, id::CONNECTION_OPEN_OK, "connection.open-ok").await?;
        c.connection_open = true;

        frame::method(&mut c.wbuf, CHANNEL, id::CHANNEL_OPEN, |b| frame::short(b, ""));
        c.flush().await?;
        c.expect(CHANNEL, id::CHANNEL_OPEN_OK, "channel.open-ok").await?;
        c.channel_open = true;
        frame::method(&mut c.wbuf, CHANNEL, id::CONFIRM_SELECT, |b| b.put_u8(0));
        c.flush().await?;
        c.expect(CHANNEL, id::CONFIRM_SELECT_OK, "confirm.select-ok").await?;
        Ok(c)
    }

    /// The negotiated heartbeat (zero: none).
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Whether the connection and the channel are open.
    pub fn is_open(&self) -> bool {
        self.connection_open && self.channel_open
    }

    /// Whether the broker's answers may wait (`true`: a few acks do not
    /// wake the relay; they are read at the next [`io`](Self::io) after
    /// this is set back to `false`, or when many have arrived).
    pub fn batch_confirms(&mut self, wait: bool) {
        if let Some(w) = self.low_water.as_mut() {
            w.set(wait);
        }
    }

    /// Buffers a mandatory, persistent publish; returns the delivery tag its
    /// confirm will carry. Nothing is written until the next [`io`](Self::io).
    ///
    /// # Errors
    ///
    /// `Data` when a value does not fit AMQP (a short string over 255 bytes).
    pub fn publish(&mut self, msg: &OutgoingMessage) -> Result<u64> {
        frame::publish(&mut self.wbuf, CHANNEL, msg, self.frame_max).map_err(|e| {
            Error::new(
                ErrorKind::Data,
                format!("event {} cannot be published: its {e}", msg.message_id.chars().take(64).collect::<String>()),
            )
        })?;
        self.wbuf_grown |= self.wbuf.capacity() > KEEP_WRITE_BUFFER;
        let tag = self.next_tag;
        self.next_tag += 1;
        Ok(tag)
    }

    /// Writes what is buffered and reads what the broker sent; returns once
    /// something was read (now decoded into events: [`next_event`](Self::next_event)).
    /// Cancel-safe: written and read bytes are accounted for as they move.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` when the socket fails or the broker closes it, or
    /// sends something that is not AMQP.
    pub async fn io(&mut self) -> Result<()> {
        let n = poll_fn(|cx| self.poll_io(cx)).await.map_err(|e| self.io_error(&e))?;
        if self.wbuf_grown && self.wbuf.is_empty() {
            // (an emptied BytesMut keeps its whole allocation for reuse)
            self.wbuf = BytesMut::with_capacity(READ_CHUNK);
            self.wbuf_grown = false;
        }
        if n == 0 {
            self.connection_open = false;
            return Err(self.error("the broker closed the connection (end of stream)".into()));
        }
        self.last_read = Instant::now();
        self.decode()
    }

    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while !self.wbuf.is_empty() {
            match Pin::new(&mut *self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.unflushed = true;
                    self.last_written = Instant::now();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        if self.wbuf.is_empty() && self.unflushed {
            match Pin::new(&mut *self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut *self.io), cx, &mut self.rbuf)
    }

    /// The next thing the broker said, in order.
    pub fn next_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }

    /// Heartbeats, at least once a second: sends one when nothing was
    /// written for half the interval.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` when nothing arrived for two intervals.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        if self.heartbeat.is_zero() {
            return Ok(());
        }
        let silent = now.saturating_duration_since(self.last_read);
        if silent > self.heartbeat * 2 {
            self.connection_open = false;
            return Err(self.error(format!(
                "nothing arrived for {} s, two heartbeat intervals (broker.heartbeat): the connection is considered dead",
                silent.as_secs()
            )));
        }
        if self.wbuf.is_empty() && now.saturating_duration_since(self.last_written) >= self.heartbeat / 2 {
            frame::heartbeat(&mut self.wbuf);
            self.last_written = now;
        }
        Ok(())
    }

    /// Whether `exchange` exists (a passive declare). A missing exchange
    /// closes the channel: use this on a connection about to be dropped.
    ///
    /// # Errors
    ///
    /// `BrokerChannel` with the broker's words when it does not exist;
    /// `BrokerConnection` when the connection fails.
    pub async fn exchange_exists(&mut self, exchange: &str) -> Result<()> {
        self.batch_confirms(false);
        frame::method(&mut self.wbuf, CHANNEL, id::EXCHANGE_DECLARE, |b| {
            b.put_u16(0);
            frame::short(b, exchange);
            frame::short(b, "topic");
            b.put_u8(0b1); // passive
            b.put_u32(0); // no arguments
        });
        loop {
            if let Some(i) = self.replies.iter().position(|r| *r == id::EXCHANGE_DECLARE_OK) {
                self.replies.remove(i);
                return Ok(());
            }
            while let Some(ev) = self.events.pop_front() {
                match ev {
                    BrokerEvent::ChannelClosed { code, text } => {
                        return Err(Error::new(
                            ErrorKind::BrokerChannel,
                            format!("exchange {exchange:?} on {}: {code} {text}", self.endpoint),
                        ))
                    }
                    BrokerEvent::ConnectionLost { reason } => return Err(self.error(reason)),
                    _ => {}
                }
            }
            self.io().await?;
        }
    }

    /// Closes the channel and the connection politely; the caller bounds the time.
    pub async fn close(&mut self) {
        self.batch_confirms(false);
        if self.channel_open {
            frame::method(&mut self.wbuf, CHANNEL, id::CHANNEL_CLOSE, |b| {
                b.put_u16(200);
                frame::short(b, "relay stopping");
                b.put_u32(0);
            });
            while self.channel_open && self.connection_open {
                if self.io().await.is_err() {
                    return;
                }
            }
        }
        if self.connection_open {
            frame::method(&mut self.wbuf, 0, id::CONNECTION_CLOSE, |b| {
                b.put_u16(200);
                frame::short(b, "relay stopping");
                b.put_u32(0);
            });
            while self.connection_open {
                if self.io().await.is_err() {
                    return;
                }
            }
        }
        let _ = self.io.shutdown().await;
    }

    /// Decodes every whole frame read so far.
    fn decode(&mut self) -> Result<()> {
        loop {
            let f = match frame::next(&mut self.rbuf, self.frame_max) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.malformed(e)),
            };
            self.on_frame(f)?;
        }
    }

    fn on_frame(&mut self, f: Frame) -> Result<()> {
        match f {
            Frame::Heartbeat => {}
            Frame::Method { channel: 0, id, args } => self.on_connection_method(id, &args)?,
            Frame::Method { channel: CHANNEL, id, args } => self.on_channel_method(id, &args)?,
            Frame::Header { channel: CHANNEL, payload } => {
                if let Some(r) = self.returning.as_mut() {
                    r.message_id = frame::header_message_id(&payload).map_err(|e| malformed(&self.endpoint, e))?;
                    r.remaining = Some(frame::header_body_size(&payload).map_err(|e| malformed(&self.endpoint, e))?);
                    self.finish_return();
                }
            }
            Frame::Body { channel: CHANNEL, payload } => {
                if let Some(Returning { remaining: Some(n), .. }) = self.returning.as_mut() {
                    *n = n.saturating_sub(payload.len() as u64);
                    self.finish_return();
                }
            }
            other => return Err(self.error(format!("unexpected frame from the broker: {other:?}"))),
        }
        Ok(())
    }

    fn finish_return(&mut self) {
        if matches!(self.returning, Some(Returning { remaining: Some(0), .. })) {
            let r = self.returning.take().expect("matched");
            self.events.push_back(BrokerEvent::Return {
                message_id: r.message_id,
                reply_code: r.reply_code,
                reply_text: r.reply_text,
            });
        }
    }

    fn on_connection_method(&mut self, method: (u16, u16), args: &[u8]) -> Result<()> {
        let mut r = Reader::new(args);
        match method {
            id::CONNECTION_CLOSE => {
                let (code, text) = frame::close_reason(args).map_err(|e| self.malformed(e))?;
                frame::method(&mut self.wbuf, 0, id::CONNECTION_CLOSE_OK, |_| ());
                self.connection_open = false;
                self.events.push_back(BrokerEvent::ConnectionLost {
                    reason: format!("the broker closed the connection: {code} {text}"),
                });
            }
            id::CONNECTION_CLOSE_OK => self.connection_open = false,
            id::CONNECTION_BLOCKED => {
                let reason = r.short().unwrap_or_default();
                self.events.push_back(BrokerEvent::Blocked(reason));
            }
            id::CONNECTION_UNBLOCKED => self.events.push_back(BrokerEvent::Unblocked),
            other => return Err(self.error(format!("unexpected method {other:?} on the connection"))),
        }
        Ok(())
    }

    fn on_channel_method(&mut self, method: (u16, u16), args: &[u8]) -> Result<()> {
        let mut r = Reader::new(args);
        let ep = self.endpoint.clone();
        let bad = |e| malformed(&ep, e);
        match method {
            id::BASIC_ACK | id::BASIC_NACK => {
                let tag = r.u64().map_err(bad)?;
                let multiple = r.u8().map_err(bad)? & 1 == 1;
                self.events.push_back(if method == id::BASIC_ACK {
                    BrokerEvent::Ack { tag, multiple }
                } else {
                    BrokerEvent::Nack { tag, multiple }
                });
            }
            id::BASIC_RETURN => {
                let reply_code = r.u16().map_err(bad)?;
                let reply_text = r.short().map_err(bad)?;
                self.returning = Some(Returning { reply_code, reply_text, message_id: None, remaining: None });
            }
            id::CHANNEL_CLOSE => {
                let (code, text) = frame::close_reason(args).map_err(bad)?;
                frame::method(&mut self.wbuf, CHANNEL, id::CHANNEL_CLOSE_OK, |_| ());
                self.channel_open = false;
                self.events.push_back(BrokerEvent::ChannelClosed { code, text });
            }
            id::CHANNEL_CLOSE_OK => self.channel_open = false,
            id::CHANNEL_FLOW => {
                let active = r.u8().map_err(bad)? & 1 == 1;
                frame::method(&mut self.wbuf, CHANNEL, id::CHANNEL_FLOW_OK, |b| b.put_u8(u8::from(active)));
                self.events.push_back(if active {
                    BrokerEvent::Unblocked
                } else {
                    BrokerEvent::Blocked("channel.flow".into())
                });
            }
            id::EXCHANGE_DECLARE_OK => self.replies.push_back(method),
            other => return Err(self.error(format!("unexpected method {other:?} on the publishing channel"))),
        }
        Ok(())
    }

    /// Writes the buffer out (handshake and close only).
    async fn flush(&mut self) -> Result<()> {
        let r = async {
            self.io.write_all(&self.wbuf).await?;
            self.io.flush().await
        }
        .await;
        self.wbuf.clear();
        r.map_err(|e| self.io_error(&e))
    }

    /// Reads until a method arrives on `channel`; it must be `want`.
    async fn expect(&mut self, channel: u16, want: (u16, u16), what: &str) -> Result<bytes::Bytes> {
        loop {
            match frame::next(&mut self.rbuf, self.frame_max).map_err(|e| self.malformed(e))? {
                Some(Frame::Method { id: got, args, channel: ch }) => {
                    if got == id::CONNECTION_CLOSE {
                        let (code, text) = frame::close_reason(&args).map_err(|e| self.malformed(e))?;
                        return Err(self.error(format!("the broker refused the connection at {what}: {code} {text}")));
                    }
                    if got == id::CHANNEL_CLOSE {
                        let (code, text) = frame::close_reason(&args).map_err(|e| self.malformed(e))?;
                        return Err(self.error(format!("the broker closed the channel at {what}: {code} {text}")));
                    }
                    if ch != channel || got != want {
                        return Err(self.error(format!("expected {what}, got method {got:?} on channel {ch}")));
                    }
                    return Ok(args);
                }
                Some(Frame::Heartbeat) => continue,
                Some(other) => return Err(self.error(format!("expected {what}, got {other:?}"))),
                None => {}
            }
            self.rbuf.reserve(READ_CHUNK);
            let n =
                tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.rbuf).await.map_err(|e| self.io_error(&e))?;
            if n == 0 {
                return Err(self.error(format!(
                    "the broker closed the connection while we waited for {what} (a wrong user, password or vhost, or not an AMQP 0-9-1 port?)"
                )));
            }
        }
    }

    fn error(&self, what: String) -> Error {
        Error::new(ErrorKind::BrokerConnection, format!("RabbitMQ at {}: {what}", self.endpoint))
    }

    fn io_error(&self, e: &std::io::Error) -> Error {
        self.error(format!("connection failed: {e}"))
    }

    fn malformed(&self, e: frame::Malformed) -> Error {
        malformed(&self.endpoint, e)
    }
}

fn malformed(endpoint: &str, e: frame::Malformed) -> Error {
    Error::new(ErrorKind::BrokerConnection, format!("RabbitMQ at {endpoint} sent a malformed frame: {e}"))
}
