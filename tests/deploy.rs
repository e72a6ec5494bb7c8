//! deploy/: alert rules and dashboard name only metrics that exist, and
//! promtool accepts the relay's /metrics.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::http::scrape;
use crate::support::relay::InProcess;
use crate::support::{insert_events, TestDb};

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

/// promtool: `$PROMTOOL`, else on PATH, else where scripts/promtool.sh puts it
/// (`<target>/tools/promtool`). There is no skipping: without it the test fails
/// and says how to get it.
fn promtool() -> PathBuf {
    let target_tools = |t: PathBuf| t.join("tools").join("promtool");
    let mut candidates: Vec<PathBuf> = std::env::var_os("PROMTOOL").map(PathBuf::from).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("promtool")));
    }
    if let Some(t) = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).parent() {
        candidates.push(target_tools(t.to_path_buf()));
    }
    candidates.push(target_tools(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")));
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        panic!(
            "promtool is not installed: run scripts/promtool.sh (it takes promtool out of Debian's \
             prometheus package into <target>/tools/promtool; scripts/services.sh up and .ci/run call it), \
             or put promtool on PATH, or set PROMTOOL"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_check_metrics_accepts_the_live_metrics() {
    let promtool = promtool();
    // GIVEN a relay that has published a couple of events (so the histogram and counters have samples)
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let client = db.client().await;
    let ids = insert_events(&client, "wallet", &["a".to_owned(), "b".to_owned()], "E").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    let text = scrape(relay.http).await;
    assert!(text.contains("outbox_relay_commit_to_confirm_seconds_count"), "{text}");

    // WHEN promtool reads it
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();

    // THEN it finds nothing: no parse error, no lint problem (help, type, unit, naming)
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {}\n{said}\n--- /metrics:\n{text}",
        promtool.display(),
        out.status
    );
    relay.stop().await.unwrap();
    db.drop_all().await;
}
