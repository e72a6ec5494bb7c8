//! Phase two: raw mirror plus environment overrides to a validated [`Config`].
//!
//! Each key is read by one small helper that records a [`Problem`] and returns a
//! fallback instead of stopping, so one pass reports every problem in the file. The
//! fallbacks are never seen: a config with any problem is returned as
//! [`ConfigError::Invalid`]. What a valid name or duration looks like is in `rules.rs`;
//! this file owns the keys, their defaults and the rules that tie keys together
//! (`mark` needs `mark_column`, TLS files need `amqps://`, route names are unique).
//!
//! Longer than our usual 600 lines on purpose: about 420 lines of code, then the unit
//! tests of every key, kept beside the rules they exercise (a key and its test change
//! together).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::brokers;
use super::raw::{self, RawBroker, RawConfig, RawRoute, RawSource};
use super::rules;
use super::secret::{configured_url, SecretString, UrlTarget};
use super::{
    AfterPublish, BrokerConfig, Config, ConfigError, EventFormat, HttpConfig, LogConfig, LogFormat, NodeOrder,
    OnSlotLost, OnUnroutable, Problem, RouteConfig, RouteMatch, SourceConfig, SourceMode,
};
use crate::route::template::Template;

/// Reads the process environment; the `env` argument of [`load`] in production.
/// A value that is not valid Unicode is converted lossily, so it fails validation
/// visibly instead of being ignored.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
}

/// Reads the config file at `path`, applies the `OUTBOX_RELAY_*_URL[_FILE]` overrides
/// found through `env`, and validates the result.
///
/// # Errors
///
/// [`ConfigError::Io`] when the file cannot be read; [`ConfigError::Invalid`] listing
/// every problem otherwise.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    from_str(&text, path, env)
}

/// Like [`load`], with the file's text already read. `path` names the file in messages,
/// and relative TLS file paths are resolved against its directory.
///
/// # Errors
///
/// [`ConfigError::Invalid`] listing every problem found.
pub fn from_str(text: &str, path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let parsed = raw::parse(text);
    let mut problems = parsed.problems;
    if let Some(raw) = parsed.raw {
        let base_dir = path.parent().unwrap_or_else(|| Path::new(""));
        let mut validator = Validator { problems: Vec::new(), base_dir };
        let config = validator.config(raw, path, env);
        // A key blanked after a serde error would also show up here as missing.
        let suppressed = &parsed.suppressed;
        let own = validator.problems.into_iter();
        problems.extend(own.filter(|p| !suppressed.iter().any(|s| is_under(&p.key, s))));
        if problems.is_empty() {
            return Ok(config);
        }
    }
    Err(ConfigError::Invalid { path: path.to_owned(), problems })
}

/// True when `key` is `prefix` or a key inside it.
fn is_under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// Accepted spellings of each enum key; the first is the default.
const MODES: [(&str, SourceMode); 2] = [("replication", SourceMode::Replication), ("polling", SourceMode::Polling)];
const AFTER_PUBLISH: [(&str, AfterPublish); 2] = [("delete", AfterPublish::Delete), ("mark", AfterPublish::Mark)];
const ON_UNROUTABLE: [(&str, OnUnroutable); 3] =
    [("block", OnUnroutable::Block), ("dead_letter", OnUnroutable::DeadLetter), ("drop", OnUnroutable::Drop)];
const ON_SLOT_LOST: [(&str, OnSlotLost); 2] = [("stop", OnSlotLost::Stop), ("recover", OnSlotLost::Recover)];
const FORMATS: [(&str, EventFormat); 3] = [
    ("plain", EventFormat::Plain),
    ("cloudevents", EventFormat::CloudEvents),
    ("cloudevents-structured", EventFormat::CloudEventsStructured),
];
const NODE_ORDERS: [(&str, bool); 2] = [("listed", false), ("shuffled", true)];
const LOG_FORMATS: [(&str, LogFormat); 2] = [("text", LogFormat::Text), ("json", LogFormat::Json)];

const MARK_COLUMN_REQUIRED: &str = "is required when source.after_publish = \"mark\": \
    name the column to set once a row is published, such as mark_column = \"published_at\"";
const TLS_WITHOUT_AMQPS: &str = "is set but no broker URL is amqps:// (no TLS): use amqps:// URLs, or remove the key";
const SHUFFLE_KEY_WITHOUT_SHUFFLED: &str = "only applies with node_order = \"shuffled\": \
    set node_order = \"shuffled\", or remove the key";
const NO_ROUTES: &str = "at least one route is required: add a [[routes]] table, such as \
    [[routes]] with table = \"public.outbox\" and exchange = \"outbox.events\"";
const TABLE_AND_PREFIX: &str = "cannot be set together with table: a route takes either a \
    table's rows or logical decoding messages; split it into two routes";
const EXCHANGE_REQUIRED: &str = "is required: name the exchange to publish to, such as \
    exchange = \"outbox.events\" (\"\" is the default exchange)";
const CE_KEY_WITHOUT_CLOUDEVENTS: &str = "only applies with format = \"cloudevents\" or \
    \"cloudevents-structured\": set format, or remove the key";
const CE_SOURCE_EMPTY: &str = "must not be empty: the CloudEvents source attribute is required \
    (a URI-reference such as \"/orders/{aggregate_type}\"); remove the key for the default \
    /outbox-relay/DATABASE/SCHEMA.TABLE";
const EMPTY_MESSAGE_ID: &str = "must not be empty: consumers deduplicate by message_id; \
    use a unique column such as \"{id}\"";

struct Validator<'a> {
    problems: Vec<Problem>,
    /// Directory of the config file, for relative paths in it.
    base_dir: &'a Path,
}

impl Validator<'_> {
    fn config(&mut self, raw: RawConfig, path: &Path, env: Env) -> Config {
        let source = self.source(raw.source.unwrap_or_default(), env);
        let broker = self.broker(raw.broker.unwrap_or_default(), env, &source.slot);
        // The database name, for the default CloudEvents `source` (a bad URL
        // is reported under source.url; the default then names no database).
        let database = crate::source::postgres::PgTarget::parse(source.url.expose()).map(|t| t.dbname());
        let routes = self.routes(raw.routes.unwrap_or_default(), &broker, &database.unwrap_or_default());
        let listen = raw.http.unwrap_or_default().listen;
        let listen = listen.unwrap_or_else(|| "127.0.0.1:9187".into());
        let listen = self.value("http.listen", rules::listen_addr(&listen), ([127, 0, 0, 1], 9187).into());
        let log = raw.log.unwrap_or_default();
        let format = self.choice("log.format", log.format, &LOG_FORMATS);
        let level = log.level.unwrap_or_else(|| "info".into());
        self.check("log.level", rules::log_level(&level));
        let (http, log) = (HttpConfig { listen }, LogConfig { format, level });
        let path = path.to_owned();
        Config { path, source, broker, routes, http, log }
    }

    fn source(&mut self, r: RawSource, env: Env) -> SourceConfig {
        let mode = self.choice("source.mode", r.mode, &MODES);
        let url = self.url(UrlTarget::Source, r.url, env);
        let slot = r.slot.unwrap_or_else(|| "outbox_relay".into());
        self.check("source.slot", rules::slot(&slot));
        let publication = r.publication.unwrap_or_else(|| "outbox_relay".into());
        self.check("source.publication", rules::identifier(&publication, "publication"));
        let order_by = r.order_by.unwrap_or_else(|| "created_at, id".into());
        self.check("source.order_by", rules::order_by(&order_by));
        let after_publish = self.choice("source.after_publish", r.after_publish, &AFTER_PUBLISH);
        let mark_column = r.mark_column.filter(|c| !c.is_empty());
        if let Some(column) = &mark_column {
            self.check("source.mark_column", rules::identifier(column, "column"));
        } else if after_publish == AfterPublish::Mark {
            self.problem("source.mark_column", MARK_COLUMN_REQUIRED);
        }
        let on_slot_lost = self.choice("source.on_slot_lost", r.on_slot_lost, &ON_SLOT_LOST);
        let recover_margin = match r.recover_margin {
            None => Duration::from_secs(300),
            Some(text) => self.value("source.recover_margin", rules::duration(&text), Duration::ZERO),
        };
        let status_interval = self.duration("source.status_interval", r.status_interval, 10_000);
        let connect_timeout = self.duration("source.connect_timeout", r.connect_timeout, 10_000);
        let receive_timeout = self.duration("source.receive_timeout", r.receive_timeout, 60_000);
        let poll_interval = self.duration("source.poll_interval", r.poll_interval, 200);
        let batch_size = self.int_in("source.batch_size", r.batch_size, 500_u32, u32::MAX.into());
        SourceConfig {
            mode,
            url,
            slot,
            publication,
            create_slot: r.create_slot.unwrap_or(true),
            on_slot_lost,
            failover_slot: r.failover_slot.unwrap_or(false),
            recover_margin,
            status_interval,
            connect_timeout,
            receive_timeout,
            poll_interval,
            batch_size,
            order_by,
            after_publish,
            mark_column,
        }
    }

    fn broker(&mut self, r: RawBroker, env: Env, slot: &str) -> BrokerConfig {
        let url = self.url(UrlTarget::Broker, r.url.map(|u| u.0), env);
        let shuffled = self.choice("broker.node_order", r.node_order, &NODE_ORDERS);
        let node_order = match (shuffled, r.shuffle_key) {
            (true, key) => NodeOrder::Shuffled(key.unwrap_or_else(|| slot.to_owned())),
            (false, None) => NodeOrder::Listed,
            (false, Some(_)) => {
                self.problem("broker.shuffle_key", SHUFFLE_KEY_WITHOUT_SHUFFLED);
                NodeOrder::Listed
            }
        };
        let tls_ca_file = self.path(r.tls_ca_file);
        let tls_cert_file = self.path(r.tls_cert_file);
        let tls_key_file = self.path(r.tls_key_file);
        let tls = [("ca", &tls_ca_file), ("cert", &tls_cert_file), ("key", &tls_key_file)];
        let first_tls = tls.into_iter().find(|(_, path)| path.is_some());
        let any_amqps = brokers::split(url.expose()).iter().any(|u| u.starts_with("amqps://"));
        if let Some((name, _)) = first_tls.filter(|_| !url.expose().is_empty() && !any_amqps) {
            self.problem(format!("broker.tls_{name}_file"), TLS_WITHOUT_AMQPS);
        }
        match (&tls_cert_file, &tls_key_file) {
            (Some(_), None) => self.problem("broker.tls_key_file", "is required with tls_cert_file: its private key"),
            (None, Some(_)) => self.problem("broker.tls_cert_file", "is required with tls_key_file: the certificate"),
            _ => {}
        }
        let on_unroutable = self.choice("broker.on_unroutable", r.on_unroutable, &ON_UNROUTABLE);
        let dlx = r.dead_letter_exchange.unwrap_or_else(|| "outbox.dead".into());
        self.check("broker.dead_letter_exchange", rules::exchange(&dlx));
        if dlx.is_empty() && on_unroutable == OnUnroutable::DeadLetter {
            let message = "must name an exchange when on_unroutable = \"dead_letter\"";
            self.problem("broker.dead_letter_exchange", message);
        }
        let heartbeat = match r.heartbeat {
            None => Duration::from_secs(10),
            Some(text) => self.value("broker.heartbeat", rules::heartbeat(&text), Duration::ZERO),
        };
        let max_in_flight = self.int_in("broker.max_in_flight", r.max_in_flight, 1000_usize, 65535);
        let max_in_flight_bytes = match r.max_in_flight_bytes {
            None => 16 << 20,
            Some(text) => self.value("broker.max_in_flight_bytes", rules::byte_size(&text), 16 << 20),
        };
        let confirm_timeout = self.duration("broker.confirm_timeout", r.confirm_timeout, 30_000);
        let connect_timeout = self.duration("broker.connect_timeout", r.connect_timeout, 10_000);
        let shutdown = self.duration("broker.shutdown_timeout", r.shutdown_timeout, 30_000);
        BrokerConfig {
            url,
            node_order,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            max_in_flight,
            max_in_flight_bytes,
            confirm_timeout,
            connect_timeout,
            shutdown_timeout: shutdown,
            on_unroutable,
            dead_letter_exchange: dlx,
            heartbeat,
        }
    }

    fn routes(&mut self, raw: Vec<RawRoute>, broker: &BrokerConfig, database: &str) -> Vec<RouteConfig> {
        if raw.is_empty() {
            self.problem("routes", NO_ROUTES);
        }
        let routes: Vec<_> = raw.into_iter().enumerate().map(|(i, r)| self.route(i, r, broker, database)).collect();
        for (i, route) in routes.iter().enumerate() {
            if let Some(j) = routes[..i].iter().position(|other| other.name == route.name) {
                let message = format!(
                    "\"{}\" is also the name of routes[{j}]; names label metrics and logs \
                     and must be unique: set name = \"…\" on one of them",
                    route.name.escape_debug()
                );
                self.problem(format!("routes[{i}].name"), message);
            }
        }
        routes
    }

    /// One route, with `on_unroutable` and the dead-letter exchange resolved
    /// against `[broker]` here, once, so nothing at run time picks between them.
    fn route(&mut self, i: usize, r: RawRoute, broker: &BrokerConfig, database: &str) -> RouteConfig {
        let key = |field: &str| format!("routes[{i}].{field}");
        let matcher = match (r.table, r.message_prefix) {
            (Some(table), Some(_)) => {
                self.problem(key("message_prefix"), TABLE_AND_PREFIX);
                self.table(&key("table"), &table)
            }
            (None, Some(prefix)) => {
                if prefix.is_empty() || prefix.contains('\0') {
                    let message = "expected the prefix given to pg_logical_emit_message: \
                        not empty, no NUL";
                    self.problem(key("message_prefix"), message);
                }
                RouteMatch::MessagePrefix(prefix)
            }
            (table, None) => self.table(&key("table"), table.as_deref().unwrap_or("public.outbox")),
        };
        let is_table = matches!(matcher, RouteMatch::Table { .. });
        let name = r.name.unwrap_or_else(|| match &matcher {
            RouteMatch::Table { .. } => matcher.label(),
            RouteMatch::MessagePrefix(prefix) => prefix.clone(),
        });
        if name.is_empty() {
            self.problem(key("name"), "must not be empty; it labels the route's metrics and logs");
        }
        let exchange = r.exchange.unwrap_or_else(|| {
            self.problem(key("exchange"), EXCHANGE_REQUIRED);
            String::new()
        });
        self.check(&key("exchange"), rules::exchange(&exchange));
        let routing_key = r.routing_key.as_deref().unwrap_or("{aggregate_type}.{event_type}");
        let routing_key = self.template(&key("routing_key"), routing_key);
        let message_id = r.message_id.as_deref().unwrap_or("{id}");
        let message_id = self.template(&key("message_id"), message_id);
        if message_id.source().is_empty() {
            self.problem(key("message_id"), EMPTY_MESSAGE_ID);
        }
        let message_type = match r.message_type.as_deref() {
            Some("") => None,
            t => Some(self.template(&key("type"), t.unwrap_or("{event_type}"))),
        };
        let payload = match r.payload {
            None => is_table.then(|| "payload".to_owned()),
            Some(p) if p.is_empty() && !is_table => None,
            Some(p) => {
                self.check(&key("payload"), rules::identifier(&p, "body column"));
                Some(p)
            }
        };
        let content_type = r.content_type.unwrap_or_else(|| "application/json".into());
        if content_type.is_empty() || content_type.len() > 255 {
            let message = "expected a MIME type of 1 to 255 bytes, such as \"application/json\"";
            self.problem(key("content_type"), message);
        }
        let headers = r.headers.map(|t| t.0).unwrap_or_default().into_iter();
        let headers = headers.map(|(name, value)| {
            let key = format!("routes[{i}].headers.{}", rules::key_part(&name));
            self.check(&key, rules::header_name(&name));
            let template = self.template(&key, &value);
            (name, template)
        });
        let headers = headers.collect();
        let (headers_column, headers_column_explicit) = match r.headers_column {
            None => (is_table.then(|| "headers".to_owned()), false),
            Some(c) if c.is_empty() => (None, true),
            Some(c) => {
                self.check(&key("headers_column"), rules::identifier(&c, "column"));
                (Some(c), true)
            }
        };
        let when = r.when.map(|t| t.0).unwrap_or_default();
        for (column, _) in &when {
            let key = format!("routes[{i}].when.{}", rules::key_part(column));
            self.check(&key, rules::identifier(column, "column"));
        }
        let own_policy = r.on_unroutable.map(|v| self.choice(&key("on_unroutable"), Some(v), &ON_UNROUTABLE));
        let on_unroutable = own_policy.unwrap_or(broker.on_unroutable);
        let own_dlx = r.dead_letter_exchange.is_some();
        let dead_letter_exchange = match r.dead_letter_exchange {
            Some(dlx) => {
                self.check(&key("dead_letter_exchange"), rules::exchange(&dlx));
                dlx
            }
            None => broker.dead_letter_exchange.clone(),
        };
        // An empty inherited exchange under the broker's own dead_letter is
        // reported once, at broker.dead_letter_exchange.
        if dead_letter_exchange.is_empty()
            && on_unroutable == OnUnroutable::DeadLetter
            && (own_dlx || own_policy.is_some())
        {
            self.problem(key("dead_letter_exchange"), "must name an exchange when on_unroutable = \"dead_letter\"");
        }
        let format = self.choice(&key("format"), r.format, &FORMATS);
        let cloudevents = format != EventFormat::Plain;
        for (k, set) in [("ce_source", r.ce_source.is_some()), ("ce_subject", r.ce_subject.is_some())] {
            if set && !cloudevents {
                self.problem(key(k), CE_KEY_WITHOUT_CLOUDEVENTS);
            }
        }
        let ce_source = match r.ce_source {
            Some(s) => {
                let t = self.template(&key("ce_source"), &s);
                if s.is_empty() {
                    self.problem(key("ce_source"), CE_SOURCE_EMPTY);
                }
                t
            }
            None => Template::literal(&format!("/outbox-relay/{database}/{}", matcher.label())),
        };
        let ce_subject = match r.ce_subject.as_deref() {
            None | Some("") => None,
            Some(s) => Some(self.template(&key("ce_subject"), s)),
        };
        if cloudevents && message_type.is_none() {
            let message = format!(
                "must not be empty with format = \"{}\": it is the CloudEvents type attribute, which is required",
                format.as_str()
            );
            self.problem(key("type"), message);
        }
        RouteConfig {
            format,
            ce_source,
            ce_subject,
            on_unroutable,
            dead_letter_exchange,
            name,
            matcher,
            exchange,
            routing_key,
            message_id,
            message_type,
            payload,
            content_type,
            headers,
            headers_column,
            headers_column_explicit,
            outbox_headers: r.outbox_headers.unwrap_or(true),
            when,
        }
    }

    fn table(&mut self, key: &str, text: &str) -> RouteMatch {
        let fallback = ("public".to_owned(), "outbox".to_owned());
        let (schema, table) = self.value(key, rules::qualified_table(text), fallback);
        RouteMatch::Table { schema, table }
    }

    /// Parses a template and checks that its placeholders can be column names.
    fn template(&mut self, key: &str, source: &str) -> Template {
        let fallback = Template::literal("");
        let escaped = source.escape_debug();
        let parsed = Template::parse(source).map_err(|e| format!("invalid template \"{escaped}\": {e}"));
        let template = self.value(key, parsed, fallback);
        for column in template.columns() {
            if let Err(why) = rules::identifier_defect(column) {
                let message = format!("placeholder {{{column}}} is not a valid column name: {why}");
                self.problem(key, message);
            }
        }
        template
    }

    fn url(&mut self, target: UrlTarget, in_file: Option<SecretString>, env: Env) -> SecretString {
        configured_url(target, in_file, env).unwrap_or_else(|problem| {
            self.problems.push(problem);
            SecretString::default()
        })
    }

    /// A config path: `""` means unset; relative paths are taken from the config's directory.
    fn path(&self, value: Option<String>) -> Option<PathBuf> {
        value.filter(|v| !v.is_empty()).map(|v| self.base_dir.join(v))
    }

    /// A duration that must not be zero; the default is in milliseconds.
    fn duration(&mut self, key: &str, value: Option<String>, default_ms: u64) -> Duration {
        let default = Duration::from_millis(default_ms);
        match value {
            None => default,
            Some(text) => self.value(key, rules::nonzero_duration(&text), default),
        }
    }

    /// An integer in `1..=max` (`max` must fit in `T`).
    fn int_in<T: TryFrom<i64>>(&mut self, key: &str, value: Option<i64>, default: T, max: i64) -> T {
        let Some(v) = value else { return default };
        match T::try_from(v) {
            Ok(n) if (1..=max).contains(&v) => n,
            _ => {
                self.problem(key, format!("must be between 1 and {max}, got {v}"));
                default
            }
        }
    }

    /// One of `choices` by name; the first is the default.
    fn choice<T: Copy>(&mut self, key: &str, value: Option<String>, choices: &[(&str, T)]) -> T {
        let Some(text) = value else {
            return choices[0].1;
        };
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == text) {
            return *v;
        }
        let names: Vec<String> = choices.iter().map(|(name, _)| format!("\"{name}\"")).collect();
        let (names, text) = (names.join(", "), text.escape_debug());
        self.problem(key, format!("expected one of {names}, got \"{text}\""));
        choices[0].1
    }

    /// The value of `result`, or `fallback` after recording its error under `key`.
    fn value<T>(&mut self, key: &str, result: Result<T, String>, fallback: T) -> T {
        result.unwrap_or_else(|message| {
            self.problem(key, message);
            fallback
        })
    }

    fn check(&mut self, key: &str, rule: Result<(), String>) {
        self.value(key, rule, ());
    }

    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const FILE: &str = "/etc/outbox-relay/relay.toml";
    const MINIMAL: &str = "[source]\nurl = \"postgres://relay@db/app\"\n\
        [broker]\nurl = \"amqp://relay@rabbit/%2f\"\n\
        [[routes]]\nexchange = \"wallet.events\"\n";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[track_caller]
    fn ok(text: &str) -> Config {
        from_str(text, Path::new(FILE), &no_env).unwrap_or_else(|e| panic!("{e}"))
    }

    #[track_caller]
    fn problems_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
        match from_str(text, Path::new(FILE), env) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(err) => err.problems().to_vec(),
        }
    }

    #[track_caller]
    fn problems(text: &str) -> Vec<Problem> {
        problems_with(text, &no_env)
    }

    #[track_caller]
    fn keys(text: &str) -> Vec<String> {
        problems(text).into_iter().map(|p| p.key).collect()
    }

    /// MINIMAL with `lines` added at the end of `[section]` (or a new route table).
    fn with(section: &str, lines: &str) -> String {
        let marker = format!("[{section}]\n");
        match MINIMAL.find(&marker) {
            Some(at) => {
                let at = at + marker.len();
                format!("{}{lines}\n{}", &MINIMAL[..at], &MINIMAL[at..])
            }
            None => format!("{MINIMAL}[{section}]\n{lines}\n"),
        }
    }

    fn route(extra: &str) -> String {
        format!("{MINIMAL}{extra}\n")
    }

    #[test]
    fn source_defaults() {
        let s = ok(MINIMAL).source;
        assert_eq!(s.mode, SourceMode::Replication);
        assert_eq!(s.url.expose(), "postgres://relay@db/app");
        assert_eq!(s.slot, "outbox_relay");
        assert_eq!(s.publication, "outbox_relay");
        assert!(s.create_slot);
        assert_eq!(s.status_interval, secs(10));
        assert_eq!(s.connect_timeout, secs(10));
        assert_eq!(s.receive_timeout, secs(60));
        assert_eq!(s.poll_interval, Duration::from_millis(200));
        assert_eq!(s.batch_size, 500);
        assert_eq!(s.order_by, "created_at, id");
        assert_eq!(s.after_publish, AfterPublish::Delete);
        assert_eq!(s.mark_column, None);
    }

    #[test]
    fn broker_defaults() {
        let b = ok(MINIMAL).broker;
        assert_eq!(b.url.expose(), "amqp://relay@rabbit/%2f");
        assert_eq!((b.tls_ca_file, b.tls_cert_file, b.tls_key_file), (None, None, None));
        assert_eq!(b.max_in_flight, 1000);
        assert_eq!(b.max_in_flight_bytes, 16 << 20);
        let b = ok(&with("broker", "max_in_flight_bytes = \"1MiB\"")).broker;
        assert_eq!(b.max_in_flight_bytes, 1 << 20);
        assert_eq!(keys(&with("broker", "max_in_flight_bytes = \"lots\"")), ["broker.max_in_flight_bytes"]);
        assert_eq!(b.confirm_timeout, secs(30));
        assert_eq!(b.connect_timeout, secs(10));
        assert_eq!(b.shutdown_timeout, secs(30));
        assert_eq!(b.heartbeat, secs(10));
        assert_eq!(b.on_unroutable, OnUnroutable::Block);
        assert_eq!(b.dead_letter_exchange, "outbox.dead");
    }

    #[test]
    fn table_route_defaults() {
        let config = ok(MINIMAL);
        let r = &config.routes[0];
        assert_eq!(r.name, "public.outbox");
        assert_eq!(r.matcher, RouteMatch::Table { schema: "public".into(), table: "outbox".into() });
        assert_eq!(r.exchange, "wallet.events");
        assert_eq!(r.routing_key.source(), "{aggregate_type}.{event_type}");
        assert_eq!(r.message_id.source(), "{id}");
        assert_eq!(r.message_type.as_ref().map(Template::source), Some("{event_type}"));
        assert_eq!(r.payload.as_deref(), Some("payload"));
        assert_eq!(r.content_type, "application/json");
        assert!(r.headers.is_empty());
        assert_eq!(r.headers_column.as_deref(), Some("headers"));
        assert!(!r.headers_column_explicit);
        assert!(r.when.is_empty());
    }

    #[test]
    fn message_route_defaults() {
        let config = ok(&route("[[routes]]\nmessage_prefix = \"wallet\"\nexchange = \"w\""));
        let r = &config.routes[1];
        assert_eq!(r.matcher, RouteMatch::MessagePrefix("wallet".into()));
        assert_eq!(r.name, "wallet");
        assert_eq!(r.payload, None);
        assert_eq!(r.headers_column, None);
        assert!(!r.headers_column_explicit);
        assert_eq!(r.routing_key.source(), "{aggregate_type}.{event_type}");
    }

    #[test]
    fn http_and_log_defaults() {
        let config = ok(MINIMAL);
        assert_eq!(config.http.listen, "127.0.0.1:9187".parse().unwrap());
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.path, Path::new(FILE));
    }

    #[test]
    fn explicit_values_are_used() {
        let config = ok(r#"
            [source]
            mode = "polling"
            url = "host=db dbname=app"
            slot = "s_1"
            publication = "Pub Lication"
            create_slot = false
            status_interval = "2s"
            connect_timeout = "3s"
            receive_timeout = "4s"
            poll_interval = "1s 500ms"
            batch_size = 7
            order_by = "seq DESC, \"Id\" asc"
            after_publish = "mark"
            mark_column = "published_at"
            [broker]
            url = "amqps://relay@rabbit/vh"
            tls_ca_file = "/etc/ca.pem"
            tls_cert_file = "certs/client.pem"
            tls_key_file = "certs/client.key"
            max_in_flight = 65535
            confirm_timeout = "5s"
            connect_timeout = "6s"
            shutdown_timeout = "7s"
            on_unroutable = "dead_letter"
            dead_letter_exchange = "dlx"
            heartbeat = "0s"
            [[routes]]
            name = "wallet-events"
            table = "billing.events"
            exchange = ""
            routing_key = "{kind}"
            message_id = "{event_id}"
            type = ""
            payload = "body"
            content_type = "text/plain"
            headers = { z = "{a}", a = "fixed" }
            headers_column = ""
            when = { kind = "TransactionAdded", region = "eu" }
            [http]
            listen = "[::]:0"
            [log]
            format = "json"
            level = "info,outbox_relay=debug"
        "#);
        let s = &config.source;
        assert_eq!(s.mode, SourceMode::Polling);
        assert_eq!((s.slot.as_str(), s.publication.as_str()), ("s_1", "Pub Lication"));
        assert!(!s.create_slot);
        assert_eq!((s.status_interval, s.connect_timeout, s.receive_timeout), (secs(2), secs(3), secs(4)));
        assert_eq!(s.poll_interval, Duration::from_millis(1500));
        assert_eq!(s.batch_size, 7);
        assert_eq!(s.after_publish, AfterPublish::Mark);
        assert_eq!(s.mark_column.as_deref(), Some("published_at"));
        let b = &config.broker;
        assert_eq!(b.tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(
            b.tls_cert_file.as_deref(),
            Some(Path::new("/etc/outbox-relay/certs/client.pem")),
            "relative to the config file"
        );
        assert_eq!(b.max_in_flight, 65535);
        assert_eq!((b.confirm_timeout, b.connect_timeout, b.shutdown_timeout), (secs(5), secs(6), secs(7)));
        assert_eq!(b.on_unroutable, OnUnroutable::DeadLetter);
        assert_eq!(b.dead_letter_exchange, "dlx");
        assert_eq!(b.heartbeat, Duration::ZERO);
        let r = &config.routes[0];
        assert_eq!(r.name, "wallet-events");
        assert_eq!(r.matcher, RouteMatch::Table { schema: "billing".into(), table: "events".into() });
        assert_eq!(r.exchange, "");
        assert_eq!(r.routing_key.columns().collect::<Vec<_>>(), ["kind"]);
        assert_eq!(r.message_type, None);
        assert_eq!(r.payload.as_deref(), Some("body"));
        assert_eq!(r.content_type, "text/plain");
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["z", "a"]);
        assert_eq!((r.headers_column.as_deref(), r.headers_column_explicit), (None, true));
        assert_eq!(r.when, [("kind".into(), "TransactionAdded".into()), ("region".into(), "eu".into())]);
        assert_eq!(config.http.listen, "[::]:0".parse().unwrap());
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn spec_example_is_valid() {
        let config = ok(r#"
[source]
mode = "replication"
url = "postgres://relay@127.0.0.1:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/pg-ca.pem"
slot = "outbox_relay"
publication = "outbox_relay"
create_slot = true
status_interval = "10s"
poll_interval = "200ms"
batch_size = 500
order_by = "created_at, id"
after_publish = "delete"

[broker]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
tls_ca_file = ""
tls_cert_file = ""
tls_key_file = ""
max_in_flight = 1000
confirm_timeout = "30s"
on_unroutable = "block"
dead_letter_exchange = "outbox.dead"

[[routes]]
name = "wallet-events"
table = "public.outbox"
exchange = "wallet.events"
routing_key = "{aggregate_type}.{event_type}"
message_id = "{id}"
type = "{event_type}"
payload = "payload"
content_type = "application/json"
headers = { aggregate_id = "{aggregate_id}" }
headers_column = "headers"

[http]
listen = "127.0.0.1:9187"

[log]
format = "text"
level = "info"
"#);
        assert_eq!(config.routes[0].name, "wallet-events");
        assert_eq!(config.broker.tls_ca_file, None, "empty means the system roots");
        assert!(config.routes[0].headers_column_explicit);
    }

    #[test]
    fn bad_durations() {
        for key in ["status_interval", "connect_timeout", "receive_timeout", "poll_interval"] {
            let got = problems(&with("source", &format!("{key} = \"ten seconds\"")));
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].key, format!("source.{key}"));
            assert!(got[0].message.contains("\"250ms\""), "{}", got[0].message);
            assert!(got[0].message.contains("\"ten seconds\""), "{}", got[0].message);
        }
        for key in ["confirm_timeout", "connect_timeout", "shutdown_timeout", "heartbeat"] {
            assert_eq!(keys(&with("broker", &format!("{key} = \"5 parsecs\""))), [format!("broker.{key}")]);
        }
    }

    #[test]
    fn duration_must_be_a_string() {
        let got = problems(&with("source", "status_interval = 10"));
        assert_eq!(got[0].key, "source.status_interval");
        assert!(got[0].message.contains("expected a string"), "{}", got[0].message);
    }

    #[test]
    fn zero_durations_are_rejected_where_meaningless() {
        for key in ["status_interval", "connect_timeout", "receive_timeout", "poll_interval"] {
            let got = problems(&with("source", &format!("{key} = \"0s\"")));
            assert!(got[0].message.contains("longer than zero"), "{got:?}");
        }
        for key in ["confirm_timeout", "connect_timeout", "shutdown_timeout"] {
            assert_eq!(keys(&with("broker", &format!("{key} = \"0ms\""))), [format!("broker.{key}")]);
        }
    }

    #[test]
    fn heartbeat_is_whole_seconds() {
        assert_eq!(ok(&with("broker", "heartbeat = \"0s\"")).broker.heartbeat, Duration::ZERO);
        assert_eq!(keys(&with("broker", "heartbeat = \"1500ms\"")), ["broker.heartbeat"]);
        assert_eq!(keys(&with("broker", "heartbeat = \"2days\"")), ["broker.heartbeat"]);
    }

    #[test]
    fn unknown_key_in_each_section() {
        for (section, key) in
            [("source", "slots"), ("broker", "prefetch"), ("routes", "queue"), ("http", "port"), ("log", "colour")]
        {
            let text = if section == "routes" {
                route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\n{key} = 1"))
            } else {
                with(section, &format!("{key} = 1"))
            };
            let got = problems(&text);
            assert_eq!(got.len(), 1, "{got:?}");
            let expected = if section == "routes" { format!("routes[1].{key}") } else { format!("{section}.{key}") };
            assert_eq!(got[0].key, expected);
            assert!(got[0].message.starts_with(&format!("unknown key `{key}`, expected")), "{}", got[0].message);
            assert!(got[0].message.contains("(line "), "{}", got[0].message);
        }
        assert_eq!(keys(&format!("{MINIMAL}[metrics]\nport = 1\n")), ["metrics"]);
    }

    #[test]
    fn routes_are_required() {
        let text = "[source]\nurl = \"postgres://db/app\"\n[broker]\nurl = \"amqp://rabbit\"\n";
        let got = problems(text);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, "routes");
        assert!(got[0].message.contains("[[routes]]"));
        assert_eq!(keys(&format!("routes = []\n{text}")), ["routes"]);
    }

    #[test]
    fn table_and_message_prefix_together() {
        let got = problems(&route("[[routes]]\ntable = \"a\"\nmessage_prefix = \"b\"\nexchange = \"x\"\nname = \"n\""));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "routes[1].message_prefix");
        assert!(got[0].message.contains("table"));
    }

    #[test]
    fn table_names() {
        let m = |table: &str| {
            ok(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\ntable = '{table}'"))).routes[1]
                .matcher
                .clone()
        };
        let t = |schema: &str, table: &str| RouteMatch::Table { schema: schema.into(), table: table.into() };
        assert_eq!(m("events"), t("public", "events"));
        assert_eq!(m("app.Events"), t("app", "Events"));
        assert_eq!(m("\"my.schema\".\"a\"\"b\""), t("my.schema", "a\"b"));
        for bad in ["a.b.c", "", ".x", "x.", "\"open", &"t".repeat(64), "a\0"] {
            let text =
                route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\ntable = \"{}\"", bad.escape_default()));
            assert_eq!(keys(&text), ["routes[1].table"], "{bad:?}");
        }
        assert!(
            ok(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\ntable = \"{}\"", "t".repeat(63))))
                .routes
                .len()
                == 2
        );
    }

    #[test]
    fn message_prefix_must_not_be_empty() {
        assert_eq!(
            keys(&route("[[routes]]\nmessage_prefix = \"\"\nexchange = \"x\"\nname = \"m\"")),
            ["routes[1].message_prefix"]
        );
    }

    #[test]
    fn mark_needs_mark_column() {
        let got = problems(&with("source", "after_publish = \"mark\""));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, "source.mark_column");
        assert!(got[0].message.contains("after_publish = \"mark\""));
        assert_eq!(keys(&with("source", "after_publish = \"mark\"\nmark_column = \"\"")), ["source.mark_column"]);
        assert_eq!(keys(&with("source", "after_publish = \"archive\"")), ["source.after_publish"]);
    }

    #[test]
    fn max_in_flight_range() {
        for bad in [0, -1, 65536] {
            let got = problems(&with("broker", &format!("max_in_flight = {bad}")));
            assert_eq!(got[0].key, "broker.max_in_flight");
            assert!(got[0].message.contains("between 1 and 65535"), "{}", got[0].message);
        }
        assert_eq!(ok(&with("broker", "max_in_flight = 1")).broker.max_in_flight, 1);
    }

    #[test]
    fn batch_size_must_be_positive() {
        assert_eq!(keys(&with("source", "batch_size = 0")), ["source.batch_size"]);
        assert_eq!(keys(&with("source", "batch_size = 4294967296")), ["source.batch_size"]);
    }

    #[test]
    fn slot_names() {
        for bad in ["Outbox", "out-box", "", "a b", &"s".repeat(64)] {
            let got = problems(&with("source", &format!("slot = \"{bad}\"")));
            assert_eq!(got[0].key, "source.slot", "{bad}");
            assert!(got[0].message.contains("lowercase letters, digits or underscores"));
        }
        assert_eq!(ok(&with("source", &format!("slot = \"{}\"", "s".repeat(63)))).source.slot.len(), 63);
    }

    #[test]
    fn publication_and_column_names() {
        assert_eq!(keys(&with("source", "publication = \"\"")), ["source.publication"]);
        let long = "p".repeat(64);
        let got = problems(&with("source", &format!("publication = \"{long}\"")));
        assert!(got[0].message.contains("at most 63"), "{}", got[0].message);
        assert_eq!(keys(&with("source", "mark_column = \"a\\u0000b\"")), ["source.mark_column"]);
        assert_eq!(
            keys(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\npayload = \"{long}\""))),
            ["routes[1].payload"]
        );
        assert_eq!(
            keys(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\nheaders_column = \"{long}\""))),
            ["routes[1].headers_column"]
        );
        assert_eq!(
            keys(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\nwhen = {{ {long} = \"v\" }}"))),
            [format!("routes[1].when.{long}")]
        );
    }

    #[test]
    fn exchange_names() {
        assert_eq!(keys(&route("[[routes]]\nname = \"n\"\nexchange = \"bad name!\"")), ["routes[1].exchange"]);
        assert_eq!(
            keys(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"{}\"", "e".repeat(256)))),
            ["routes[1].exchange"]
        );
        assert_eq!(ok(&route("[[routes]]\nname = \"n\"\nexchange = \"a-b_c.d:e\"")).routes[1].exchange, "a-b_c.d:e");
        assert_eq!(keys(&route("[[routes]]\nname = \"n\"")), ["routes[1].exchange"]);
        assert_eq!(keys(&with("broker", "dead_letter_exchange = \"dead letters\"")), ["broker.dead_letter_exchange"]);
        assert_eq!(
            keys(&with("broker", "on_unroutable = \"dead_letter\"\ndead_letter_exchange = \"\"")),
            ["broker.dead_letter_exchange"]
        );
        assert_eq!(ok(&with("broker", "dead_letter_exchange = \"\"")).broker.dead_letter_exchange, "");
        assert_eq!(keys(&with("broker", "on_unroutable = \"ignore\"")), ["broker.on_unroutable"]);
    }

    #[test]
    fn route_names_are_unique() {
        let got = problems(&route("[[routes]]\nexchange = \"other\"\nwhen = { event_type = \"X\" }"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, "routes[1].name");
        assert!(got[0].message.contains("\"public.outbox\" is also the name of routes[0]"), "{}", got[0].message);
        assert_eq!(keys(&route("[[routes]]\nexchange = \"x\"\nname = \"\"")), ["routes[1].name"]);
    }

    #[test]
    fn template_problems() {
        let got = problems(&route(
            "[[routes]]\nname = \"n\"\nexchange = \"x\"\nrouting_key = \"{aggregate_type.{event_type}\"",
        ));
        assert_eq!(got[0].key, "routes[1].routing_key");
        assert!(got[0].message.contains("byte 16"), "{}", got[0].message);
        let long = format!("{{{}}}", "c".repeat(64));
        assert_eq!(
            keys(&route(&format!("[[routes]]\nname = \"n\"\nexchange = \"x\"\nmessage_id = \"{long}\""))),
            ["routes[1].message_id"]
        );
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nmessage_id = \"\"")),
            ["routes[1].message_id"]
        );
        assert_eq!(keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\ntype = \"}\"")), ["routes[1].type"]);
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nheaders = { a = \"{}\" }")),
            ["routes[1].headers.a"]
        );
    }

    #[test]
    fn payload_and_headers_column() {
        assert_eq!(keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\npayload = \"\"")), ["routes[1].payload"]);
        let config =
            ok(&route("[[routes]]\nmessage_prefix = \"m\"\nexchange = \"x\"\npayload = \"\"\nheaders_column = \"h\""));
        assert_eq!(config.routes[1].payload, None);
        assert_eq!(
            (config.routes[1].headers_column.as_deref(), config.routes[1].headers_column_explicit),
            (Some("h"), true)
        );
        let config = ok(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nheaders_column = \"headers\""));
        assert!(config.routes[1].headers_column_explicit);
        assert!(config.routes[1].outbox_headers, "on by default");
        let config = ok(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\noutbox_headers = false"));
        assert!(!config.routes[1].outbox_headers);
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\noutbox_headers = \"no\"")),
            ["routes[1].outbox_headers"]
        );
    }

    #[test]
    fn cloudevents_format_and_its_keys() {
        let base = "[[routes]]\nname = \"n\"\nexchange = \"x\"\n";
        let config = ok(&route(base));
        assert_eq!(config.routes[1].format, EventFormat::Plain, "plain by default");
        let config = ok(&route(&format!("{base}format = \"cloudevents\"\nce_subject = \"{{aggregate_id}}\"")));
        assert_eq!(config.routes[1].format, EventFormat::CloudEvents);
        assert_eq!(config.routes[1].ce_source.source(), "/outbox-relay/app/public.outbox", "names the database");
        assert_eq!(config.routes[1].ce_subject.as_ref().map(Template::source), Some("{aggregate_id}"));
        let config = ok(&route(&format!("{base}format = \"cloudevents-structured\"\nce_source = \"/o/{{id}}\"")));
        assert_eq!(config.routes[1].format, EventFormat::CloudEventsStructured);
        assert_eq!(config.routes[1].ce_source.source(), "/o/{id}");
        assert_eq!(keys(&route(&format!("{base}format = \"json\""))), ["routes[1].format"]);
        assert_eq!(
            keys(&route(&format!("{base}ce_source = \"/s\"\nce_subject = \"{{id}}\""))),
            ["routes[1].ce_source", "routes[1].ce_subject"],
            "only with a CloudEvents format"
        );
        assert_eq!(keys(&route(&format!("{base}format = \"cloudevents\"\nce_source = \"\""))), ["routes[1].ce_source"]);
        assert_eq!(
            keys(&route(&format!("{base}format = \"cloudevents\"\nce_subject = \"{{\""))),
            ["routes[1].ce_subject"]
        );
        let got = problems(&route(&format!("{base}format = \"cloudevents\"\ntype = \"\"")));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "routes[1].type");
        assert!(got[0].message.contains("CloudEvents type"), "{}", got[0].message);
    }

    #[test]
    fn header_names() {
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nheaders = { X-Outbox-Lsn = \"1\" }")),
            ["routes[1].headers.X-Outbox-Lsn"]
        );
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nheaders = { \"\" = \"1\" }")),
            ["routes[1].headers.\"\""]
        );
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nheaders = { a = 1 }")),
            ["routes[1].headers.a"]
        );
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\nwhen = { a = true }")),
            ["routes[1].when.a"]
        );
    }

    #[test]
    fn content_type_must_not_be_empty() {
        assert_eq!(
            keys(&route("[[routes]]\nname = \"n\"\nexchange = \"x\"\ncontent_type = \"\"")),
            ["routes[1].content_type"]
        );
    }

    #[test]
    fn order_by_forms() {
        for good in ["id", "created_at, id", "seq desc", "\"Seq\" ASC, id", "a,b"] {
            assert_eq!(ok(&with("source", &format!("order_by = '{good}'"))).source.order_by, good);
        }
        for bad in ["", "id; drop table outbox", "id desc nulls", "1id", "a,,b", "id sideways"] {
            assert_eq!(keys(&with("source", &format!("order_by = '{bad}'"))), ["source.order_by"], "{bad}");
        }
    }

    #[test]
    fn http_and_log_values() {
        let got = problems(&with("http", "listen = \"localhost:9187\""));
        assert_eq!(got[0].key, "http.listen");
        assert!(got[0].message.contains("127.0.0.1:9187"));
        assert_eq!(keys(&with("log", "format = \"xml\"")), ["log.format"]);
        for bad in ["", "verbose", "info,=debug", "app=loud"] {
            assert_eq!(keys(&with("log", &format!("level = \"{bad}\""))), ["log.level"], "{bad}");
        }
        for good in ["WARN", "off", "info,outbox_relay=debug,tokio_postgres=warn"] {
            assert_eq!(ok(&with("log", &format!("level = \"{good}\""))).log.level, good);
        }
    }

    #[test]
    fn source_mode_choice() {
        let got = problems(&with("source", "mode = \"logical\""));
        assert_eq!(got[0].key, "source.mode");
        assert_eq!(got[0].message, "expected one of \"replication\", \"polling\", got \"logical\"");
    }

    #[test]
    fn urls_are_required_and_checked() {
        let text = "[[routes]]\nexchange = \"x\"\n";
        let got = problems(text);
        assert_eq!(got.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), ["source.url", "broker.url"]);
        assert!(got[0].message.contains("OUTBOX_RELAY_SOURCE_URL_FILE"), "{}", got[0].message);
        let got = problems(
            &MINIMAL
                .replace("postgres://relay@db/app", "mysql://db/app")
                .replace("amqp://relay@rabbit/%2f", "http://rabbit"),
        );
        assert_eq!(got.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), ["source.url", "broker.url"]);
    }

    #[test]
    fn env_supplies_urls_absent_from_the_file() {
        let env =
            env_of(&[("OUTBOX_RELAY_SOURCE_URL", "postgres://env/db"), ("OUTBOX_RELAY_BROKER_URL", "amqp://env")]);
        let config = from_str("[[routes]]\nexchange = \"x\"\n", Path::new(FILE), &env).unwrap();
        assert_eq!(config.source.url.expose(), "postgres://env/db");
        assert_eq!(config.broker.url.expose(), "amqp://env");
    }

    #[test]
    fn broker_url_takes_a_list_of_nodes_and_an_order() {
        let list = "url = [\"amqp://relay@r1/%2f\", \"amqp://relay@r2:5673/%2f\"]";
        let text = MINIMAL.replace("url = \"amqp://relay@rabbit/%2f\"", list);
        let config = ok(&text);
        assert_eq!(brokers::split(config.broker.url.expose()), ["amqp://relay@r1/%2f", "amqp://relay@r2:5673/%2f"]);
        assert_eq!(config.broker.node_order, NodeOrder::Listed);
        let shuffled = ok(&text.replace("[broker]\n", "[broker]\nnode_order = \"shuffled\"\n"));
        assert_eq!(shuffled.broker.node_order, NodeOrder::Shuffled("outbox_relay".into()), "keyed by the slot");
        let keyed = ok(&text.replace("[broker]\n", "[broker]\nnode_order = \"shuffled\"\nshuffle_key = \"k\"\n"));
        assert_eq!(keyed.broker.node_order, NodeOrder::Shuffled("k".into()));
        // The environment gives the same list, comma-separated.
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL", "amqp://e1/, amqps://e2/")]);
        let config = from_str(MINIMAL, Path::new(FILE), &env).unwrap();
        assert_eq!(brokers::split(config.broker.url.expose()), ["amqp://e1/", "amqps://e2/"]);
    }

    #[test]
    fn a_bad_node_list_names_the_url_and_the_key() {
        let with = |line: &str| MINIMAL.replace("url = \"amqp://relay@rabbit/%2f\"", line);
        let got = problems(&with("url = [\"amqp://r1/\", \"http://r2/\"]"));
        assert_eq!(got[0].key, "broker.url");
        assert!(got[0].message.starts_with("URL 2 of 2 has an unsupported scheme"), "{}", got[0].message);
        let got = problems(&with("url = []"));
        assert!(got[0].message.starts_with("is empty"), "{}", got[0].message);
        let got = problems(&with("url = [\"amqp://r1/\", 5]"));
        assert_eq!(got[0].key, "broker.url", "{got:?}");
        let got = problems(&MINIMAL.replace("[broker]\n", "[broker]\nshuffle_key = \"k\"\n"));
        assert_eq!((got[0].key.as_str(), got.len()), ("broker.shuffle_key", 1), "{got:?}");
        let got = problems(&MINIMAL.replace("[broker]\n", "[broker]\nnode_order = \"random\"\n"));
        assert_eq!(got[0].key, "broker.node_order");
    }

    #[test]
    fn tls_keys_need_one_amqps_node_and_serve_only_those() {
        let tls = "[broker]\ntls_ca_file = \"/ca.pem\"\n";
        let mixed = MINIMAL
            .replace("url = \"amqp://relay@rabbit/%2f\"", "url = [\"amqp://plain/\", \"amqps://secure/\"]")
            .replace("[broker]\n", tls);
        assert!(ok(&mixed).broker.tls_ca_file.is_some());
        let got = problems(&MINIMAL.replace("[broker]\n", tls));
        assert_eq!(got[0].key, "broker.tls_ca_file");
        assert!(got[0].message.contains("no broker URL is amqps://"), "{}", got[0].message);
    }

    #[test]
    fn env_overrides_the_file() {
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL", "amqps://other/")]);
        let config = from_str(MINIMAL, Path::new(FILE), &env).unwrap();
        assert_eq!(config.broker.url.expose(), "amqps://other/");
        assert_eq!(config.source.url.expose(), "postgres://relay@db/app");
    }

    #[test]
    fn env_both_forms_is_a_problem() {
        let env = env_of(&[
            ("OUTBOX_RELAY_SOURCE_URL", "postgres://a/b"),
            ("OUTBOX_RELAY_SOURCE_URL_FILE", "/run/secrets/pg"),
        ]);
        let got = problems_with(MINIMAL, &env);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, "env OUTBOX_RELAY_SOURCE_URL");
    }

    #[test]
    fn env_file_with_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amqp-url");
        std::fs::write(&path, "amqp://relay:pw@rabbit/%2f\r\n").unwrap();
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL_FILE", path.to_str().unwrap())]);
        let config = from_str(MINIMAL, Path::new(FILE), &env).unwrap();
        assert_eq!(config.broker.url.expose(), "amqp://relay:pw@rabbit/%2f");
    }

    #[test]
    fn env_file_unreadable() {
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL_FILE", "/no/such/secret")]);
        let got = problems_with(MINIMAL, &env);
        assert_eq!(got[0].key, "env OUTBOX_RELAY_BROKER_URL_FILE");
        assert!(got[0].message.contains("/no/such/secret"));
    }

    #[test]
    fn tls_keys() {
        assert_eq!(
            keys(&with("broker", "tls_cert_file = \"c.pem\"").replace("amqp://", "amqps://")),
            ["broker.tls_key_file"]
        );
        assert_eq!(
            keys(&with("broker", "tls_key_file = \"k.pem\"").replace("amqp://", "amqps://")),
            ["broker.tls_cert_file"]
        );
        let got = problems(&with("broker", "tls_ca_file = \"ca.pem\""));
        assert_eq!(got[0].key, "broker.tls_ca_file");
        assert!(got[0].message.contains("amqps://"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [source]
            slot = "Bad-Slot"
            after_publish = "mark"
            status_interval = "soon"
            colour = "blue"
            [broker]
            url = "amqp://rabbit"
            max_in_flight = 0
            [[routes]]
            table = "a"
            message_prefix = "b"
            exchange = "x"
            [[routes]]
            exchange = "has space"
            routing_key = "{"
            [log]
            level = "loud"
        "#;
        assert_eq!(
            keys(text),
            [
                "source.colour",
                "source.url",
                "source.slot",
                "source.mark_column",
                "source.status_interval",
                "broker.max_in_flight",
                "routes[0].message_prefix",
                "routes[1].exchange",
                "routes[1].routing_key",
                "log.level",
            ]
        );
    }

    #[test]
    fn blanked_keys_are_not_reported_twice() {
        let got = problems(&MINIMAL.replace("url = \"amqp://relay@rabbit/%2f\"", "url = 5"));
        assert_eq!(got.len(), 1, "no extra 'broker.url is required': {got:?}");
        assert_eq!(got[0].key, "broker.url");
    }

    #[test]
    fn display_names_file_key_and_problem() {
        let err = from_str(&with("broker", "max_in_flight = 0"), Path::new(FILE), &no_env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/outbox-relay/relay.toml: broker.max_in_flight: must be between 1 and 65535, got 0"
        );
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, with("broker", "tls_ca_file = \"ca.pem\"").replace("amqp://", "amqps://")).unwrap();
        let config = load(&path, &no_env).unwrap();
        assert_eq!(config.path, path);
        assert_eq!(config.broker.tls_ca_file, Some(dir.path().join("ca.pem")));
        let missing = dir.path().join("missing.toml");
        match load(&missing, &no_env) {
            Err(ConfigError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn process_env_reads_the_environment() {
        assert!(process_env("PATH").is_some());
        assert_eq!(process_env("OUTBOX_RELAY_TEST_SURELY_UNSET_VARIABLE"), None);
    }

    /// Mangling a full config anywhere never panics, never yields an error without a
    /// problem, and never shows the password.
    #[test]
    fn mangled_configs_fail_cleanly() {
        let text = "[source]\nurl = \"postgres://u:s3cr3t-pw@db/app\"\nmode = \"polling\"\n\
            [broker]\nurl = 'amqp://u:s3cr3t-pw@rabbit'\nmax_in_flight = 5\n\
            [[routes]]\ntable = \"a.b\"\nexchange = \"x\"\nwhen = { k = \"v\" }\n\
            [routes.headers]\nh = \"{c}\"\nz = \"é\"\n[log]\nlevel = \"info\"\n";
        ok(text);
        let boundaries: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
        for &at in &boundaries {
            for insert in ["{", "}", "\"", "'", "=", "[", "]", "\n", ".", "é", "x = 1\n", "#"] {
                let mangled = format!("{}{insert}{}", &text[..at], &text[at..]);
                if let Err(err) = from_str(&mangled, Path::new(FILE), &no_env) {
                    assert!(!err.problems().is_empty(), "{mangled}");
                    let shown = err.to_string();
                    assert!(!shown.contains("s3cr3t-pw"), "{mangled}\n{shown}");
                }
            }
            let cut = &text[..at];
            if let Err(err) = from_str(cut, Path::new(FILE), &no_env) {
                assert!(!err.problems().is_empty(), "{cut}");
                assert!(!err.to_string().contains("s3cr3t-pw"), "{cut}\n{err}");
            }
        }
    }

    /// No Debug or Display output of a config or an error shows the password, wherever
    /// the URL came from and whatever is wrong around it.
    #[test]
    fn password_never_shown() {
        const PW: &str = "s3cr3t-pw";
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("pg-url");
        std::fs::write(&secret_file, format!("postgres://relay:{PW}@db/app\n")).unwrap();
        let bad_secret_file = dir.path().join("bad-url");
        std::fs::write(&bad_secret_file, format!("mysql://relay:{PW}@db/app\n")).unwrap();
        let in_file = format!(
            "[source]\nurl = \"postgres://relay:{PW}@db/app\"\n[broker]\nurl = \"amqp://relay:{PW}@rabbit/%2f\"\n\
             [[routes]]\nexchange = \"x\"\n"
        );
        let file_path = secret_file.to_str().unwrap();
        let bad_path = bad_secret_file.to_str().unwrap();
        let env_url = format!("amqp://relay:{PW}@rabbit");
        let good: Vec<(String, Vec<(&str, &str)>)> = vec![
            (in_file.clone(), vec![]),
            (
                "[[routes]]\nexchange = \"x\"\n".into(),
                vec![("OUTBOX_RELAY_SOURCE_URL_FILE", file_path), ("OUTBOX_RELAY_BROKER_URL", &env_url)],
            ),
        ];
        for (text, env) in &good {
            let config = from_str(text, Path::new(FILE), &env_of(env)).unwrap();
            let shown = format!("{config:?}");
            assert!(!shown.contains(PW), "{shown}");
            assert!(config.source.url.expose().contains(PW), "the secret is still there to use");
        }
        let bad_env_url = format!("http://relay:{PW}@rabbit");
        let keyword = format!("host=db password={PW}");
        let bad: Vec<(String, Vec<(&str, &str)>)> = vec![
            (in_file.replace("exchange = \"x\"", "exchange = 5\nbatch = 1"), vec![]),
            (in_file.replace("postgres://", "mysql://").replace("amqp://", "http://"), vec![]),
            (in_file.replace("@db/app\"", "@db/app"), vec![]),
            (format!("[broker]\nmax_in_flight = \"amqp://relay:{PW}@rabbit\"\n"), vec![]),
            ("[source]\nslot = \"Bad\"\n".to_owned(), vec![("OUTBOX_RELAY_SOURCE_URL", &keyword)]),
            (in_file.clone(), vec![("OUTBOX_RELAY_BROKER_URL", &bad_env_url)]),
            (in_file.clone(), vec![("OUTBOX_RELAY_BROKER_URL", &env_url), ("OUTBOX_RELAY_BROKER_URL_FILE", file_path)]),
            (in_file.clone(), vec![("OUTBOX_RELAY_SOURCE_URL_FILE", bad_path)]),
            (in_file.replace("rabbit/%2f", "rabbit:99999/"), vec![]),
            (in_file.replace("@rabbit/%2f", "@rabbit/%2f\n"), vec![]),
        ];
        for (text, env) in &bad {
            let err = from_str(text, Path::new(FILE), &env_of(env)).unwrap_err();
            for shown in [err.to_string(), format!("{err:?}")] {
                assert!(!shown.contains(PW), "{shown}");
            }
        }
    }

    #[test]
    fn slot_loss_keys() {
        let s = ok(MINIMAL).source;
        assert_eq!((s.on_slot_lost, s.failover_slot, s.recover_margin), (OnSlotLost::Stop, false, secs(300)));
        let text = with("source", "on_slot_lost = \"recover\"\nfailover_slot = true\nrecover_margin = \"0s\"");
        let s = ok(&text).source;
        assert_eq!((s.on_slot_lost, s.failover_slot, s.recover_margin), (OnSlotLost::Recover, true, secs(0)));
        assert_eq!(keys(&with("source", "on_slot_lost = \"recreate\"")), ["source.on_slot_lost"]);
        assert_eq!(keys(&with("source", "recover_margin = \"soon\"")), ["source.recover_margin"]);
    }

    #[test]
    fn a_route_may_override_on_unroutable_and_its_dead_letter_exchange() {
        let cfg = ok(&route("on_unroutable = \"dead_letter\"\ndead_letter_exchange = \"route.dead\""));
        assert_eq!(cfg.routes[0].on_unroutable, OnUnroutable::DeadLetter);
        assert_eq!(cfg.routes[0].dead_letter_exchange, "route.dead");
        // Without its own, a route takes the broker's, resolved here once.
        let inherited = ok(&route(""));
        assert_eq!(inherited.routes[0].on_unroutable, OnUnroutable::Block);
        assert_eq!(inherited.routes[0].dead_letter_exchange, "outbox.dead");
        let cfg = ok(&with("broker", "on_unroutable = \"drop\"\ndead_letter_exchange = \"b.dead\""));
        assert_eq!(
            (cfg.routes[0].on_unroutable, cfg.routes[0].dead_letter_exchange.as_str()),
            (OnUnroutable::Drop, "b.dead")
        );
        // A route that asks for dead_letter with an empty inherited exchange is told so.
        let text = format!("{}on_unroutable = \"dead_letter\"\n", with("broker", "dead_letter_exchange = \"\""));
        assert_eq!(keys(&text), ["routes[0].dead_letter_exchange"]);
        assert_eq!(keys(&route("on_unroutable = \"sometimes\"")), ["routes[0].on_unroutable"]);
    }
}
