//! The polling source: order, delete/mark after confirm, advisory lock;
//! rows no route matches stay in the table and do not stall polling.

use std::time::Duration;

use crate::support::config::{Route, TestConfig};
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::proxy::{Mode, Proxy};
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, TestDb};

async fn rows(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

/// A polling relay on the outbox, polling every 50 ms, 100 rows at a time.
fn polling(db: &TestDb, exchange: &str) -> TestConfig {
    TestConfig::outbox(&db.url, exchange).polling().poll_interval(Duration::from_millis(50)).batch_size(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_publishes_in_order_and_deletes_only_confirmed_rows() {
    // GIVEN a polling relay whose broker connection runs through a proxy
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(support::amqp_addr()).await;
    let cfg = polling(&db, &consumer.exchange).patient_broker_through(proxy.addr);
    let relay = InProcess::start(&cfg).await;
    let client = db.client().await;

    // WHEN 300 events are written, one per transaction, sequentially (so the default
    // order_by = "created_at, id" is commit order: within one transaction created_at is
    // equal and the random id decides, which the README points out)
    let mut expected = Vec::new();
    for i in 0..300 {
        let agg = format!("p{}", i % 5);
        let ids = insert_events(&client, "wallet", std::slice::from_ref(&agg), "Polled").await;
        expected.push((agg, ids[0].clone()));
    }
    // THEN all arrive in order, without the LSN header, and the table empties
    let ids = support::ids_of(&expected);
    consumer.wait_for_ids(&ids, Duration::from_secs(60)).await;
    check_delivery(&expected, &consumer.received());
    assert!(consumer.received().iter().all(|m| m.header("x-outbox-lsn").is_none()));
    support::wait_until(Duration::from_secs(10), "published rows deleted", || {
        let db = &db;
        async move { rows(db, "SELECT count(*) FROM outbox").await == 0 }
    })
    .await;

    // WHEN the broker goes silent THEN new rows stay in the table: nothing is deleted unconfirmed
    proxy.set_mode(Mode::Blackhole);
    let held = insert_events(&client, "wallet", &["h".into(), "h".into()], "Held").await;
    support::holds_throughout(Duration::from_secs(3), || async {
        assert_eq!(rows(&db, "SELECT count(*) FROM outbox").await, 2, "a row was deleted before its confirm");
    })
    .await;
    proxy.set_mode(Mode::Pass);
    consumer.wait_for_ids(&held, Duration::from_secs(30)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mark_mode_keeps_rows_and_one_instance_holds_the_lock() {
    // GIVEN a polling relay that marks published rows
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("ALTER TABLE outbox ADD COLUMN published_at timestamptz").await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = polling(&db, &consumer.exchange).mark_published("published_at");
    let a = InProcess::start(&cfg).await;
    // AND a second instance on the same lock name, which stands by
    let b_cfg = cfg.clone();
    let b = tokio::spawn(async move {
        let b = InProcess::start_any(&b_cfg).await;
        support::wait_until(Duration::from_secs(15), "second instance on standby", || {
            let standby = b.standing_by();
            async move { standby }
        })
        .await;
        b
    })
    .await
    .unwrap();

    // WHEN events commit THEN they arrive once and their rows are marked, not deleted
    let ids = insert_events(&client, "wallet", &["m".into(), "m".into(), "n".into()], "Marked").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(20)).await;
    support::wait_until(Duration::from_secs(10), "rows marked, not deleted", || {
        let db = &db;
        async move { rows(db, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL").await == 3 }
    })
    .await;
    // AND marked rows are not published again, over several poll intervals (50 ms)
    support::holds_throughout(Duration::from_millis(300), || async {
        assert_eq!(consumer.count(), 3, "marked rows are not republished");
    })
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    db.drop_all().await;
}

/// A polling relay whose one route takes only `event_type = 'Wanted'`, 5 rows a batch.
fn wanted_only(db: &TestDb, exchange: &str) -> TestConfig {
    TestConfig::new(&db.url)
        .route(Route::outbox(exchange).when("event_type", "Wanted"))
        .polling()
        .poll_interval(Duration::from_millis(50))
        .batch_size(5)
}

/// 12 rows no route matches (one transaction), then 7 matched ones (a later
/// transaction, so a later `created_at`): the first two batches hold only
/// unmatched rows. Returns the matched ids.
async fn unmatched_then_matched(db: &TestDb) -> Vec<String> {
    let client = db.client().await;
    let aggs: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    insert_events(&client, "wallet", &aggs, "Other").await;
    let aggs: Vec<String> = (0..7).map(|i| format!("w{i}")).collect();
    insert_events(&client, "wallet", &aggs, "Wanted").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_deletes_only_what_a_route_published_and_reads_past_a_full_batch_of_unmatched_rows() {
    // GIVEN 12 rows no route matches ahead of 7 that the one route's `when` takes, batch_size 5
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = wanted_only(&db, &consumer.exchange);
    let wanted = unmatched_then_matched(&db).await;
    // WHEN the relay polls
    let relay = InProcess::start(&cfg).await;
    // THEN the matched rows arrive (polling did not stall behind the unmatched ones) and are deleted
    consumer.wait_for_ids(&wanted, Duration::from_secs(20)).await;
    support::wait_until(Duration::from_secs(10), "published rows deleted", || {
        let db = &db;
        async move { rows(db, "SELECT count(*) FROM outbox WHERE event_type = 'Wanted'").await == 0 }
    })
    .await;
    // AND the unmatched rows stay, unpublished, over several poll intervals (50 ms)
    support::holds_throughout(Duration::from_millis(500), || async {
        assert_eq!(rows(&db, "SELECT count(*) FROM outbox WHERE event_type = 'Other'").await, 12);
        assert_eq!(consumer.count(), 7, "only matched rows are published");
    })
    .await;
    // AND rows written later behind them still arrive
    let later = insert_events(&db.client().await, "wallet", &["w7".into()], "Wanted").await;
    consumer.wait_for_ids(&later, Duration::from_secs(20)).await;
    // AND check counts the rows that stay
    let out = cfg.run_binary(&["check"], &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("12 unpublished row(s) match no route"), "{text}");
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_marks_only_what_a_route_published() {
    // GIVEN the same rows, and a relay that marks published rows
    let db = TestDb::new().await;
    db.client().await.batch_execute("ALTER TABLE outbox ADD COLUMN published_at timestamptz").await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = wanted_only(&db, &consumer.exchange).mark_published("published_at");
    let wanted = unmatched_then_matched(&db).await;
    let relay = InProcess::start(&cfg).await;
    // THEN the matched rows arrive and are marked; the unmatched ones are not
    consumer.wait_for_ids(&wanted, Duration::from_secs(20)).await;
    support::wait_until(Duration::from_secs(10), "published rows marked", || {
        let db = &db;
        async move {
            rows(db, "SELECT count(*) FROM outbox WHERE event_type = 'Wanted' AND published_at IS NOT NULL").await == 7
        }
    })
    .await;
    support::holds_throughout(Duration::from_millis(500), || async {
        assert_eq!(rows(&db, "SELECT count(*) FROM outbox WHERE published_at IS NULL").await, 12);
        assert_eq!(consumer.count(), 7, "only matched rows are published");
    })
    .await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}
