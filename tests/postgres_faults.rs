//! PostgreSQL faults: walsender terminated, server restarted.

use std::time::Duration;

use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::relay::InProcess;
use crate::support::{self, writer, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_the_walsender_twice_mid_stream_loses_nothing() {
    // GIVEN a streaming relay and a writer of 5,000 events
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let w = writer(db.url.clone(), "w", 250, 20);
    let admin = db.client().await;

    // WHEN its walsender is terminated twice, each time after progress
    for round in 0..2 {
        consumer.wait_for_more(800, 5_000, Duration::from_secs(60)).await;
        let pid = db.active_pid().await.expect("a walsender streams from the slot");
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        // the relay reconnects: a new walsender with another PID
        support::wait_until(Duration::from_secs(30), "a new walsender", || {
            let db = &db;
            async move { db.active_pid().await.is_some_and(|p| p != pid) }
        })
        .await;
        println!("walsender {pid} terminated (round {round})");
    }
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);

    // THEN everything arrives, in order per aggregate
    consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("walsender terminated x2 over {} events: {dups} duplicates", ids.len());
    relay.stop().await.unwrap();
    db.drop_all().await;
}
