//! deploy/: alert rules and dashboard name only metrics that exist.

use std::collections::BTreeSet;

use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::http::scrape;
use crate::support::relay::InProcess;
use crate::support::TestDb;

/// Every `outbox_relay_*` name in a file.
fn names_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("outbox_relay_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if end > "outbox_relay_".len() {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_exists_in_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut names = names_in(&format!("{root}/deploy/prometheus/alerts.yml"));
    names.extend(names_in(&format!("{root}/deploy/grafana/outbox-relay.json")));
    assert!(names.len() >= 8, "the deploy files name the contract's metrics: {names:?}");
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let text = scrape(relay.http).await;
    let exposed: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
        .collect();
    // A histogram's base name (in prose) stands for its _bucket/_sum/_count series.
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exposed.contains(n.as_str()) && !exposed.contains(format!("{n}_bucket").as_str()))
        .collect();
    assert!(missing.is_empty(), "named in deploy/ but not in /metrics: {missing:?}\n{text}");
    relay.stop().await.unwrap();
    db.drop_all().await;
}
