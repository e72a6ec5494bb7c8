//! Prometheus metrics: the contract's names as constants, one method per
//! happening. Every series exists from the start (routes and targets are
//! pre-created at 0), so dashboards and alerts see 0, not nothing.
//!
//! Built on prometheus-client (the Prometheus project's own Rust client,
//! actively released) rather than the older `prometheus` crate.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `outbox_relay_events_published_total{route}` (the encoder adds `_total`).
pub const EVENTS_PUBLISHED: &str = "outbox_relay_events_published";
/// `outbox_relay_events_unroutable_total{route}`.
pub const EVENTS_UNROUTABLE: &str = "outbox_relay_events_unroutable";
/// `outbox_relay_publish_nacks_total`.
pub const PUBLISH_NACKS: &str = "outbox_relay_publish_nacks";
/// `outbox_relay_in_flight`.
pub const IN_FLIGHT: &str = "outbox_relay_in_flight";
/// `outbox_relay_confirmed_lsn`.
pub const CONFIRMED_LSN: &str = "outbox_relay_confirmed_lsn";
/// `outbox_relay_replication_lag_bytes`.
pub const REPLICATION_LAG_BYTES: &str = "outbox_relay_replication_lag_bytes";
/// `outbox_relay_lag_seconds`.
pub const LAG_SECONDS: &str = "outbox_relay_lag_seconds";
/// `outbox_relay_commit_to_confirm_seconds`.
pub const COMMIT_TO_CONFIRM: &str = "outbox_relay_commit_to_confirm_seconds";
/// `outbox_relay_reconnects_total{target}`.
pub const RECONNECTS: &str = "outbox_relay_reconnects";
/// `outbox_relay_active`.
pub const ACTIVE: &str = "outbox_relay_active";
/// `outbox_relay_slot_retained_wal_bytes`: WAL the slot holds back.
pub const SLOT_RETAINED_WAL: &str = "outbox_relay_slot_retained_wal_bytes";
/// `outbox_relay_slot_safe_wal_size_bytes`: WAL that can still be written before the slot is at risk (-1: unbounded).
pub const SLOT_SAFE_WAL_SIZE: &str = "outbox_relay_slot_safe_wal_size_bytes";
/// `outbox_relay_slot_wal_status{status}`: 1 for the slot's current `wal_status`.
pub const SLOT_WAL_STATUS: &str = "outbox_relay_slot_wal_status";
/// `outbox_relay_slot_lost`: 1 while the slot the relay streamed from is lost
/// (missing, invalidated, or on another system); `recover` is needed.
pub const SLOT_LOST: &str = "outbox_relay_slot_lost";
/// `outbox_relay_broker_node{node}`: 1 for the RabbitMQ node the relay is
/// connected to, 0 for the other nodes of `broker.url`.
pub const BROKER_NODE: &str = "outbox_relay_broker_node";
/// `outbox_relay_build_info{version}`.
pub const BUILD_INFO: &str = "outbox_relay_build_info";

/// `route` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's name.
    pub route: String,
}

/// `target` label: "source" or "broker".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// Which end.
    pub target: String,
}

/// `status` label of `wal_status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// reserved, extended, unreserved, lost.
    pub status: String,
}

/// `node` label: a broker node as `host:port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    /// `host:port` from its URL.
    pub node: String,
}

/// `version` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// Crate version.
    pub version: String,
}

/// All metrics of one relay process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    routes: Vec<String>,
    published: Family<RouteLabel, Counter>,
    unroutable: Family<RouteLabel, Counter>,
    nacks: Counter,
    in_flight: Gauge,
    confirmed_lsn: Gauge<i64, AtomicI64>,
    replication_lag_bytes: Gauge<i64, AtomicI64>,
    lag_seconds: Gauge<f64, AtomicU64>,
    commit_to_confirm: Histogram,
    reconnects: Family<TargetLabel, Counter>,
    active: Gauge,
    slot_lost: Gauge,
    slot_retained: Gauge<i64, AtomicI64>,
    slot_safe: Gauge<i64, AtomicI64>,
    slot_status: Family<StatusLabel, Gauge>,
    broker_node: Family<NodeLabel, Gauge>,
    /// The nodes of `broker_node`'s series, for [`Metrics::broker_disconnected`].
    broker_nodes: std::sync::Mutex<Vec<String>>,
}

impl Metrics {
    /// Registers every metric, with the given route names pre-created.
    pub fn new(routes: Vec<String>) -> Arc<Self> {
        let mut registry = Registry::default();
        let published = Family::<RouteLabel, Counter>::default();
        let unroutable = Family::<RouteLabel, Counter>::default();
        let nacks = Counter::default();
        let in_flight = Gauge::default();
        let confirmed_lsn = Gauge::<i64, AtomicI64>::default();
        let replication_lag_bytes = Gauge::<i64, AtomicI64>::default();
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        // 1 ms to about 8.7 minutes.
        let commit_to_confirm = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
            520.0,
        ]);
        let reconnects = Family::<TargetLabel, Counter>::default();
        let active = Gauge::default();
        let slot_lost = Gauge::default();
        let build_info = Family::<VersionLabel, Gauge>::default();
        let slot_retained = Gauge::<i64, AtomicI64>::default();
        let slot_safe = Gauge::<i64, AtomicI64>::default();
        let slot_status = Family::<StatusLabel, Gauge>::default();
        let broker_node = Family::<NodeLabel, Gauge>::default();
        registry.register(
            SLOT_RETAINED_WAL,
            "WAL bytes the replication slot retains (pg_current_wal_lsn - restart_lsn)",
            slot_retained.clone(),
        );
        registry.register(
            SLOT_SAFE_WAL_SIZE,
            "WAL bytes that can be written before the slot is at risk; -1 when unbounded",
            slot_safe.clone(),
        );
        registry.register(SLOT_WAL_STATUS, "1 for the slot's current wal_status", slot_status.clone());
        for st in ["reserved", "extended", "unreserved", "lost"] {
            let _ = slot_status.get_or_create(&StatusLabel { status: st.into() });
        }
        registry.register(EVENTS_PUBLISHED, "Events confirmed by the broker", published.clone());
        registry.register(EVENTS_UNROUTABLE, "Events the broker returned as unroutable", unroutable.clone());
        registry.register(PUBLISH_NACKS, "basic.nack received", nacks.clone());
        registry.register(IN_FLIGHT, "Published, not yet confirmed", in_flight.clone());
        registry.register(CONFIRMED_LSN, "Last flush LSN acknowledged to PostgreSQL", confirmed_lsn.clone());
        registry.register(
            REPLICATION_LAG_BYTES,
            "Server WAL end minus the confirmed flush LSN",
            replication_lag_bytes.clone(),
        );
        registry.register(LAG_SECONDS, "Age of the oldest committed but unconfirmed event", lag_seconds.clone());
        registry.register(COMMIT_TO_CONFIRM, "From commit time to broker confirm", commit_to_confirm.clone());
        registry.register(RECONNECTS, "Reconnections by target", reconnects.clone());
        registry.register(ACTIVE, "1 while this instance holds the slot, 0 on standby", active.clone());
        registry.register(SLOT_LOST, "1 while the slot is lost and a recovery is needed", slot_lost.clone());
        registry.register(BUILD_INFO, "Build information", build_info.clone());
        registry.register(
            BROKER_NODE,
            "1 for the RabbitMQ node connected to, 0 for the other listed nodes",
            broker_node.clone(),
        );
        for r in &routes {
            let _ = published.get_or_create(&RouteLabel { route: r.clone() });
            let _ = unroutable.get_or_create(&RouteLabel { route: r.clone() });
        }
        for t in ["source", "broker"] {
            let _ = reconnects.get_or_create(&TargetLabel { target: t.into() });
        }
        build_info.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        Arc::new(Metrics {
            registry,
            routes,
            published,
            unroutable,
            nacks,
            in_flight,
            confirmed_lsn,
            replication_lag_bytes,
            lag_seconds,
            commit_to_confirm,
            reconnects,
            active,
            slot_lost,
            slot_retained,
            slot_safe,
            slot_status,
            broker_node,
            broker_nodes: std::sync::Mutex::default(),
        })
    }

    fn route(&self, idx: usize) -> RouteLabel {
        RouteLabel { route: self.routes.get(idx).cloned().unwrap_or_default() }
    }

    /// An event was confirmed; `commit_age` is the time since its commit.
    pub fn event_confirmed(&self, route: usize, commit_age_secs: f64) {
        self.published.get_or_create(&self.route(route)).inc();
        self.commit_to_confirm.observe(commit_age_secs.max(0.0));
    }

    /// The broker returned an event.
    pub fn event_unroutable(&self, route: usize) {
        self.unroutable.get_or_create(&self.route(route)).inc();
    }

    /// A basic.nack arrived.
    pub fn nack(&self) {
        self.nacks.inc();
    }

    /// Messages awaiting a confirm.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(n as i64);
    }

    /// A status update acknowledged `lsn`.
    pub fn set_confirmed_lsn(&self, lsn: u64) {
        self.confirmed_lsn.set(lsn as i64);
    }

    /// Server WAL end minus confirmed flush.
    pub fn set_replication_lag_bytes(&self, bytes: u64) {
        self.replication_lag_bytes.set(bytes.min(i64::MAX as u64) as i64);
    }

    /// Age of the oldest unconfirmed event, 0 when caught up.
    pub fn set_lag_seconds(&self, secs: f64) {
        self.lag_seconds.set(secs.max(0.0));
    }

    /// A reconnect of "source" or "broker".
    pub fn reconnect(&self, target: &str) {
        self.reconnects.get_or_create(&TargetLabel { target: target.into() }).inc();
    }

    /// Active (holds the slot) or standby.
    pub fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    /// The slot is lost (true) or streams again after a recovery (false).
    pub fn set_slot_lost(&self, lost: bool) {
        self.slot_lost.set(i64::from(lost));
    }

    /// The slot's health, read on the ordinary connection.
    pub fn set_slot_health(&self, retained: i64, wal_status: &str, safe_wal_size: Option<i64>) {
        self.slot_retained.set(retained);
        self.slot_safe.set(safe_wal_size.unwrap_or(-1));
        for st in ["reserved", "extended", "unreserved", "lost"] {
            self.slot_status.get_or_create(&StatusLabel { status: st.into() }).set(i64::from(st == wal_status));
        }
    }

    /// The nodes of `broker.url` (`host:port`), and the one connected to if any.
    pub fn set_broker_node(&self, nodes: &[String], connected: Option<&str>) {
        let mut known = self.broker_nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for node in nodes.iter().chain(known.iter()) {
            let on = connected == Some(node.as_str());
            self.broker_node.get_or_create(&NodeLabel { node: node.clone() }).set(i64::from(on));
        }
        for node in nodes {
            if !known.contains(node) {
                known.push(node.clone());
            }
        }
    }

    /// No broker connection: every node's series goes to 0.
    pub fn broker_disconnected(&self) {
        self.set_broker_node(&[], None);
    }

    /// The text exposition, in Prometheus's text format 0.0.4 (what /metrics
    /// declares, and what `promtool check metrics` reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        to_text_format(&out)
    }
}

/// prometheus-client writes OpenMetrics: a counter's `# HELP`/`# TYPE` name
/// it without `_total` (`# TYPE outbox_relay_reconnects counter`) while its
/// samples are `outbox_relay_reconnects_total`, and the text ends in `# EOF`.
/// In text format 0.0.4 such samples have no type (Prometheus takes them as
/// untyped; promtool says "no help text"). This names the counter's HELP and
/// TYPE after its samples and drops `# EOF`; the samples are unchanged.
fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta.and_then(|(p, rest)| Some((p, rest.split_once(' ')?))) {
            Some((p, (name, tail))) if counters.contains(name) => {
                out.push_str(p);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_text_format_0_0_4_with_counters_typed_by_their_sample_names() {
        let m = Metrics::new(vec!["orders".into()]);
        m.reconnect("source");
        let text = m.encode();
        assert!(text.contains("# TYPE outbox_relay_reconnects_total counter\n"), "{text}");
        assert!(text.contains("# HELP outbox_relay_reconnects_total Reconnections by target"), "{text}");
        assert!(text.contains("outbox_relay_reconnects_total{target=\"source\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE outbox_relay_active gauge\n"), "{text}");
        assert!(!text.contains("# EOF") && text.ends_with('\n'), "{text}");
        // every sample's family has a TYPE line (a histogram's by its base name)
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| text.contains(&format!("# TYPE {b} histogram\n"))))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "no TYPE for {name}:\n{text}");
        }
    }
}
