//! Broker faults: cuts and black holes through a proxy, a memory alarm on a private node.

use std::time::Duration;

use crate::support::cluster::RabbitNode;
use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::http::{metric, scrape};
use crate::support::proxy::{Mode, Proxy};
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, writer, TestDb};

async fn reconnects(http: std::net::SocketAddr, target: &str) -> f64 {
    metric(&scrape(http).await, "outbox_relay_reconnects_total", &format!("target=\"{target}\"")).unwrap_or(0.0)
}

/// A relay whose broker connection goes through a proxy, with one event
/// ("Before") already delivered.
struct Proxied {
    db: TestDb,
    consumer: Consumer,
    proxy: Proxy,
    relay: InProcess,
    client: tokio_postgres::Client,
    before: Vec<String>,
}

impl Proxied {
    async fn start(confirm_timeout: Duration, heartbeat: Duration) -> Proxied {
        let db = TestDb::new().await;
        let consumer = Consumer::start("#").await;
        let proxy = Proxy::start(support::amqp_addr()).await;
        let cfg = TestConfig::outbox(&db.url, &consumer.exchange)
            .broker_through(proxy.addr)
            .confirm_timeout(confirm_timeout)
            .heartbeat(heartbeat)
            .broker_connect_timeout(Duration::from_secs(2))
            .shutdown_timeout(Duration::from_secs(5));
        let relay = InProcess::start(&cfg).await;
        let client = db.client().await;
        let before = insert_events(&client, "wallet", &["a".into()], "Before").await;
        consumer.wait_for_ids(&before, Duration::from_secs(20)).await;
        Proxied { db, consumer, proxy, relay, client, before }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutting_the_broker_connection_five_times_during_20k_events_loses_nothing() {
    // GIVEN a relay whose broker connection runs through a proxy, and a writer of 20,000 events
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(support::amqp_addr()).await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).broker_through(proxy.addr).max_in_flight(500);
    let relay = InProcess::start(&cfg).await;
    let w = writer(db.url.clone(), "c", 400, 50);

    // WHEN the broker connection is cut five times, each time after progress
    for cut in 1..=5 {
        consumer.wait_for_more(1500, 20_000, Duration::from_secs(60)).await;
        proxy.cut();
        let http = relay.http;
        support::wait_until(Duration::from_secs(30), "the relay notices the cut", || async move {
            reconnects(http, "broker").await >= cut as f64
        })
        .await;
    }
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);

    // THEN every event arrives, first deliveries in commit order, duplicates bounded by what was in flight
    consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("broker cut x5 over {} events: {dups} duplicates", ids.len());
    // Per cut, at most the window (500) plus the rest of one 50-event
    // transaction: what the broker confirmed before the cut is reported to
    // the slot before the pipeline restarts.
    assert!(dups <= 5 * (500 + 50), "duplicates {dups} exceed what was in flight per fault");
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_broker_trips_the_confirm_timeout_and_the_relay_recovers() {
    // GIVEN a relay with a 2 s confirm timeout behind a proxy (heartbeats too slow to notice first)
    let Proxied { db, consumer, proxy, relay, client, before } =
        Proxied::start(Duration::from_secs(2), Duration::from_secs(60)).await;

    // WHEN the broker goes silent (no RST) while events commit
    proxy.set_mode(Mode::Blackhole);
    let during = insert_events(&client, "wallet", &["a".into(), "b".into()], "During").await;
    let http = relay.http;
    // THEN the confirm timeout fires and the relay tears the connection down
    support::wait_until(Duration::from_secs(20), "confirm timeout counted as a broker reconnect", || async move {
        reconnects(http, "broker").await >= 1.0
    })
    .await;
    assert!(consumer.received().iter().all(|m| !during.contains(&m.message_id)));
    // AND once the broker answers again everything arrives, in order
    proxy.set_mode(Mode::Pass);
    consumer.wait_for_ids(&during, Duration::from_secs(60)).await;
    let mut expected = vec![("a".to_owned(), before[0].clone())];
    expected.push(("a".into(), during[0].clone()));
    expected.push(("b".into(), during[1].clone()));
    check_delivery(&expected, &consumer.received());
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_silent_while_nothing_is_in_flight_is_noticed_by_heartbeats() {
    // GIVEN an idle relay with 2 s heartbeats and a confirm timeout far too long to notice anything
    let Proxied { db, consumer, proxy, relay, client, .. } =
        Proxied::start(Duration::from_secs(120), Duration::from_secs(2)).await;
    let http = relay.http;
    let reconnects_before = reconnects(http, "broker").await;

    // WHEN the broker goes silent (no RST, no heartbeats) with nothing in flight
    let silent_at = std::time::Instant::now();
    proxy.set_mode(Mode::Blackhole);
    // THEN two heartbeat intervals later the relay gives the connection up
    support::wait_until(Duration::from_secs(15), "a heartbeat timeout counted as a broker reconnect", || async move {
        reconnects(http, "broker").await > reconnects_before
    })
    .await;
    let noticed = silent_at.elapsed();
    assert!(noticed >= Duration::from_secs(3), "not before two intervals of silence: {noticed:?}");
    // AND once the broker answers again, what was committed meanwhile arrives
    let during = insert_events(&client, "wallet", &["a".into()], "During").await;
    proxy.set_mode(Mode::Pass);
    consumer.wait_for_ids(&during, Duration::from_secs(60)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_pauses_publishing_without_a_reconnect_and_nothing_is_lost() {
    // GIVEN a private RabbitMQ node, a relay on it with a 2 s confirm timeout, and one event delivered
    let rabbit = RabbitNode::start().await;
    let (exchange, queue) = Consumer::declare_durable(&rabbit.amqp_url(), "#").await;
    let consumer = Consumer::consume_existing(&rabbit.amqp_url(), &exchange, &queue).await;
    let db = TestDb::new().await;
    let cfg = TestConfig::outbox(&db.url, &exchange)
        .broker_url(&rabbit.amqp_url())
        .confirm_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(5));
    let relay = InProcess::start(&cfg).await;
    let client = db.client().await;
    let before = insert_events(&client, "wallet", &["a".into()], "Before").await;
    consumer.wait_for_ids(&before, Duration::from_secs(20)).await;
    let http = relay.http;
    let reconnects_before = reconnects(http, "broker").await;

    // WHEN a memory alarm blocks every publisher (connection.blocked) while events commit
    rabbit.ctl(&["set_vm_memory_high_watermark", "0"]).await;
    let during = insert_events(&client, "wallet", &["a".into(), "b".into()], "During").await;
    // THEN for more than twice the confirm timeout nothing of them arrives and the relay keeps its
    // connection: a block is the broker's flow control, not a dead connection
    let held_until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < held_until {
        assert!(
            consumer.received().iter().all(|m| !during.contains(&m.message_id)),
            "published through a memory alarm"
        );
        assert_eq!(reconnects(http, "broker").await, reconnects_before, "a block is not a failure");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // AND once the alarm clears, everything arrives in order, still on the same connection
    rabbit.ctl(&["set_vm_memory_high_watermark", "0.4"]).await;
    consumer.wait_for_ids(&during, Duration::from_secs(60)).await;
    let mut expected = vec![("a".to_owned(), before[0].clone())];
    expected.push(("a".into(), during[0].clone()));
    expected.push(("b".into(), during[1].clone()));
    check_delivery(&expected, &consumer.received());
    assert_eq!(reconnects(http, "broker").await, reconnects_before);
    relay.stop().await.unwrap();
    db.drop_all().await;
}

/// Declares, beside the consumer's queue, a queue bound to `exchange` that
/// refuses every message (`x-max-length = 0`, `x-overflow = reject-publish`),
/// so every publish is nacked; returns the open connection's channel to delete it.
async fn a_queue_that_nacks_everything(exchange: &str) -> (amqprs::connection::Connection, String) {
    use amqprs::channel::{QueueBindArguments, QueueDeclareArguments};
    use amqprs::{FieldTable, FieldValue};
    let conn = amqprs::connection::Connection::open(&crate::support::consumer::url_args(&support::amqp_url()))
        .await
        .expect("connection");
    let ch = conn.open_channel(None).await.expect("channel");
    let queue = support::random_name("q.full.");
    let mut args = FieldTable::new();
    args.insert("x-max-length".try_into().unwrap(), FieldValue::l(0));
    args.insert("x-overflow".try_into().unwrap(), FieldValue::from("reject-publish"));
    ch.queue_declare(QueueDeclareArguments::new(&queue).auto_delete(false).arguments(args).finish())
        .await
        .expect("declare the full queue");
    ch.queue_bind(QueueBindArguments::new(&queue, exchange, "#")).await.expect("bind the full queue");
    (conn, queue)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nacked_four_times_in_a_row_reopens_the_connection_and_nothing_is_lost() {
    // GIVEN a relay, and beside the consumer's queue one that refuses every message
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    let relay = InProcess::start(&cfg).await;
    let http = relay.http;
    let (conn, full) = a_queue_that_nacks_everything(&consumer.exchange).await;

    // WHEN events commit: every publish of them is nacked
    let client = db.client().await;
    let ids = insert_events(&client, "wallet", &["a".into(), "a".into(), "b".into()], "Nacked").await;
    let committed = db.current_wal().await;

    // THEN after four nacks of the same message the relay reopens its connection
    // (RabbitMQ can keep nacking on one channel; a new one is a fresh start)
    support::wait_until(Duration::from_secs(30), "a reconnect after repeated nacks", || async move {
        reconnects(http, "broker").await >= 1.0
    })
    .await;
    let nacks = metric(&scrape(http).await, "outbox_relay_publish_nacks_total", "").unwrap_or(0.0);
    assert!(nacks >= 4.0, "{nacks} nacks before the reconnect");
    let held = db.confirmed_flush().await.unwrap_or(0);
    assert!(held < committed, "the slot moved past nacked events");
    // AND once the queue takes messages again (deleted here), the slot moves past the events,
    // which arrived in order
    let ch = conn.open_channel(None).await.expect("channel");
    ch.queue_delete(amqprs::channel::QueueDeleteArguments::new(&full)).await.expect("delete the full queue");
    // (the consumer's own queue got a copy of every nacked publish, so the slot tells)
    db.wait_confirmed_past(committed, Duration::from_secs(60)).await;
    consumer.wait_for_ids(&ids, Duration::from_secs(60)).await;
    let expected: Vec<(String, String)> =
        ["a", "a", "b"].iter().map(|a| a.to_string()).zip(ids.iter().cloned()).collect();
    let dups = check_delivery(&expected, &consumer.received());
    println!(
        "nacked x{nacks} before a reconnect; {dups} duplicates (copies the consumer's queue got per nacked publish)"
    );
    let _ = conn.close().await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}
