//! The walsender connection: the only code that owns the replication socket.
//! Longer than our usual 600 lines on purpose: the socket's whole life
//! (startup, three authentication methods, TLS negotiation, the replication
//! commands, CopyBoth framing, status updates, close) is one state machine,
//! and splitting it would hand the socket to several files.
//!
//! Upstream tokio-postgres has no replication protocol (CopyBoth and the
//! `replication=database` startup are missing), so this module speaks it with
//! postgres-protocol's message codecs and authenticators:
//!
//! ```text
//! connect (TCP or Unix socket)
//!   -> StartupMessage {user, database, replication=database}
//!   <- Authentication{Ok | CleartextPassword | MD5Password | SASL...}
//!   <- ParameterStatus*, BackendKeyData, ReadyForQuery
//!   -> Query "IDENTIFY_SYSTEM"                 <- RowDescription, DataRow, CommandComplete, ReadyForQuery
//!   -> Query "START_REPLICATION SLOT ..."      <- CopyBothResponse ('W')
//!   <-> CopyData: XLogData / PrimaryKeepalive in, StandbyStatusUpdate out
//! ```
//!
//! postgres-protocol's backend parser rejects CopyBothResponse ('W'), so once
//! replication starts frames are split by [`protocol::parse_frame`] instead.
//! [`ReplicationConnection::recv`] is cancel-safe: its only await is a read
//! into the connection's own buffer, so it can sit in a `select!` arm.

use std::time::Duration;

use bytes::BytesMut;

/// The read buffer grows by this much when it is nearly full.
const READ_CHUNK: usize = 64 * 1024;
/// A frame this large gets the read buffer replaced once it is parsed.
const LARGE_FRAME: usize = 1 << 20;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::protocol::{self, ReplicationMessage};
use crate::error::{DbError, Error, ErrorKind, Result};
use crate::event::Lsn;
use crate::source::postgres::tls::{client_config, server_name, tls_server_end_point};
use crate::source::postgres::{quote_ident, quote_literal, PgTarget, SslMode};

/// Largest backend message we accept (PostgreSQL's own limit for a row is 1 GB).
const MAX_FRAME: usize = 1 << 30;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What IDENTIFY_SYSTEM answered.
#[derive(Debug, Clone)]
pub struct SystemIdentity {
    /// The cluster's system identifier.
    pub system_id: String,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database we are connected to.
    pub dbname: String,
}

/// An open walsender connection.
pub struct ReplicationConnection {
    /// The socket (plain TCP or Unix; TLS wraps it the same way).
    stream: Box<dyn Stream>,
    /// Bytes read and not yet parsed. Only `recv`'s read appends to it.
    buf: BytesMut,
    /// Where we are connected, for messages.
    endpoint: String,
    /// True after CopyBothResponse: frames are then split by our own parser.
    streaming: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection").field("endpoint", &self.endpoint).finish()
    }
}

impl ReplicationConnection {
    /// Where it is connected (no password), for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Connects and authenticates with `replication=database`.
    ///
    /// `password` overrides the one in the target (a re-read `_FILE` secret).
    ///
    /// # Errors
    ///
    /// `SourceConnection` when the server cannot be reached in `timeout`,
    /// `SourceAuth` when it refuses the credentials, `SourceProtocol` for an
    /// authentication method we do not speak.
    pub async fn connect(target: &PgTarget, timeout: Duration) -> Result<Self> {
        tokio::time::timeout(timeout, Self::connect_inner(target)).await.map_err(|_| {
            Error::new(
                ErrorKind::SourceConnection,
                format!("replication connection to {} timed out after {timeout:?}", target.endpoint()),
            )
        })?
    }

    async fn connect_inner(target: &PgTarget) -> Result<Self> {
        let endpoint = target.endpoint();
        let port = target.config.get_ports().first().copied().unwrap_or(5432);
        let tls = client_config(target)?;
        let mut binding = None;
        let stream: Box<dyn Stream> = match target.config.get_hosts().first() {
            // libpq never uses TLS over a Unix socket.
            Some(Host::Unix(dir)) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                    Error::with_source(
                        ErrorKind::SourceConnection,
                        format!("connecting to PostgreSQL socket {}", path.display()),
                        e,
                    )
                })?)
            }
            host => {
                let h = match host {
                    Some(Host::Tcp(h)) => h.as_str(),
                    _ => "localhost",
                };
                let mut tcp = tcp(h, port, &endpoint).await?;
                target.liveness.apply_to_socket(&tcp).map_err(|e| {
                    Error::with_source(
                        ErrorKind::SourceConnection,
                        format!("setting TCP keepalive on the connection to {endpoint}"),
                        e,
                    )
                })?;
                match tls {
                    None => Box::new(tcp),
                    Some(config) => match negotiate_ssl(&mut tcp, &endpoint).await? {
                        false if target.ssl_mode == SslMode::Prefer => Box::new(tcp),
                        false => {
                            return Err(Error::new(
                                ErrorKind::SourceConnection,
                                format!(
                                    "PostgreSQL at {endpoint} does not accept TLS but sslmode is {}",
                                    target.ssl_mode.as_str()
                                ),
                            ))
                        }
                        true => {
                            let name = server_name(h)?;
                            let s = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| {
                                Error::with_source(
                                    ErrorKind::SourceConnection,
                                    format!(
                                        "TLS handshake with PostgreSQL at {endpoint} failed (sslmode {})",
                                        target.ssl_mode.as_str()
                                    ),
                                    e,
                                )
                            })?;
                            binding =
                                s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(tls_server_end_point);
                            Box::new(s)
                        }
                    },
                }
            }
        };
        let mut conn =
            ReplicationConnection { stream, buf: BytesMut::with_capacity(64 * 1024), endpoint, streaming: false };
        conn.startup(target, binding).await?;
        Ok(conn)
    }

    /// Startup and authentication. `binding` is the TLS `tls-server-end-point`
    /// data when the connection is encrypted (SCRAM-SHA-256-PLUS).
    async fn startup(&mut self, target: &PgTarget, binding: Option<Vec<u8>>) -> Result<()> {
        let user = target.config.get_user().unwrap_or("postgres").to_owned();
        let dbname = target.dbname();
        let app = target.config.get_application_name().unwrap_or("outbox-relay").to_owned();
        let mut out = BytesMut::new();
        let params = [
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("replication", "database"),
            ("application_name", app.as_str()),
        ];
        frontend::startup_message(params.iter().copied(), &mut out)
            .map_err(|e| self.proto("encoding startup message", e))?;
        self.write(&out).await?;
        let password = target.config.get_password().map(<[u8]>::to_vec);
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next_message().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = self.need_password(&password, &user)?;
                    let mut out = BytesMut::new();
                    frontend::password_message(&pw, &mut out).map_err(|e| self.proto("encoding password", e))?;
                    self.write(&out).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = self.need_password(&password, &user)?;
                    let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), &pw, body.salt());
                    let mut out = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut out)
                        .map_err(|e| self.proto("encoding md5 password", e))?;
                    self.write(&out).await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let pw = self.need_password(&password, &user)?;
                    let mechs: Vec<String> = body
                        .mechanisms()
                        .map(|m| Ok(m.to_owned()))
                        .collect()
                        .map_err(|e| self.proto("reading SASL mechanisms", e))?;
                    let plus = mechs.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                    if !plus && !mechs.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(Error::new(
                            ErrorKind::SourceAuth,
                            format!(
                                "PostgreSQL at {} offers SASL mechanisms {mechs:?}; outbox-relay speaks SCRAM-SHA-256",
                                self.endpoint
                            ),
                        ));
                    }
                    // Channel binding when encrypted and offered; "y" (supported,
                    // not used) when encrypted without it; "n" in plain text.
                    let (mechanism, cb) = match &binding {
                        Some(data) if plus => {
                            ("SCRAM-SHA-256-PLUS", ChannelBinding::tls_server_end_point(data.clone()))
                        }
                        Some(_) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                        None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    };
                    let s = ScramSha256::new(&pw, cb);
                    let mut out = BytesMut::new();
                    frontend::sasl_initial_response(mechanism, s.message(), &mut out)
                        .map_err(|e| self.proto("encoding SASL response", e))?;
                    self.write(&out).await?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| self.unexpected("SASLContinue before SASL"))?;
                    s.update(body.data()).map_err(|e| {
                        Error::with_source(
                            ErrorKind::SourceAuth,
                            format!("SCRAM exchange with {} failed", self.endpoint),
                            e,
                        )
                    })?;
                    let mut out = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut out)
                        .map_err(|e| self.proto("encoding SASL response", e))?;
                    self.write(&out).await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| self.unexpected("SASLFinal before SASL"))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::with_source(
                            ErrorKind::SourceAuth,
                            format!("SCRAM server signature from {} did not verify", self.endpoint),
                            e,
                        )
                    })?;
                }
                backend::Message::ParameterStatus(_)
                | backend::Message::BackendKeyData(_)
                | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => {
                    let db = db_error(&body);
                    let kind =
                        if db.code.starts_with("28") { ErrorKind::SourceAuth } else { ErrorKind::SourceConnection };
                    return Err(Error::with_source(
                        kind,
                        format!("PostgreSQL at {} refused the replication connection as user {user:?}", self.endpoint),
                        db,
                    ));
                }
                _ => return Err(self.unexpected("unexpected message during startup")),
            }
        }
    }

    fn need_password(&self, pw: &Option<Vec<u8>>, user: &str) -> Result<Vec<u8>> {
        pw.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::SourceAuth,
                format!(
                    "PostgreSQL at {} asks for a password for user {user:?} and source.url has none",
                    self.endpoint
                ),
            )
        })
    }

    /// Runs a simple-protocol command and returns its rows as text.
    ///
    /// # Errors
    ///
    /// `SourceQuery` with the server's fields when the command fails.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).map_err(|e| self.proto("encoding query", e))?;
        self.write(&out).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let row = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect()
                        .map_err(|e| self.proto("reading a data row", e))?;
                    rows.push(row);
                }
                backend::Message::ErrorResponse(body) => error = Some(db_error(&body)),
                backend::Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(db) => Err(Error::with_source(
                query_kind(&db),
                format!("replication command `{}` failed on {}", first_words(sql), self.endpoint),
                db,
            )),
            None => Ok(rows),
        }
    }

    /// IDENTIFY_SYSTEM.
    ///
    /// # Errors
    ///
    /// As [`simple_query`](Self::simple_query), or `SourceProtocol` on an odd answer.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row =
            rows.first().filter(|r| r.len() >= 4).ok_or_else(|| self.unexpected("IDENTIFY_SYSTEM returned no row"))?;
        let get = |i: usize| row[i].clone().unwrap_or_default();
        Ok(SystemIdentity {
            system_id: get(0),
            timeline: get(1).parse().map_err(|_| self.unexpected("IDENTIFY_SYSTEM timeline is not a number"))?,
            xlog_pos: get(2)
                .parse()
                .map_err(|e| Error::with_source(ErrorKind::SourceProtocol, "IDENTIFY_SYSTEM xlogpos", e))?,
            dbname: get(3),
        })
    }

    /// START_REPLICATION with pgoutput protocol 1, our publication and, when
    /// `messages`, logical decoding messages. `start` 0/0 resumes at the slot's
    /// `confirmed_flush_lsn`.
    ///
    /// # Errors
    ///
    /// `SlotInUse` (SQLSTATE 55006) when another process streams from the
    /// slot; `SourceQuery` for other refusals.
    pub async fn start_replication(&mut self, slot: &str, publication: &str, start: Lsn, messages: bool) -> Result<()> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (\"proto_version\" '1', \"publication_names\" {}, \"messages\" '{messages}')",
            quote_ident(slot),
            quote_literal(&quote_ident(publication)),
        );
        let mut out = BytesMut::new();
        frontend::query(&sql, &mut out).map_err(|e| self.proto("encoding START_REPLICATION", e))?;
        self.write(&out).await?;
        loop {
            if self.buf.first() == Some(&b'W') {
                let frame = self.read_frame().await?;
                debug_assert_eq!(frame.tag, b'W');
                self.streaming = true;
                return Ok(());
            }
            if !self.buf.is_empty() {
                match self.try_parse()? {
                    Some(backend::Message::ErrorResponse(body)) => {
                        let db = db_error(&body);
                        // Consume the ReadyForQuery that follows, so the connection stays usable.
                        let kind = query_kind(&db);
                        return Err(Error::with_source(
                            kind,
                            format!("START_REPLICATION on slot {slot:?} at {} failed", self.endpoint),
                            db,
                        ));
                    }
                    Some(backend::Message::NoticeResponse(_)) => continue,
                    Some(_) => return Err(self.unexpected("unexpected reply to START_REPLICATION")),
                    None => {}
                }
            }
            self.fill().await?;
        }
    }

    /// Receives the next replication message. Cancel-safe.
    ///
    /// Returns `Ok(None)` when the server ended the stream (CopyDone).
    ///
    /// # Errors
    ///
    /// `SourceConnection` when the socket closes, `SourceQuery` when the
    /// server sends an ErrorResponse (walsender terminated, ...),
    /// `SourceProtocol` on undecodable bytes.
    pub async fn recv(&mut self) -> Result<Option<ReplicationMessage>> {
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'd' => {
                    return protocol::decode_copy_data(frame.body).map(Some).map_err(|e| {
                        Error::with_source(
                            ErrorKind::SourceProtocol,
                            format!("decoding replication data from {}", self.endpoint),
                            e,
                        )
                    })
                }
                b'c' => return Ok(None),
                b'E' => {
                    let mut b = BytesMut::with_capacity(frame.body.len() + 5);
                    b.extend_from_slice(b"E");
                    b.extend_from_slice(&((frame.body.len() + 4) as i32).to_be_bytes());
                    b.extend_from_slice(&frame.body);
                    let db = match backend::Message::parse(&mut b) {
                        Ok(Some(backend::Message::ErrorResponse(body))) => db_error(&body),
                        _ => DbError { message: "unparseable ErrorResponse".into(), ..DbError::default() },
                    };
                    let kind = if db.slot_invalidated() { ErrorKind::SlotLost } else { ErrorKind::SourceConnection };
                    return Err(Error::with_source(
                        kind,
                        format!("PostgreSQL at {} ended the replication stream", self.endpoint),
                        db,
                    ));
                }
                b'N' | b'S' => continue,
                t => return Err(self.unexpected(&format!("unexpected message {:?} during replication", t as char))),
            }
        }
    }

    /// Sends a standby status update: write = flush = apply = `flush`.
    ///
    /// # Errors
    ///
    /// `SourceConnection` when the write fails.
    pub async fn send_status(&mut self, flush: Lsn, reply_requested: bool) -> Result<()> {
        let payload =
            protocol::encode_standby_status_update(flush, flush, flush, protocol::pg_clock_now(), reply_requested);
        let frame = protocol::copy_data_frame(&payload);
        self.write(&frame).await
    }

    /// Ends the stream politely: CopyDone, then Terminate. Errors are ignored
    /// (the server may already be gone).
    pub async fn close(mut self) {
        let mut out = BytesMut::new();
        if self.streaming {
            frontend::copy_done(&mut out);
        }
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    // ----- framing helpers -----

    async fn read_frame(&mut self) -> Result<protocol::BackendFrame> {
        loop {
            match protocol::parse_frame(&mut self.buf, MAX_FRAME) {
                Ok(Some(f)) => {
                    if f.body.len() > LARGE_FRAME {
                        // The frame's bytes stay with its body until it is
                        // decoded; the buffer must not keep (and later reuse)
                        // that allocation: a large row would stay resident.
                        let mut fresh = BytesMut::with_capacity(READ_CHUNK.max(self.buf.len()));
                        fresh.extend_from_slice(&self.buf);
                        self.buf = fresh;
                    }
                    return Ok(f);
                }
                Ok(None) => {
                    // A large frame: make room for all of it at once, rather
                    // than doubling the buffer (and copying it) on the way.
                    if let Some(total) = protocol::frame_len(&self.buf) {
                        if total > self.buf.capacity() {
                            self.buf.reserve(total - self.buf.len());
                        }
                    }
                    self.fill().await?
                }
                Err(e) => {
                    return Err(Error::with_source(
                        ErrorKind::SourceProtocol,
                        format!("framing error from {}", self.endpoint),
                        e,
                    ))
                }
            }
        }
    }

    fn try_parse(&mut self) -> Result<Option<backend::Message>> {
        backend::Message::parse(&mut self.buf).map_err(|e| self.proto("parsing a backend message", e))
    }

    async fn next_message(&mut self) -> Result<backend::Message> {
        loop {
            if let Some(m) = self.try_parse()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the buffer. Cancel-safe (`read_buf` either
    /// appends what it read or nothing).
    async fn fill(&mut self) -> Result<()> {
        if self.buf.capacity() - self.buf.len() < 8192 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.stream.read_buf(&mut self.buf).await.map_err(|e| {
            Error::with_source(ErrorKind::SourceConnection, format!("reading from PostgreSQL at {}", self.endpoint), e)
        })?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::SourceConnection,
                format!("PostgreSQL at {} closed the replication connection", self.endpoint),
            ));
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await.map_err(|e| {
            Error::with_source(ErrorKind::SourceConnection, format!("writing to PostgreSQL at {}", self.endpoint), e)
        })?;
        self.stream.flush().await.map_err(|e| {
            Error::with_source(ErrorKind::SourceConnection, format!("writing to PostgreSQL at {}", self.endpoint), e)
        })
    }

    fn proto(&self, what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        Error::with_source(
            ErrorKind::SourceProtocol,
            format!("{what} on the replication connection to {}", self.endpoint),
            e,
        )
    }

    fn unexpected(&self, what: &str) -> Error {
        Error::new(ErrorKind::SourceProtocol, format!("{what} on the replication connection to {}", self.endpoint))
    }
}

async fn tcp(host: &str, port: u16, endpoint: &str) -> Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect((host, port)).await.map_err(|e| {
        Error::with_source(ErrorKind::SourceConnection, format!("connecting to PostgreSQL at {endpoint}"), e)
    })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Sends SSLRequest and reads the one-byte answer: true for 'S'.
async fn negotiate_ssl(tcp: &mut tokio::net::TcpStream, endpoint: &str) -> Result<bool> {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    let io = |e| {
        Error::with_source(ErrorKind::SourceConnection, format!("negotiating TLS with PostgreSQL at {endpoint}"), e)
    };
    tcp.write_all(&out).await.map_err(io)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(Error::new(
            ErrorKind::SourceProtocol,
            format!("PostgreSQL at {endpoint} answered SSLRequest with {other:#04x}"),
        )),
    }
}

fn db_error(body: &backend::ErrorResponseBody) -> DbError {
    let mut db = DbError::default();
    let mut fields = body.fields();
    while let Ok(Some(f)) = fields.next() {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'S' => db.severity = v,
            b'C' => db.code = v,
            b'M' => db.message = v,
            b'D' => db.detail = Some(v),
            b'H' => db.hint = Some(v),
            _ => {}
        }
    }
    db
}

fn query_kind(db: &DbError) -> ErrorKind {
    if db.slot_invalidated() {
        return ErrorKind::SlotLost;
    }
    match db.code.as_str() {
        "55006" => ErrorKind::SlotInUse,
        "42704" => ErrorKind::SlotMissing,
        c if c.starts_with("28") => ErrorKind::SourceAuth,
        c if c.starts_with("57") || c.starts_with("08") => ErrorKind::SourceConnection,
        _ => ErrorKind::SourceQuery,
    }
}

fn first_words(sql: &str) -> String {
    sql.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
