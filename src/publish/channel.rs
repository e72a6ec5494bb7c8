//! Where and how the relay reaches RabbitMQ: the `amqp://` / `amqps://`
//! URL and the `broker.tls_*` keys parsed into a [`BrokerTarget`], the TCP
//! connection (no Nagle delay: a window of publishes is one write anyway)
//! and TLS, and [`BrokerChannel`], the confirm-mode channel the publisher
//! drives, on the relay's own AMQP connection ([`super::amqp`]).
//!
//! Why not a client library: lapin 4.12.3 attached a basic.return to the
//! wrong message's confirm for some 5-10% of returns under pipelining, and
//! amqprs, which the relay used until it was measured, spent a task hop and
//! a system call per publish and per confirm (see [`super::amqp`]). We do
//! our own correlation of returns and confirms ([`super::confirm`]) and can
//! prove it.

use std::time::{Duration, Instant};

use crate::config::secret::redact_url;
use crate::error::{Error, ErrorKind, Result};
use crate::route::OutgoingMessage;
use crate::tls::{self, LoadError};

pub use super::amqp::BrokerEvent;
use super::amqp::{Connection, Login, Stream};

/// TLS settings for `amqps://` (RabbitMQ's URI query parameters
/// `cacertfile`, `certfile`, `keyfile`, `verify`, `server_name_indication`,
/// or the `broker.tls_*` keys).
#[derive(Clone, Debug, Default)]
pub struct BrokerTls {
    /// CA bundle; None means the platform's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (with `key_file`).
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key.
    pub key_file: Option<std::path::PathBuf>,
    /// Verify the broker's certificate and host name (default true).
    pub verify: bool,
    /// Name for SNI and verification (default: the URL's host).
    pub server_name: Option<String>,
}

/// Where and how to connect, parsed from an `amqp://` or `amqps://` URL.
#[derive(Clone)]
pub struct BrokerTarget {
    host: String,
    port: u16,
    user: String,
    password: String,
    vhost: String,
    /// Set for `amqps://`.
    tls: Option<BrokerTls>,
    /// No user in the URL and a client certificate: SASL EXTERNAL.
    external: bool,
    /// The URL without its password, for messages.
    pub redacted: String,
}

impl std::fmt::Debug for BrokerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl BrokerTarget {
    /// Parses `amqp://user:pass@host:port/vhost` (vhost percent-encoded,
    /// `%2f` is "/", an empty path is "/").
    ///
    /// # Errors
    ///
    /// `Config` naming the redacted URL.
    pub fn parse(url: &str) -> Result<Self> {
        let redacted = redact_url(url);
        let bad = |m: &str| Error::new(ErrorKind::Config, format!("broker url {redacted}: {m}"));
        let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let tls = match u.scheme() {
            "amqp" => false,
            "amqps" => true,
            _ => return Err(bad("scheme must be amqp or amqps")),
        };
        let dec = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let path = u.path().strip_prefix('/').unwrap_or(u.path());
        let mut t = BrokerTls { verify: true, ..BrokerTls::default() };
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "cacertfile" => t.ca_file = Some(v.into_owned().into()),
                "certfile" => t.cert_file = Some(v.into_owned().into()),
                "keyfile" => t.key_file = Some(v.into_owned().into()),
                "verify" => {
                    t.verify = match v.as_ref() {
                        "verify_peer" => true,
                        "verify_none" => false,
                        _ => return Err(bad("verify must be verify_peer or verify_none")),
                    }
                }
                "server_name_indication" => t.server_name = Some(v.into_owned()),
                "heartbeat" | "connection_timeout" | "channel_max" | "frame_max" | "auth_mechanism" => {}
                other => return Err(bad(&format!("unknown query parameter {other:?}"))),
            }
        }
        if !tls && (t.ca_file.is_some() || t.cert_file.is_some() || t.key_file.is_some()) {
            return Err(bad("TLS parameters need an amqps:// URL"));
        }
        Ok(BrokerTarget {
            host: u.host_str().ok_or_else(|| bad("no host"))?.to_owned(),
            port: u.port().unwrap_or(if tls { 5671 } else { 5672 }),
            external: false,
            user: if u.username().is_empty() { "guest".into() } else { dec(u.username()) },
            password: u.password().map(dec).unwrap_or_else(|| "guest".into()),
            vhost: if path.is_empty() { "/".into() } else { dec(path) },
            tls: tls.then_some(t),
            redacted,
        })
        .map(|mut b| {
            b.external = b.tls.as_ref().is_some_and(|t| t.cert_file.is_some()) && u.username().is_empty();
            b
        })
    }

    /// Fills TLS files the URL did not give from the `broker.tls_*` keys.
    pub fn with_tls_keys(
        mut self,
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
        url_has_user: bool,
    ) -> Self {
        if let Some(t) = self.tls.as_mut() {
            t.ca_file = t.ca_file.take().or_else(|| ca.map(Into::into));
            t.cert_file = t.cert_file.take().or_else(|| cert.map(Into::into));
            t.key_file = t.key_file.take().or_else(|| key.map(Into::into));
            self.external = t.cert_file.is_some() && !url_has_user;
        }
        self
    }

    /// From the config: URL plus `broker.tls_*` keys.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub fn from_config(url: &str, cfg: &crate::config::BrokerConfig) -> Result<Self> {
        let has_user = url::Url::parse(url).map(|u| !u.username().is_empty()).unwrap_or(true);
        Ok(Self::parse(url)?.with_tls_keys(
            cfg.tls_ca_file.as_deref(),
            cfg.tls_cert_file.as_deref(),
            cfg.tls_key_file.as_deref(),
            has_user,
        ))
    }

    /// Host and port, to connect to.
    pub fn host_port(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// "host:port".
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// An open connection with one channel in confirm mode.
pub struct BrokerChannel {
    conn: Connection,
    endpoint: String,
}

impl std::fmt::Debug for BrokerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerChannel").field("endpoint", &self.endpoint).finish()
    }
}

impl BrokerChannel {
    /// Connects, opens a channel and enables publisher confirms, all within
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` with the endpoint (never the password); `Config`
    /// for TLS files that cannot be used.
    pub async fn open(target: &BrokerTarget, heartbeat: Duration, timeout: Duration, name: &str) -> Result<Self> {
        let endpoint = target.endpoint();
        let tls = match &target.tls {
            Some(t) => Some((
                broker_tls_config(t)
                    .map_err(|m| Error::new(ErrorKind::Config, format!("broker url {}: {m}", target.redacted)))?,
                t.server_name.clone().unwrap_or_else(|| target.host.clone()),
            )),
            None => None,
        };
        let login = Login {
            user: &target.user,
            password: &target.password,
            vhost: &target.vhost,
            external: target.external,
            name,
            heartbeat: heartbeat.as_secs().min(u64::from(u16::MAX)) as u16,
        };
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(
                ErrorKind::BrokerConnection,
                format!("{what} RabbitMQ at {endpoint} (vhost {:?}, user {:?}): {e}", target.vhost, target.user),
            )
        };
        let work = async {
            let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| fail("connecting to", &e))?;
            tcp.set_nodelay(true).map_err(|e| fail("setting TCP_NODELAY for", &e))?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
            let io: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some((config, domain)) => {
                    let name = rustls::pki_types::ServerName::try_from(domain.clone())
                        .map_err(|e| fail(&format!("TLS server name {domain:?} for"), &e))?;
                    let stream = tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| fail("TLS handshake with", &e))?;
                    Box::new(stream)
                }
            };
            Connection::open(io, Some(fd), &login, &endpoint)
                .await
                .map_err(|e| Error::new(e.kind(), format!("{e} (vhost {:?}, user {:?})", target.vhost, target.user)))
        };
        let conn = tokio::time::timeout(timeout, work).await.map_err(|_| {
            Error::new(
                ErrorKind::BrokerConnection,
                format!("connecting to RabbitMQ at {endpoint} timed out after {timeout:?}"),
            )
        })??;
        Ok(BrokerChannel { conn, endpoint })
    }

    /// The node, as `host:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether both the connection and the channel are still open.
    pub fn is_open(&self) -> bool {
        self.conn.is_open()
    }

    /// Buffers a publish with `mandatory` and persistent delivery; returns
    /// the delivery tag the confirm will carry. It is written by the next
    /// [`io`](Self::io).
    ///
    /// # Errors
    ///
    /// `Data` when the message does not fit AMQP.
    pub fn publish(&mut self, msg: &OutgoingMessage) -> Result<u64> {
        self.conn.publish(msg)
    }

    /// Whether confirms may wait to be read in a batch (see [`super::amqp`]).
    pub fn batch_confirms(&mut self, wait: bool) {
        self.conn.batch_confirms(wait);
    }

    /// Writes what is buffered and reads what the broker sent (cancel-safe);
    /// returns once something was read. Then take [`next_event`](Self::next_event)s.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` when the connection fails.
    pub async fn io(&mut self) -> Result<()> {
        self.conn.io().await
    }

    /// The next thing the broker said, in arrival order.
    pub fn next_event(&mut self) -> Option<BrokerEvent> {
        self.conn.next_event()
    }

    /// Heartbeats (call at least once a second).
    ///
    /// # Errors
    ///
    /// `BrokerConnection` when the broker has been silent for two intervals.
    pub fn tick(&mut self, now: Instant) -> Result<()> {
        self.conn.tick(now)
    }

    /// Checks that `exchange` exists (passive declare). A missing exchange
    /// closes the channel, so call this on a channel you are about to drop.
    ///
    /// # Errors
    ///
    /// `BrokerChannel` when it does not exist.
    pub async fn exchange_exists(&mut self, exchange: &str) -> Result<()> {
        let limit = Duration::from_secs(10);
        tokio::time::timeout(limit, self.conn.exchange_exists(exchange)).await.map_err(|_| {
            Error::new(
                ErrorKind::BrokerConnection,
                format!(
                    "RabbitMQ at {} did not answer a passive declare of {exchange:?} within {limit:?}",
                    self.endpoint
                ),
            )
        })?
    }

    /// Closes channel and connection, bounded by two seconds.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.close()).await;
    }
}

/// rustls client configuration for the broker: the CA file (or the
/// platform's roots), an optional client certificate, and verification on
/// unless `verify_none`.
fn broker_tls_config(t: &BrokerTls) -> std::result::Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let roots = match &t.ca_file {
        Some(path) => tls::file_roots(path).map_err(describe)?,
        None => tls::platform_roots(),
    };
    let builder = tls::builder().map_err(|e| e.to_string())?.with_root_certificates(roots);
    let mut config = tls::with_client_cert(builder, t.cert_file.as_deref(), t.key_file.as_deref()).map_err(describe)?;
    if !t.verify {
        config.dangerous().set_certificate_verifier(tls::no_verification());
    }
    Ok(std::sync::Arc::new(config))
}

/// Words a loading failure with the broker's TLS setting names.
fn describe(e: LoadError) -> String {
    match e {
        LoadError::CaRead(path, e) | LoadError::CaNotPem(path, e) => {
            format!("cannot read CA file {}: {e}", path.display())
        }
        LoadError::CaRejected(path, e) => format!("CA file {}: {e}", path.display()),
        LoadError::CertRead(path, e) | LoadError::CertNotPem(path, e) => {
            format!("cannot read client certificate {}: {e}", path.display())
        }
        LoadError::KeyRead(path, e) => format!("cannot read client key {}: {e}", path.display()),
        LoadError::ClientAuth(e) => format!("client certificate: {e}"),
        LoadError::Unpaired => "tls_cert_file and tls_key_file go together".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(query: &str) -> String {
        let target = BrokerTarget::parse(&format!("amqps://h/%2f?{query}")).unwrap();
        broker_tls_config(target.tls.as_ref().unwrap()).unwrap_err()
    }

    #[test]
    fn tls_file_problems_name_the_broker_setting() {
        assert!(problem("cacertfile=/nonexistent/ca.pem").starts_with("cannot read CA file /nonexistent/ca.pem: "));
        assert_eq!(problem("certfile=/nonexistent/c.pem"), "tls_cert_file and tls_key_file go together");
        assert!(problem("certfile=/nonexistent/c.pem&keyfile=/nonexistent/k.pem")
            .starts_with("cannot read client certificate /nonexistent/c.pem: "));
    }
}
