//! The validated configuration: what the rest of the relay reads.
//!
//! Loading is two phases (STYLE.md, "Config and CLI"):
//!
//! ```text
//!  TOML text ──raw.rs──▶ RawConfig ──validate.rs (+ env overrides from secret.rs)──▶ Config
//!            serde mirror,            defaults, ranges, identifiers, templates;
//!            unknown keys denied      every problem collected, none dropped
//! ```
//!
//! Every type here is already checked: durations are parsed, templates compiled,
//! identifiers within PostgreSQL's and AMQP's limits, URLs of the right scheme. What can
//! only be checked against the live systems (a template column the table lacks, a missing
//! exchange) is left to `check` and to start-up.
//!
//! Secrets: both URLs are [`SecretString`]s, so `{:?}` of a [`Config`] never shows a
//! password, and no [`ConfigError`] message ever quotes a URL.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::route::template::Template;

pub mod brokers;
mod raw;
mod rules;
pub mod secret;
mod validate;

pub use brokers::NodeOrder;
pub use secret::{current_url, redact_url, resolve_url_override, SecretString, UrlTarget};
pub use validate::{from_str, load, process_env};

/// The whole validated configuration of one relay process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file this was loaded from, as given; used to prefix messages about it.
    pub path: PathBuf,
    /// Where events come from (`[source]`).
    pub source: SourceConfig,
    /// Where events go (`[broker]`).
    pub broker: BrokerConfig,
    /// `[[routes]]` in file order; the first matching route wins. Never empty, names unique.
    pub routes: Vec<RouteConfig>,
    /// The HTTP endpoint for metrics and probes (`[http]`).
    pub http: HttpConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
}

/// How events are read from PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceMode {
    /// Logical replication with `pgoutput` from a slot and a publication (the default).
    Replication,
    /// Periodic `SELECT … ORDER BY order_by` under an advisory lock.
    Polling,
}

impl SourceMode {
    /// The config spelling, also used as a log field.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceMode::Replication => "replication",
            SourceMode::Polling => "polling",
        }
    }
}

/// `[source]`: the PostgreSQL side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    /// Replication (default) or polling.
    pub mode: SourceMode,
    /// A `postgres://`/`postgresql://` URL or a libpq keyword string (`host=… dbname=…`),
    /// from `source.url` or the `OUTBOX_RELAY_SOURCE_URL[_FILE]` override. Never logged
    /// except through [`SecretString::redacted`].
    pub url: SecretString,
    /// Logical replication slot name; matches `^[a-z0-9_]{1,63}$` (PostgreSQL's rule).
    pub slot: String,
    /// Publication name: a non-empty identifier of at most 63 bytes without NUL.
    pub publication: String,
    /// Create the slot and the publication at a first start when they are
    /// missing. Never recreates a slot the relay has streamed from: that is
    /// [`OnSlotLost`]'s business.
    pub create_slot: bool,
    /// What `run` does when the slot it streamed from is lost.
    pub on_slot_lost: OnSlotLost,
    /// PostgreSQL 17+: create the slot with `failover = true`, so it is
    /// synchronised to standbys.
    pub failover_slot: bool,
    /// Extra time subtracted from the recorded replay point when `recover`
    /// re-publishes from the outbox table: covers transactions that started
    /// earlier than the relay could see (another role's, without
    /// `pg_read_all_stats`) and clock steps. Zero allowed.
    pub recover_margin: Duration,
    /// Longest gap between two standby status updates; never zero.
    pub status_interval: Duration,
    /// Bound on connecting and authenticating to PostgreSQL; never zero.
    pub connect_timeout: Duration,
    /// No message from PostgreSQL this long on the replication connection
    /// (which asks for one every third of it) means the connection is dead;
    /// also the bound of TCP keepalive, `TCP_USER_TIMEOUT`, `statement_timeout`
    /// and the polling lock check ([`crate::source::postgres::Liveness`]).
    /// Never zero.
    pub receive_timeout: Duration,
    /// Polling only: pause between polls that found nothing; never zero.
    pub poll_interval: Duration,
    /// Polling only: most rows read by one poll; at least 1.
    pub batch_size: u32,
    /// Polling only: the `ORDER BY` list, checked to be comma-separated column names each
    /// optionally followed by `ASC` or `DESC`, so it is safe to put into SQL as is.
    pub order_by: String,
    /// Polling only: what happens to a row once the broker confirmed it.
    pub after_publish: AfterPublish,
    /// Polling only: the column set when `after_publish` is `Mark`. `Some` whenever
    /// `after_publish` is `Mark`; may be set (and is then ignored) with `Delete`.
    pub mark_column: Option<String>,
}

/// Polling only: what to do with a confirmed row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterPublish {
    /// `DELETE` the row (the default).
    Delete,
    /// Set [`SourceConfig::mark_column`] and keep the row.
    Mark,
}

impl AfterPublish {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AfterPublish::Delete => "delete",
            AfterPublish::Mark => "mark",
        }
    }
}

/// `[broker]`: the RabbitMQ side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// One or more `amqp://` or `amqps://` URLs, joined by commas (see
    /// [`brokers`]), from `broker.url` or the `OUTBOX_RELAY_BROKER_URL[_FILE]`
    /// override. [`brokers::urls`] takes them apart.
    pub url: SecretString,
    /// In which order the nodes of `url` are tried.
    pub node_order: NodeOrder,
    /// CA bundle for `amqps`; `None` means the system roots. Relative paths in the file
    /// are resolved against the config file's directory. Only allowed with `amqps://`.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate for `amqps`; set exactly when `tls_key_file` is set.
    pub tls_cert_file: Option<PathBuf>,
    /// Private key of `tls_cert_file`; set exactly when `tls_cert_file` is set.
    pub tls_key_file: Option<PathBuf>,
    /// Unconfirmed publishes allowed at once; `1..=65535`.
    pub max_in_flight: usize,
    /// Bytes of message bodies published and not yet confirmed (or waiting
    /// for a republish) allowed at once, beside `max_in_flight`; at least
    /// 1 KiB. A single larger message still goes, alone.
    pub max_in_flight_bytes: usize,
    /// How long one publish may wait for its confirm before the connection is treated as
    /// dead; never zero.
    pub confirm_timeout: Duration,
    /// Bound on connecting to the broker and opening a channel; never zero.
    pub connect_timeout: Duration,
    /// How long a graceful stop waits for outstanding confirms; never zero.
    pub shutdown_timeout: Duration,
    /// What to do with a message the broker returns as unroutable.
    pub on_unroutable: OnUnroutable,
    /// Exchange that receives returned messages when `on_unroutable` is `DeadLetter`;
    /// a valid AMQP exchange name, non-empty when `on_unroutable` is `DeadLetter`.
    pub dead_letter_exchange: String,
    /// AMQP heartbeat to negotiate: whole seconds up to 65535; zero disables heartbeats.
    pub heartbeat: Duration,
}

/// What `run` does when the slot it streamed from is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSlotLost {
    /// Stop with exit code 3 and wait for an operator (`recover`). The default.
    Stop,
    /// Run the recovery (new slot, re-publish from the table), then stream on.
    Recover,
}

/// What to do with a message the broker returned (no queue bound for its routing key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUnroutable {
    /// Stop the position at that message and retry until it becomes routable (default).
    Block,
    /// Republish it to [`BrokerConfig::dead_letter_exchange`].
    DeadLetter,
    /// Count it and move on.
    Drop,
}

impl OnUnroutable {
    /// The config spelling, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnroutable::Block => "block",
            OnUnroutable::DeadLetter => "dead_letter",
            OnUnroutable::Drop => "drop",
        }
    }
}

/// One `[[routes]]` entry: which events it takes and how it turns them into messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Label for metrics and logs; defaults to the table label or the prefix; unique
    /// among routes.
    pub name: String,
    /// Which table's rows or which logical decoding messages this route takes.
    pub matcher: RouteMatch,
    /// Exchange to publish to: a valid AMQP exchange name; `""` is the default exchange.
    pub exchange: String,
    /// Routing key; default `{aggregate_type}.{event_type}`.
    pub routing_key: Template,
    /// `message_id` property; default `{id}`; never the empty template.
    pub message_id: Template,
    /// `type` property; default `{event_type}`; `None` when configured as `""`.
    pub message_type: Option<Template>,
    /// Column that becomes the body: default `payload` for table routes; for message
    /// routes `None`, meaning the whole message content.
    pub payload: Option<String>,
    /// `content_type` property; default `application/json`; non-empty.
    pub content_type: String,
    /// Extra AMQP headers in file order: name (non-empty, at most 255 bytes, not starting
    /// with the relay's own `x-outbox-`) to value template.
    pub headers: Vec<(String, Template)>,
    /// A jsonb column merged into the headers. Default `Some("headers")` for table routes
    /// and `None` for message routes; `""` in the file means `None`.
    pub headers_column: Option<String>,
    /// True when `headers_column` was written in the file. When false the runtime drops a
    /// default `headers_column` the table lacks instead of failing.
    pub headers_column_explicit: bool,
    /// Whether messages carry the relay's own `x-outbox-table`, `x-outbox-lsn`
    /// and `x-outbox-commit-time` headers (default true). `x-outbox-replay`
    /// marks a replayed message either way.
    pub outbox_headers: bool,
    /// How the event is laid out: plain, or a CloudEvent (binary or
    /// structured mode of the CloudEvents AMQP binding).
    pub format: EventFormat,
    /// CloudEvents `source`: a template; by default the literal
    /// `/outbox-relay/{database}/{schema}.{table}` (or `.../message:{prefix}`),
    /// resolved by validation. Only used when `format` is a CloudEvents one.
    pub ce_source: Template,
    /// CloudEvents `subject`: an optional template (such as `{aggregate_id}`).
    pub ce_subject: Option<Template>,
    /// Filter: every `(column, value)` pair must equal the row's text value for the route
    /// to match. Empty matches every event. In file order.
    pub when: Vec<(String, String)>,
    /// What to do with a returned message of this route: the route's own
    /// `on_unroutable`, else `broker.on_unroutable` (resolved by validation).
    pub on_unroutable: OnUnroutable,
    /// The route's own dead-letter exchange, else `broker.dead_letter_exchange`
    /// (resolved by validation); non-empty when `on_unroutable` is `DeadLetter`.
    pub dead_letter_exchange: String,
}

/// `[[routes]] format`: how an event is laid out on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    /// The payload as the body, attributes as AMQP properties (the default).
    Plain,
    /// CloudEvents AMQP binding, binary mode: attributes as `cloudEvents:*`
    /// headers, the payload as the body.
    CloudEvents,
    /// CloudEvents AMQP binding, structured mode: an
    /// `application/cloudevents+json` body.
    CloudEventsStructured,
}

impl EventFormat {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFormat::Plain => "plain",
            EventFormat::CloudEvents => "cloudevents",
            EventFormat::CloudEventsStructured => "cloudevents-structured",
        }
    }
}

/// What a route takes events from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// Rows inserted into `schema.table` (names exact, no case folding).
    Table {
        /// Schema name; `public` when the config gave a bare table name.
        schema: String,
        /// Table name.
        table: String,
    },
    /// Logical decoding messages whose prefix equals this string exactly.
    MessagePrefix(String),
}

impl RouteMatch {
    /// `public.outbox` for a table, `message:PREFIX` for a prefix; used in logs and as
    /// the `x-outbox-table` header.
    pub fn label(&self) -> String {
        match self {
            RouteMatch::Table { schema, table } => format!("{schema}.{table}"),
            RouteMatch::MessagePrefix(prefix) => format!("message:{prefix}"),
        }
    }
}

/// `[http]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Address for `/metrics`, `/healthz` and `/readyz`; default `127.0.0.1:9187`.
    pub listen: SocketAddr,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// A level (`info`) or comma-separated `target=level` directives, each level one of
    /// `off`, `error`, `warn`, `info`, `debug`, `trace`. `RUST_LOG` overrides it.
    pub level: String,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a key path such as `routes[1].routing_key` or `broker.max_in_flight`, or
    /// `env OUTBOX_RELAY_BROKER_URL_FILE` for an environment override.
    pub key: String,
    /// What is wrong and what is expected instead. Never contains a secret.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Loading the configuration failed.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    Io {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every problem found, in file order where possible; never empty.
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems of an `Invalid` error; empty for `Io`.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Io { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

impl fmt::Display for ConfigError {
    /// One line per problem: `{path}: {key}: {message}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Io { path, source } => write!(f, "{}: cannot read the config file: {source}", path.display()),
            ConfigError::Invalid { path, problems } => {
                for (i, problem) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{}: {problem}", path.display())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_error_prints_one_line_per_problem() {
        let err = ConfigError::Invalid {
            path: PathBuf::from("/etc/relay.toml"),
            problems: vec![
                Problem::new("broker.max_in_flight", "must be between 1 and 65535"),
                Problem::new("routes", "at least one route is required"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "/etc/relay.toml: broker.max_in_flight: must be between 1 and 65535\n\
             /etc/relay.toml: routes: at least one route is required"
        );
        assert_eq!(err.problems().len(), 2);
    }

    #[test]
    fn io_error_names_the_file() {
        let err = ConfigError::Io {
            path: PathBuf::from("/nope.toml"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(err.to_string().starts_with("/nope.toml: cannot read the config file"));
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.problems().is_empty());
    }

    #[test]
    fn labels_and_names() {
        let table = RouteMatch::Table { schema: "public".into(), table: "outbox".into() };
        assert_eq!(table.label(), "public.outbox");
        assert_eq!(RouteMatch::MessagePrefix("wallet".into()).label(), "message:wallet");
        assert_eq!(OnUnroutable::DeadLetter.as_str(), "dead_letter");
        assert_eq!(OnUnroutable::Block.as_str(), "block");
        assert_eq!(OnUnroutable::Drop.as_str(), "drop");
        assert_eq!(SourceMode::Polling.as_str(), "polling");
        assert_eq!(AfterPublish::Mark.as_str(), "mark");
        assert_eq!(LogFormat::Json.as_str(), "json");
    }
}
