//! A typed builder for the relay's config file, so tests say what they
//! configure instead of splicing TOML strings. It renders real TOML (every
//! string escaped by the `toml` crate) and hands it to the relay through a
//! file, the way an operator would: `load` goes through
//! `outbox_relay::config::load`, `setup` and the relay binary read the same
//! file.
//!
//! ```ignore
//! let cfg = TestConfig::new(&db.url)
//!     .confirm_timeout(Duration::from_secs(2))
//!     .on_unroutable(Unroutable::Drop)
//!     .route(Route::outbox(&consumer.exchange).routing_key("{aggregate_type}.{event_type}"));
//! ```
//!
//! Tests whose point is the TOML text itself (invalid configs and the error
//! messages about their keys) keep writing raw text.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The key/value lines of one TOML table, in the order they were first set.
#[derive(Clone, Debug, Default)]
struct Table(Vec<(&'static str, String)>);

impl Table {
    /// Sets `key` to an already rendered TOML value, replacing an earlier one.
    fn set(&mut self, key: &'static str, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((key, value)),
        }
    }

    fn render(&self, out: &mut String) {
        for (k, v) in &self.0 {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
}

/// A TOML basic string, escaped.
fn string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A duration as the config writes it: whole seconds as "Ns", else "Nms".
fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        string(&format!("{}s", d.as_secs()))
    } else {
        string(&format!("{}ms", d.as_millis()))
    }
}

/// An inline table of strings, keys quoted, in the given order.
fn inline_table(entries: &[(String, String)]) -> String {
    let inner: Vec<String> = entries.iter().map(|(k, v)| format!("{} = {}", string(k), string(v))).collect();
    format!("{{ {} }}", inner.join(", "))
}

/// What happens to a message the broker returns as unroutable
/// (`on_unroutable`, and `dead_letter_exchange` for `DeadLetter`).
#[derive(Clone, Debug)]
pub enum Unroutable {
    /// Retry until a queue is bound (the default).
    Block,
    /// Count it and move on.
    Drop,
    /// Republish it to this exchange.
    DeadLetter(String),
}

impl Unroutable {
    fn apply(&self, t: &mut Table) {
        let policy = match self {
            Unroutable::Block => "block",
            Unroutable::Drop => "drop",
            Unroutable::DeadLetter(_) => "dead_letter",
        };
        t.set("on_unroutable", string(policy));
        if let Unroutable::DeadLetter(exchange) = self {
            t.set("dead_letter_exchange", string(exchange));
        }
    }
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct Route {
    table: Table,
    headers: Vec<(String, String)>,
    when: Vec<(String, String)>,
}

impl Route {
    /// A route for the rows of `table` (`schema.name`, or a bare name).
    pub fn table(table: &str) -> Route {
        Route::with("table", table)
    }

    /// A route for logical decoding messages whose prefix is `prefix`.
    pub fn message_prefix(prefix: &str) -> Route {
        Route::with("message_prefix", prefix)
    }

    /// The route most tests use: the default outbox table to `exchange`.
    pub fn outbox(exchange: &str) -> Route {
        Route::table("public.outbox").exchange(exchange)
    }

    fn with(key: &'static str, value: &str) -> Route {
        let mut table = Table::default();
        table.set(key, string(value));
        Route { table, headers: Vec::new(), when: Vec::new() }
    }

    fn set(mut self, key: &'static str, value: &str) -> Route {
        self.table.set(key, string(value));
        self
    }

    /// `name`.
    pub fn name(self, name: &str) -> Route {
        self.set("name", name)
    }

    /// `exchange`.
    pub fn exchange(self, exchange: &str) -> Route {
        self.set("exchange", exchange)
    }

    /// `routing_key` (a template such as `"{aggregate_type}.{event_type}"`).
    pub fn routing_key(self, template: &str) -> Route {
        self.set("routing_key", template)
    }

    /// `content_type`.
    pub fn content_type(self, content_type: &str) -> Route {
        self.set("content_type", content_type)
    }

    /// One more entry of `headers = { name = "template" }`.
    pub fn header(mut self, name: &str, template: &str) -> Route {
        self.headers.push((name.to_owned(), template.to_owned()));
        self
    }

    /// One more entry of `when = { column = "value" }`.
    pub fn when(mut self, column: &str, value: &str) -> Route {
        self.when.push((column.to_owned(), value.to_owned()));
        self
    }

    /// `format`: `"plain"`, `"cloudevents"` or `"cloudevents-structured"`.
    pub fn format(self, format: &str) -> Route {
        self.set("format", format)
    }

    /// `ce_source` (a template).
    pub fn ce_source(self, template: &str) -> Route {
        self.set("ce_source", template)
    }

    /// `ce_subject` (a template).
    pub fn ce_subject(self, template: &str) -> Route {
        self.set("ce_subject", template)
    }

    /// `outbox_headers`: whether messages carry the relay's `x-outbox-*` headers.
    pub fn outbox_headers(mut self, on: bool) -> Route {
        self.table.set("outbox_headers", on.to_string());
        self
    }

    /// This route's own `on_unroutable` (and `dead_letter_exchange`).
    pub fn on_unroutable(mut self, policy: Unroutable) -> Route {
        policy.apply(&mut self.table);
        self
    }

    fn render(&self, out: &mut String) {
        out.push_str("[[routes]]\n");
        self.table.render(out);
        if !self.headers.is_empty() {
            let _ = writeln!(out, "headers = {}", inline_table(&self.headers));
        }
        if !self.when.is_empty() {
            let _ = writeln!(out, "when = {}", inline_table(&self.when));
        }
    }
}

/// A whole config file for a test relay.
///
/// [`new`](Self::new) starts from the harness's defaults: the given source
/// URL, a slot named after its database (slot names are cluster-wide, test
/// databases have random names), `status_interval = "1s"`, the shared
/// broker with `confirm_timeout = "10s"` and `shutdown_timeout = "20s"`,
/// HTTP on a free loopback port, and no routes.
#[derive(Clone, Debug)]
pub struct TestConfig {
    source: Table,
    broker: Table,
    routes: Vec<Route>,
    http: Table,
    log: Table,
}

impl TestConfig {
    /// The defaults for the database at `source_url` (see the type's doc).
    pub fn new(source_url: &str) -> TestConfig {
        let db = url::Url::parse(source_url).expect("source url").path().trim_start_matches('/').to_owned();
        let mut cfg = TestConfig {
            source: Table::default(),
            broker: Table::default(),
            routes: Vec::new(),
            http: Table::default(),
            log: Table::default(),
        };
        cfg.source.set("url", string(source_url));
        cfg.source.set("slot", string(&db));
        cfg.source.set("status_interval", duration(Duration::from_secs(1)));
        cfg.broker.set("url", string(&super::amqp_url()));
        cfg.broker.set("confirm_timeout", duration(Duration::from_secs(10)));
        cfg.broker.set("shutdown_timeout", duration(Duration::from_secs(20)));
        cfg.http.set("listen", string("127.0.0.1:0"));
        cfg
    }

    /// The defaults with one route, the one most tests use: the default
    /// outbox table to `exchange`.
    pub fn outbox(source_url: &str, exchange: &str) -> TestConfig {
        TestConfig::new(source_url).route(Route::outbox(exchange))
    }

    /// Adds a route after the ones already there (order matters: the first match wins).
    pub fn route(mut self, route: Route) -> TestConfig {
        self.routes.push(route);
        self
    }

    // ------------------------------------------------------------ [source]

    /// `source.slot`.
    pub fn slot(mut self, slot: &str) -> TestConfig {
        self.source.set("slot", string(slot));
        self
    }

    /// `source.publication`.
    pub fn publication(mut self, publication: &str) -> TestConfig {
        self.source.set("publication", string(publication));
        self
    }

    /// `source.create_slot`.
    pub fn create_slot(mut self, create: bool) -> TestConfig {
        self.source.set("create_slot", create.to_string());
        self
    }

    /// `source.on_slot_lost = "recover"`: a lost slot is recovered in-process.
    pub fn recover_on_slot_loss(mut self) -> TestConfig {
        self.source.set("on_slot_lost", string("recover"));
        self
    }

    /// `source.recover_margin`.
    pub fn recover_margin(mut self, margin: Duration) -> TestConfig {
        self.source.set("recover_margin", duration(margin));
        self
    }

    /// `source.status_interval`.
    pub fn status_interval(mut self, every: Duration) -> TestConfig {
        self.source.set("status_interval", duration(every));
        self
    }

    /// `source.connect_timeout`.
    pub fn source_connect_timeout(mut self, timeout: Duration) -> TestConfig {
        self.source.set("connect_timeout", duration(timeout));
        self
    }

    /// `source.receive_timeout`.
    pub fn receive_timeout(mut self, timeout: Duration) -> TestConfig {
        self.source.set("receive_timeout", duration(timeout));
        self
    }

    /// `source.mode = "polling"`, without the polling knobs (their defaults).
    pub fn polling(mut self) -> TestConfig {
        self.source.set("mode", string("polling"));
        self
    }

    /// `source.poll_interval`.
    pub fn poll_interval(mut self, every: Duration) -> TestConfig {
        self.source.set("poll_interval", duration(every));
        self
    }

    /// `source.batch_size`.
    pub fn batch_size(mut self, rows: u32) -> TestConfig {
        self.source.set("batch_size", rows.to_string());
        self
    }

    /// `source.after_publish = "mark"` with `source.mark_column`.
    pub fn mark_published(mut self, column: &str) -> TestConfig {
        self.source.set("after_publish", string("mark"));
        self.source.set("mark_column", string(column));
        self
    }

    // ------------------------------------------------------------ [broker]

    /// `broker.url`.
    pub fn broker_url(mut self, url: &str) -> TestConfig {
        self.broker.set("url", string(url));
        self
    }

    /// `broker.url` as a list of nodes, tried in this order.
    pub fn broker_urls(mut self, urls: &[String]) -> TestConfig {
        let items: Vec<String> = urls.iter().map(|u| string(u)).collect();
        self.broker.set("url", format!("[{}]", items.join(", ")));
        self
    }

    /// `broker.url`: the shared broker's URL, host and port replaced by
    /// `addr` (a [`Proxy`](super::proxy::Proxy) in front of it).
    pub fn broker_through(self, addr: SocketAddr) -> TestConfig {
        let mut u = url::Url::parse(&super::amqp_url()).expect("amqp url");
        u.set_ip_host(addr.ip()).expect("an IP host");
        u.set_port(Some(addr.port())).expect("a port");
        self.broker_url(u.as_str())
    }

    /// [`broker_through`](Self::broker_through) a proxy that will black-hole
    /// the broker: confirm timeout and heartbeat of 60 s, so that silence
    /// holds messages instead of tearing the connection down, and a 5 s
    /// shutdown timeout.
    pub fn patient_broker_through(self, addr: SocketAddr) -> TestConfig {
        self.broker_through(addr)
            .confirm_timeout(Duration::from_secs(60))
            .heartbeat(Duration::from_secs(60))
            .shutdown_timeout(Duration::from_secs(5))
    }

    /// `broker.tls_ca_file`.
    pub fn tls_ca_file(mut self, path: &Path) -> TestConfig {
        self.broker.set("tls_ca_file", string(&path.display().to_string()));
        self
    }

    /// `broker.max_in_flight`.
    pub fn max_in_flight(mut self, n: usize) -> TestConfig {
        self.broker.set("max_in_flight", n.to_string());
        self
    }

    /// `broker.confirm_timeout`.
    pub fn confirm_timeout(mut self, timeout: Duration) -> TestConfig {
        self.broker.set("confirm_timeout", duration(timeout));
        self
    }

    /// `broker.connect_timeout`.
    pub fn broker_connect_timeout(mut self, timeout: Duration) -> TestConfig {
        self.broker.set("connect_timeout", duration(timeout));
        self
    }

    /// `broker.shutdown_timeout`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> TestConfig {
        self.broker.set("shutdown_timeout", duration(timeout));
        self
    }

    /// `broker.heartbeat`.
    pub fn heartbeat(mut self, every: Duration) -> TestConfig {
        self.broker.set("heartbeat", duration(every));
        self
    }

    /// The broker-wide `on_unroutable` (and `dead_letter_exchange`).
    pub fn on_unroutable(mut self, policy: Unroutable) -> TestConfig {
        policy.apply(&mut self.broker);
        self
    }

    // ------------------------------------------------------------ [http], [log]

    /// `http.listen`.
    pub fn http_listen(mut self, addr: SocketAddr) -> TestConfig {
        self.http.set("listen", string(&addr.to_string()));
        self
    }

    /// Gives the relay a fixed free loopback port for HTTP (for a binary
    /// whose port the test must know) and returns it.
    pub fn fixed_http_port(&mut self) -> SocketAddr {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        self.http.set("listen", string(&addr.to_string()));
        addr
    }

    /// `log.format` and `log.level`.
    pub fn log(mut self, format: &str, level: &str) -> TestConfig {
        self.log.set("format", string(format));
        self.log.set("level", string(level));
        self
    }

    // ------------------------------------------------------------ output

    /// The TOML text.
    pub fn toml(&self) -> String {
        let mut out = String::from("[source]\n");
        self.source.render(&mut out);
        out.push_str("\n[broker]\n");
        self.broker.render(&mut out);
        for route in &self.routes {
            out.push('\n');
            route.render(&mut out);
        }
        out.push_str("\n[http]\n");
        self.http.render(&mut out);
        if !self.log.0.is_empty() {
            out.push_str("\n[log]\n");
            self.log.render(&mut out);
        }
        out
    }

    /// Writes the TOML to a fresh temp dir and returns its path.
    pub fn write(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        (dir, path)
    }

    /// Loads the written file with the library's own loader (no environment overrides).
    pub fn load(&self) -> outbox_relay::Config {
        let (_dir, path) = self.write();
        outbox_relay::config::load(&path, &|_| None)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{}", self.toml()))
    }

    /// Runs `outbox-relay setup` (publication and slot), so rows written
    /// from now on are in the slot's stream even before a relay runs.
    pub fn setup(&self) {
        let out = self.run_binary(&["setup"], &[]);
        assert!(out.status.success(), "setup failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `outbox-relay ARGS --config FILE` to completion, without the
    /// environment variables `remove_env` names.
    pub fn run_binary(&self, args: &[&str], remove_env: &[&str]) -> std::process::Output {
        let (_dir, path) = self.write();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"));
        cmd.args(args).arg("--config").arg(&path);
        for var in remove_env {
            cmd.env_remove(var);
        }
        cmd.output().unwrap_or_else(|e| panic!("run outbox-relay {args:?}: {e}"))
    }
}
