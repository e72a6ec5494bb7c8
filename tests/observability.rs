//! Metrics against the truth, probes, and logs without secrets.

use std::time::Duration;

use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::http::{get, metric, scrape};
use crate::support::proxy::{Mode, Proxy};
use crate::support::relay::{InProcess, Process};
use crate::support::{self, insert_events, TestDb};

/// Every metric of the contract (SPEC.md), present from the start.
const CONTRACT: [&str; 11] = [
    "outbox_relay_events_published_total",
    "outbox_relay_events_unroutable_total",
    "outbox_relay_publish_nacks_total",
    "outbox_relay_in_flight",
    "outbox_relay_confirmed_lsn",
    "outbox_relay_replication_lag_bytes",
    "outbox_relay_lag_seconds",
    "outbox_relay_commit_to_confirm_seconds_bucket",
    "outbox_relay_reconnects_total",
    "outbox_relay_active",
    "outbox_relay_build_info",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_tell_the_truth_about_delivery_lag_and_position() {
    // GIVEN a relay behind a broker proxy
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(support::amqp_addr()).await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).patient_broker_through(proxy.addr);
    let relay = InProcess::start(&cfg).await;
    let http = relay.http;

    // THEN every contract series exists from the start, the route pre-created at 0
    let text = scrape(http).await;
    for name in CONTRACT {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert_eq!(metric(&text, "outbox_relay_events_published_total", "route=\"public.outbox\""), Some(0.0), "{text}");
    assert_eq!(metric(&text, "outbox_relay_reconnects_total", "target=\"source\""), Some(0.0));
    assert_eq!(metric(&text, "outbox_relay_active", ""), Some(1.0));
    assert_eq!(metric(&text, "outbox_relay_build_info", env!("CARGO_PKG_VERSION")), Some(1.0));

    // WHEN 300 events are delivered
    let client = db.client().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.extend(insert_events(&client, "wallet", &vec![format!("a{i}"); 10], "E").await);
    }
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;

    // THEN published_total equals what the consumer got, and lag returns to 0 when caught up
    support::wait_until(Duration::from_secs(15), "counters and lag settle", || async move {
        let t = scrape(http).await;
        metric(&t, "outbox_relay_events_published_total", "route=") == Some(300.0)
            && metric(&t, "outbox_relay_lag_seconds", "") == Some(0.0)
            && metric(&t, "outbox_relay_in_flight", "") == Some(0.0)
    })
    .await;
    assert_eq!(consumer.distinct(), 300);
    let t = scrape(http).await;
    assert_eq!(metric(&t, "outbox_relay_commit_to_confirm_seconds_count", ""), Some(300.0), "{t}");
    // replication lag near 0 when caught up (the idle keepalive position is acknowledged)
    support::wait_until(Duration::from_secs(20), "replication lag near zero when caught up", || async move {
        metric(&scrape(http).await, "outbox_relay_replication_lag_bytes", "").is_some_and(|v| v < 64.0 * 1024.0)
    })
    .await;
    let confirmed = metric(&scrape(http).await, "outbox_relay_confirmed_lsn", "").unwrap();
    assert!(
        confirmed as u64 >= db.confirmed_flush().await.unwrap().saturating_sub(1024 * 1024),
        "confirmed_lsn follows the slot"
    );

    // WHEN the broker goes silent while events commit
    proxy.set_mode(Mode::Blackhole);
    let held = insert_events(&client, "wallet", &vec!["z".to_string(); 20], "Held").await;
    client.batch_execute("SELECT pg_logical_emit_message(false, 'noise', repeat('x', 100000))").await.unwrap();
    // THEN the replication lag and the lag in seconds grow
    support::wait_until(Duration::from_secs(20), "lag grows while the broker is cut off", || async move {
        let t = scrape(http).await;
        metric(&t, "outbox_relay_replication_lag_bytes", "").is_some_and(|v| v > 0.0)
            && metric(&t, "outbox_relay_lag_seconds", "").is_some_and(|v| v >= 1.0)
    })
    .await;
    proxy.set_mode(Mode::Pass);
    consumer.wait_for_ids(&held, Duration::from_secs(30)).await;
    support::wait_until(Duration::from_secs(15), "lag back to 0", || async move {
        metric(&scrape(http).await, "outbox_relay_lag_seconds", "") == Some(0.0)
    })
    .await;

    // AND the probes answer
    assert_eq!(get(http, "/healthz").await.0, 200);
    let (status, body) = get(http, "/readyz").await;
    assert!(status == 200 && body.contains("active"), "{body}");
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_appears_in_any_log_line_in_either_format() {
    for format in ["text", "json"] {
        // GIVEN a relay whose database password is wrong at first (so errors are logged), in this log format
        let db = TestDb::new().await;
        let consumer = Consumer::start("#").await;
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_password(Some("Leaky-Secret-42")).unwrap();
        let cfg = TestConfig::outbox(url.as_str(), &consumer.exchange)
            .broker_url(&support::amqp_url().replace("guest:guest", "guest:Broker-Secret-43"))
            .log(format, "debug");
        let relay = Process::spawn(&cfg);
        support::wait_until(Duration::from_secs(20), "the refusals are logged", || {
            let log = relay.log_text();
            async move { log.contains("28P01") || log.contains("password authentication failed") }
        })
        .await;
        let log = relay.log_text();
        let status = relay.terminate(Duration::from_secs(20)).await;
        assert!(status.success(), "{log}");
        // THEN neither password appears anywhere, and json lines are JSON
        assert!(
            !log.contains("Leaky-Secret-42") && !log.contains("Broker-Secret-43"),
            "password in the {format} log:\n{log}"
        );
        if format == "json" {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
        db.drop_all().await;
    }
}

#[test]
fn healthz_turns_unhealthy_when_the_streaming_loop_stops_turning() {
    use crate::support::relay::{Health, State};
    let h = Health::default();
    h.set(State::Streaming);
    assert!(h.alive(Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(30));
    assert!(!h.alive(Duration::from_millis(10)), "a streaming loop that stopped beating is wedged");
    h.beat();
    assert!(h.alive(Duration::from_millis(10)));
    h.set(State::Standby);
    std::thread::sleep(Duration::from_millis(30));
    assert!(h.alive(Duration::from_millis(10)), "a standby is bounded by its own timeouts");
}
