//! Two instances on one slot: one active, one standby that takes over.

use std::time::{Duration, Instant};

use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::http::{get, metric, scrape};
use crate::support::relay::Process;
use crate::support::{self, writer, TestDb};

/// "active", "standby" or "not ready", from /readyz.
async fn role(addr: std::net::SocketAddr) -> String {
    let (_, body) = get(addr, "/readyz").await;
    body.split(':').next().unwrap_or("").trim().to_owned()
}

async fn active(addr: std::net::SocketAddr) -> Option<bool> {
    let text = tokio::time::timeout(Duration::from_secs(2), scrape(addr)).await.ok()?;
    metric(&text, "outbox_relay_active", "").map(|v| v == 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_active_and_the_standby_takes_over_within_15s_of_a_sigkill() {
    // GIVEN two relay processes on the same slot
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let mut a_cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    a_cfg.setup();
    let mut b_cfg = a_cfg.clone();
    let a_http = a_cfg.fixed_http_port();
    let b_http = b_cfg.fixed_http_port();
    let w = writer(db.url.clone(), "h", 300, 10);
    let a = Process::spawn(&a_cfg);
    let b = Process::spawn(&b_cfg);

    // THEN exactly one is active, the other is a ready standby that says so
    support::wait_until(Duration::from_secs(30), "exactly one active, one standby", || async move {
        let roles = (role(a_http).await, role(b_http).await);
        let metrics = (active(a_http).await, active(b_http).await);
        matches!(
            (roles.0.as_str(), roles.1.as_str(), metrics),
            ("active", "standby", (Some(true), Some(false))) | ("standby", "active", (Some(false), Some(true)))
        )
    })
    .await;
    let (active_proc, active_http, standby_proc, standby_http) =
        if active(a_http).await == Some(true) { (a, a_http, b, b_http) } else { (b, b_http, a, a_http) };
    let (status, body) = get(standby_http, "/readyz").await;
    assert_eq!(status, 200, "a healthy standby is ready: {body}");
    assert!(body.contains("standby"), "{body}");
    let (status, body) = get(active_http, "/readyz").await;
    assert!(status == 200 && body.contains("active"), "{body}");
    // AND neither raises the lost-slot alarm (a standby sees an active slot, not a lost one)
    for http in [active_http, standby_http] {
        assert_eq!(metric(&scrape(http).await, "outbox_relay_slot_lost", ""), Some(0.0), "no false alarm");
    }
    consumer.wait_for_count(500, Duration::from_secs(30)).await;

    // WHEN the active one is SIGKILLed
    active_proc.kill().await;
    let killed = Instant::now();

    // THEN the standby takes over within 15 seconds and nothing is lost
    support::wait_until(Duration::from_secs(15), "the standby becomes active", || async move {
        active(standby_http).await == Some(true)
    })
    .await;
    println!("standby took over {:?} after the SIGKILL", killed.elapsed());
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);
    consumer.wait_for_ids(&ids, Duration::from_secs(60)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("standby takeover over {} events: {dups} duplicates", ids.len());
    let status = standby_proc.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    db.drop_all().await;
}
