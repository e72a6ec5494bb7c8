//! Crashes and graceful stops of the relay binary: SIGKILL, SIGTERM.

use std::time::Duration;

use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::relay::Process;
use crate::support::{self, writer, TestDb};

/// The SIGKILL scenario: GIVEN the relay binary streaming while a writer
/// commits `txns` transactions of `per_txn` events, WHEN it is SIGKILLed
/// `kills` times, each time after `progress` more deliveries, and restarted,
/// THEN every committed event arrives at least once (within `deliver_within`),
/// first deliveries in commit order per aggregate, and the last instance
/// exits cleanly on SIGTERM. Returns the number of duplicate deliveries.
async fn sigkilled_repeatedly(
    tag: &'static str,
    (txns, per_txn): (usize, usize),
    kills: usize,
    progress: usize,
    deliver_within: Duration,
) -> usize {
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    cfg.setup();
    let w = writer(db.url.clone(), tag, txns, per_txn);

    let mut relay = Process::spawn(&cfg);
    for round in 1..=kills {
        consumer.wait_for_more(progress, txns * per_txn, Duration::from_secs(60)).await;
        relay.kill().await;
        println!("kill {round}: {} deliveries so far", consumer.count());
        relay = Process::spawn(&cfg);
    }
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);

    consumer.wait_for_ids(&ids, deliver_within).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("SIGKILL x{kills} over {} events: {dups} duplicates", ids.len());
    let status = relay.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    db.drop_all().await;
    dups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_mid_stream_loses_nothing() {
    // 6,000 events, a kill after every 300 deliveries
    sigkilled_repeatedly("k", (600, 10), 3, 300, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_zero_and_a_restart_publishes_no_duplicates() {
    // GIVEN the relay binary streaming while a writer commits 3,000 events
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    cfg.setup();
    let w = writer(db.url.clone(), "t", 300, 10);
    let relay = Process::spawn(&cfg);
    consumer.wait_for_count(500, Duration::from_secs(60)).await;

    // WHEN it gets SIGTERM mid-stream
    let status = relay.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");

    // AND a new instance takes over after the writer finished
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);
    let relay = Process::spawn(&cfg);
    consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;

    // THEN nothing was published twice
    let dups = check_delivery(&expected, &consumer.received());
    println!("SIGTERM then restart over {} events: {dups} duplicates", ids.len());
    assert_eq!(dups, 0, "a graceful stop followed by a start publishes no duplicates");
    let log = relay.log_text();
    let status = relay.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{log}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_ten_times_during_50k_events_loses_nothing() {
    // 50,000 events, a kill after every 2,000 deliveries
    let dups = sigkilled_repeatedly("m", (1000, 50), 10, 2000, Duration::from_secs(180)).await;
    // AND the duplicates stay within twice the window (1,000) per crash
    assert!(dups <= 10 * 2 * 1000, "duplicates {dups} exceed twice the window per crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_connecting_does_not_wait_for_the_connect_timeout() {
    use crate::support::proxy::{Mode, Proxy};
    use crate::support::relay::InProcess;
    // GIVEN a relay whose database never answers (a black hole), with a 30 s connect timeout
    let proxy = Proxy::start(support::pg_addr()).await;
    proxy.set_mode(Mode::Blackhole);
    let cfg = TestConfig::outbox(&format!("postgres://postgres:postgres@{}/postgres", proxy.addr), "x")
        .source_connect_timeout(Duration::from_secs(30));
    let relay = InProcess::start_any(&cfg).await;
    support::wait_until(Duration::from_secs(5), "a connection attempt is under way", || {
        let n = proxy.connections();
        async move { n >= 1 }
    })
    .await;
    // WHEN it is asked to stop THEN it stops at once, cleanly
    let asked = std::time::Instant::now();
    relay.stop().await.expect("a clean stop");
    assert!(asked.elapsed() < Duration::from_secs(3), "stopping took {:?}", asked.elapsed());
}
