//! The broker connection and its one confirm-mode channel: the only module
//! that knows the AMQP client library (amqprs).
//!
//! Why amqprs and not lapin: under pipelined publishing lapin 4.12.3 attached
//! a basic.return to the wrong message's confirm for some 5-10% of returns
//! here. amqprs hands us the raw basic.ack / basic.nack / basic.return frames
//! through one callback, in the order the broker sent them, and RabbitMQ
//! sends a message's basic.return before the basic.ack that covers it. So we
//! do our own correlation ([`super::confirm`]) and can prove it.
//!
//! Everything the broker says arrives as a [`BrokerEvent`] on one unbounded
//! channel (unbounded so the client's dispatcher never blocks on us; it is
//! bounded in practice by `max_in_flight`).

use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, FieldTable, FieldValue, Nack, Return};
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::secret::redact_url;
use crate::error::{Error, ErrorKind, Result};
use crate::route::{HeaderValue, OutgoingMessage};
use crate::tls::{self, LoadError};

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
    /// The connection was closed by the broker or the network.
    ConnectionLost {
        /// Why.
        reason: String,
    },
    /// connection.blocked (memory or disk alarm): publishing pauses.
    Blocked(String),
    /// connection.unblocked.
    Unblocked,
}

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

    /// "host:port".
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// An open connection with one channel in confirm mode.
pub struct BrokerChannel {
    connection: Connection,
    channel: Channel,
    /// What the broker said, in order.
    pub events: mpsc::UnboundedReceiver<BrokerEvent>,
    /// Delivery tag of the next publish (confirm mode numbers from 1).
    next_tag: u64,
    endpoint: String,
}

impl std::fmt::Debug for BrokerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerChannel").field("endpoint", &self.endpoint).field("next_tag", &self.next_tag).finish()
    }
}

impl BrokerChannel {
    /// Connects, opens a channel and enables publisher confirms, all within
    /// `timeout`.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` with the endpoint (never the password).
    pub async fn open(target: &BrokerTarget, heartbeat: Duration, timeout: Duration, name: &str) -> Result<Self> {
        let endpoint = target.endpoint();
        let fail = |what: &str, e: amqprs::error::Error| {
            Error::new(
                ErrorKind::BrokerConnection,
                format!("{what} RabbitMQ at {endpoint} (vhost {:?}, user {:?}): {e}", target.vhost, target.user),
            )
        };
        let mut args = OpenConnectionArguments::new(&target.host, target.port, &target.user, &target.password);
        args.virtual_host(&target.vhost)
            .heartbeat(heartbeat.as_secs().min(u64::from(u16::MAX)) as u16)
            .connection_name(name);
        if target.external {
            args.credentials(amqprs::security::SecurityCredentials::new_external());
        }
        if let Some(t) = &target.tls {
            let config = broker_tls_config(t)
                .map_err(|m| Error::new(ErrorKind::Config, format!("broker url {}: {m}", target.redacted)))?;
            let domain = t.server_name.clone().unwrap_or_else(|| target.host.clone());
            args.scheme("amqps")
                .tls_adaptor(amqprs::tls::TlsAdaptor::new(tokio_rustls::TlsConnector::from(config), domain));
        }
        let args = args.finish();
        let (tx, events) = mpsc::unbounded_channel();
        let work = async {
            let connection = Connection::open(&args).await.map_err(|e| fail("connecting to", e))?;
            connection
                .register_callback(ConnCallback { tx: tx.clone() })
                .await
                .map_err(|e| fail("registering with", e))?;
            let watch = connection.clone();
            let tx2 = tx.clone();
            tokio::spawn(async move {
                if watch.listen_network_io_failure().await {
                    let _ = tx2.send(BrokerEvent::ConnectionLost { reason: "network I/O failure".into() });
                }
            });
            let channel = connection.open_channel(None).await.map_err(|e| fail("opening a channel on", e))?;
            channel
                .register_callback(ChanCallback { tx: tx.clone() })
                .await
                .map_err(|e| fail("registering with", e))?;
            channel
                .confirm_select(ConfirmSelectArguments::new(false))
                .await
                .map_err(|e| fail("enabling publisher confirms on", e))?;
            Ok::<_, Error>((connection, channel))
        };
        let (connection, channel) = tokio::time::timeout(timeout, work).await.map_err(|_| {
            Error::new(
                ErrorKind::BrokerConnection,
                format!("connecting to RabbitMQ at {endpoint} timed out after {timeout:?}"),
            )
        })??;
        Ok(BrokerChannel { connection, channel, events, next_tag: 1, endpoint })
    }

    /// Whether both the connection and the channel are still open.
    pub fn is_open(&self) -> bool {
        self.connection.is_open() && self.channel.is_open()
    }

    /// Publishes with `mandatory` and persistent delivery; returns the
    /// delivery tag the confirm will carry. Not cancel-safe: never call it
    /// from a losing `select!` arm.
    ///
    /// # Errors
    ///
    /// `BrokerConnection` when the write fails or takes longer than `timeout`.
    pub async fn publish(&mut self, msg: &OutgoingMessage, timeout: Duration) -> Result<u64> {
        let mut props = BasicProperties::default();
        props
            .with_message_id(&msg.message_id)
            .with_content_type(&msg.content_type)
            .with_timestamp(msg.timestamp)
            .with_persistence(true)
            .with_app_id("outbox-relay")
            .with_headers(field_table(&msg.headers));
        if let Some(t) = &msg.message_type {
            props.with_message_type(t);
        }
        let args = BasicPublishArguments::new(&msg.exchange, &msg.routing_key).mandatory(true).finish();
        let tag = self.next_tag;
        tokio::time::timeout(timeout, self.channel.basic_publish(props.finish(), msg.body.clone(), args))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::ConfirmTimeout,
                    format!("publishing to RabbitMQ at {} did not complete within {timeout:?}", self.endpoint),
                )
            })?
            .map_err(|e| {
                Error::new(ErrorKind::BrokerConnection, format!("publishing to RabbitMQ at {}: {e}", self.endpoint))
            })?;
        self.next_tag += 1;
        Ok(tag)
    }

    /// Checks that `exchange` exists (passive declare). A missing exchange
    /// closes the channel, so call this on a channel you are about to drop.
    ///
    /// # Errors
    ///
    /// `BrokerChannel` when it does not exist.
    pub async fn exchange_exists(&self, exchange: &str) -> Result<()> {
        let args = ExchangeDeclareArguments::new(exchange, "topic").passive(true).finish();
        self.channel.exchange_declare(args).await.map_err(|e| {
            Error::new(ErrorKind::BrokerChannel, format!("exchange {exchange:?} on {}: {e}", self.endpoint))
        })
    }

    /// Closes channel and connection, bounded by two seconds.
    pub async fn close(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.channel.close().await;
            let _ = self.connection.close().await;
        })
        .await;
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

fn field_value(v: &HeaderValue) -> FieldValue {
    match v {
        HeaderValue::Str(s) => FieldValue::from(s.as_str()),
        HeaderValue::Long(i) => FieldValue::l(*i),
        HeaderValue::Double(d) => FieldValue::d(*d),
        HeaderValue::Bool(b) => FieldValue::t(*b),
        HeaderValue::Table(t) => FieldValue::F(field_table(t)),
        HeaderValue::Array(a) => {
            let values: Vec<FieldValue> = a.iter().map(field_value).collect();
            FieldValue::A(values.try_into().unwrap_or_default())
        }
        HeaderValue::Void => FieldValue::V,
    }
}

fn field_table(headers: &[(String, HeaderValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in headers {
        // Names longer than 255 bytes cannot be AMQP field names; truncate on a char boundary.
        let mut name = k.clone();
        while name.len() > 255 {
            name.pop();
        }
        if let Ok(n) = name.try_into() {
            t.insert(n, field_value(v));
        }
    }
    t
}

struct ConnCallback {
    tx: mpsc::UnboundedSender<BrokerEvent>,
}

#[async_trait]
impl ConnectionCallback for ConnCallback {
    async fn close(&mut self, _c: &Connection, close: Close) -> std::result::Result<(), amqprs::error::Error> {
        let _ = self.tx.send(BrokerEvent::ConnectionLost { reason: format!("broker closed the connection: {close}") });
        Ok(())
    }
    async fn blocked(&mut self, _c: &Connection, reason: String) {
        let _ = self.tx.send(BrokerEvent::Blocked(reason));
    }
    async fn unblocked(&mut self, _c: &Connection) {
        let _ = self.tx.send(BrokerEvent::Unblocked);
    }
    async fn secret_updated(&mut self, _c: &Connection) {}
}

struct ChanCallback {
    tx: mpsc::UnboundedSender<BrokerEvent>,
}

#[async_trait]
impl ChannelCallback for ChanCallback {
    async fn close(&mut self, _c: &Channel, close: CloseChannel) -> std::result::Result<(), amqprs::error::Error> {
        let _ = self.tx.send(BrokerEvent::ChannelClosed { code: close.reply_code(), text: close.reply_text().clone() });
        Ok(())
    }
    async fn cancel(&mut self, _c: &Channel, _cancel: Cancel) -> std::result::Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _c: &Channel, active: bool) -> std::result::Result<bool, amqprs::error::Error> {
        let _ = self.tx.send(if active { BrokerEvent::Unblocked } else { BrokerEvent::Blocked("channel.flow".into()) });
        Ok(true)
    }
    async fn publish_ack(&mut self, _c: &Channel, ack: Ack) {
        let _ = self.tx.send(BrokerEvent::Ack { tag: ack.delivery_tag(), multiple: ack.mutiple() });
    }
    async fn publish_nack(&mut self, _c: &Channel, nack: Nack) {
        let _ = self.tx.send(BrokerEvent::Nack { tag: nack.delivery_tag(), multiple: nack.multiple() });
    }
    async fn publish_return(&mut self, _c: &Channel, ret: Return, props: BasicProperties, _content: Vec<u8>) {
        let _ = self.tx.send(BrokerEvent::Return {
            message_id: props.message_id().cloned(),
            reply_code: ret.reply_code(),
            reply_text: ret.reply_text().clone(),
        });
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
