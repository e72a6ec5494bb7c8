//! Unroutable messages and confirm correlation under pipelining.

use std::time::Duration;

use crate::support::config::{TestConfig, Unroutable};
use crate::support::consumer::Consumer;
use crate::support::http::{metric, scrape};
use crate::support::relay::InProcess;
use crate::support::{self, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seventh_of_20k_pipelined_messages_is_unroutable_and_each_return_is_attributed_exactly() {
    // GIVEN a queue bound only to "routable.#", a window of 1,000, and on_unroutable = "drop"
    // (so each return is counted once and the run ends)
    let db = TestDb::new().await;
    let consumer = Consumer::start("routable.#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).max_in_flight(1000).on_unroutable(Unroutable::Drop);
    let relay = InProcess::start(&cfg).await;

    // WHEN 20,000 events commit, every 7th with an aggregate_type that no queue is bound for
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
             SELECT CASE WHEN g % 7 = 0 THEN 'nowhere' ELSE 'routable' END, 'a' || (g % 50), 'E', jsonb_build_object('g', g)
             FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let unroutable = 20000 / 7;
    let routable = 20000 - unroutable;

    // THEN every routable message arrives, and the counters attribute each return exactly
    support::wait_until(Duration::from_secs(120), "all routable messages delivered", || {
        let n = consumer.distinct();
        async move { n >= routable }
    })
    .await;
    let http = relay.http;
    support::wait_until(Duration::from_secs(30), "every event accounted for", || async move {
        let text = scrape(http).await;
        metric(&text, "outbox_relay_events_published_total", "route=") == Some(routable as f64)
            && metric(&text, "outbox_relay_events_unroutable_total", "route=") == Some(unroutable as f64)
    })
    .await;
    assert!(consumer.received().iter().all(|m| m.routing_key.starts_with("routable.")));
    assert_eq!(consumer.distinct(), routable, "no unroutable event was delivered, none routable was lost");
    relay.stop().await.unwrap();
    db.drop_all().await;
}
