//! Memory bounded by the window and the byte budget, not by the data: a large
//! transaction, an unroutable backlog under `block`, a large payload, a body
//! larger than the broker accepts. The
//! relay runs as a binary and its peak RSS (VmHWM) is read from /proc. The
//! bounds here are generous safety nets; `scripts/bench-memory.sh` measures
//! the targets.

use std::time::Duration;

use crate::support::cluster::RabbitNode;
use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::http::{metric, scrape};
use crate::support::relay::{InProcess, Process};
use crate::support::{self, TestDb};

const MIB: u64 = 1 << 20;

/// Inserts `n` small outbox rows in ONE transaction.
async fn one_big_transaction(db: &TestDb, n: usize, aggregate_type: &str) {
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT '{aggregate_type}', 'a-' || (g % 100), 'Big', jsonb_build_object('n', g) \
             FROM generate_series(1, {n}) g"
        ))
        .await
        .expect("one big transaction");
}

/// A fresh database with the relay binary streaming to a queue bound to everything.
async fn relay_binary_to_a_queue() -> (TestDb, Consumer, Process) {
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    cfg.setup();
    let relay = Process::spawn(&cfg);
    (db, consumer, relay)
}

/// The relay's peak RSS so far is below `mib` MiB (printed either way).
#[track_caller]
fn assert_peak_below(relay: &Process, mib: u64, what: &str) {
    let peak = relay.peak_rss();
    println!("{what}: peak RSS {} MiB", peak / MIB);
    assert!(peak < mib * MIB, "peak RSS {} MiB for {what}", peak / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_100k_rows_is_published_in_parts_within_a_small_rss() {
    // GIVEN a relay binary streaming to a bound queue
    let (db, consumer, relay) = relay_binary_to_a_queue().await;

    // WHEN one transaction commits 100,000 rows
    let n = 100_000;
    one_big_transaction(&db, n, "wallet").await;
    let end = db.current_wal().await;

    // THEN every row arrives and the slot moves past it, while the relay stays small
    consumer.wait_for_count(n, Duration::from_secs(240)).await;
    db.wait_confirmed_past(end, Duration::from_secs(60)).await;
    assert_peak_below(&relay, 96, "a 100k-row transaction");
    relay.terminate(Duration::from_secs(30)).await;
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_backlog_under_block_stays_within_the_window_and_is_logged_by_the_interval() {
    // GIVEN an exchange with no queue yet, the default policy (block) and a window of 200
    let db = TestDb::new().await;
    let exchange = support::random_name("x.");
    let consumer = Consumer::declare_only(&exchange).await;
    let mut cfg = TestConfig::outbox(&db.url, &exchange).max_in_flight(200);
    let http = cfg.fixed_http_port();
    cfg.setup();
    let relay = Process::spawn(&cfg);

    // WHEN 5,000 events of 2 KiB commit that no queue takes
    db.client()
        .await
        .batch_execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             SELECT 'wallet', 'a-' || (g % 50), 'Unbound', jsonb_build_object('pad', repeat('x', 2048)) \
             FROM generate_series(1, 5000) g",
        )
        .await
        .unwrap();

    // THEN messages waiting for a republish count against the window: in flight never exceeds it
    support::wait_until(Duration::from_secs(20), "returns under way", || async move {
        metric(&scrape(http).await, "outbox_relay_events_unroutable_total", "").unwrap_or(0.0) >= 400.0
    })
    .await;
    support::holds_throughout(Duration::from_secs(5), || async move {
        let in_flight = metric(&scrape(http).await, "outbox_relay_in_flight", "").unwrap_or(0.0);
        assert!(in_flight <= 200.0, "{in_flight} in flight with a window of 200");
    })
    .await;
    // AND the repeated returns are logged by the interval with a count, not once per attempt
    let returns = metric(&scrape(http).await, "outbox_relay_events_unroutable_total", "").unwrap_or(0.0);
    let lines = relay.log_text().lines().filter(|l| l.contains("unroutable message")).count();
    println!("unroutable backlog: {returns} returns, {lines} log lines, peak RSS {} MiB", relay.peak_rss() / MIB);
    assert!(lines <= 5, "{lines} log lines for {returns} returns");

    // WHEN a queue is bound THEN every event arrives
    let consumer = consumer.bind_queue("#").await;
    consumer.wait_for_count(5000, Duration::from_secs(120)).await;
    assert_peak_below(&relay, 96, "an unroutable backlog");
    relay.terminate(Duration::from_secs(30)).await;
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_payload_costs_at_most_four_times_its_size() {
    // GIVEN a relay binary streaming to a bound queue
    let (db, consumer, relay) = relay_binary_to_a_queue().await;

    // WHEN one row carries a 50 MiB payload
    db.client()
        .await
        .batch_execute(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('wallet', 'big', 'Huge', jsonb_build_object('blob', repeat('x', 50 * 1024 * 1024)))",
        )
        .await
        .unwrap();

    // THEN it arrives whole, and the relay's peak RSS stays under four times its size
    consumer.wait_for_count(1, Duration::from_secs(120)).await;
    let got = consumer.received();
    assert!(got[0].body.len() > 50 * 1024 * 1024, "{} bytes", got[0].body.len());
    assert_peak_below(&relay, 200, "a 50 MiB payload");
    relay.terminate(Duration::from_secs(30)).await;
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_broker_accepts_stops_with_a_data_error_naming_the_event() {
    // GIVEN a private RabbitMQ node that accepts messages of at most 1 MiB
    let rabbit = RabbitNode::start().await;
    rabbit.ctl(&["eval", "application:set_env(rabbit, max_message_size, 1048576)."]).await;
    let (exchange, _queue) = Consumer::declare_durable(&rabbit.amqp_url(), "#").await;
    let db = TestDb::new().await;
    let cfg = TestConfig::outbox(&db.url, &exchange).broker_url(&rabbit.amqp_url());
    let relay = InProcess::start(&cfg).await;

    // WHEN a row's payload is 2 MiB
    let id = support::uuid();
    db.client()
        .await
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) \
             VALUES ('{id}', 'wallet', 'big', 'Huge', jsonb_build_object('blob', repeat('x', 2 * 1024 * 1024)))"
        ))
        .await
        .unwrap();

    // THEN the relay stops with a Data error naming the event, instead of restarting on it forever
    let err = relay.stopped_with_error("a body over max_message_size").await;
    assert_eq!(err.kind(), outbox_relay::ErrorKind::Data, "{}", err.chain());
    assert!(err.chain().contains(&id) && err.chain().contains("max_message_size"), "{}", err.chain());
    db.drop_all().await;
}
