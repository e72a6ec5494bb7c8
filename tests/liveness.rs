//! A database that goes silent (a black hole: no RST, no data) is noticed
//! within `source.receive_timeout`; of two instances the cut-off one stops
//! publishing while the other takes over; and a PostgreSQL shutdown is never
//! held up by a position the broker has not confirmed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::cluster::{PgCluster, PgOptions};
use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::http::{get, metric, scrape};
use crate::support::proxy::{Mode, Proxy};
use crate::support::relay::InProcess;
use crate::support::{self, writer, TestDb};

const RECEIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Slack for the session to end and the probes to be read.
const MARGIN: Duration = Duration::from_secs(3);

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let mut u = url::Url::parse(url).expect("postgres url");
    u.set_ip_host(addr.ip()).expect("an IP host");
    u.set_port(Some(addr.port())).expect("a port");
    u.to_string()
}

async fn active(http: SocketAddr) -> Option<f64> {
    let text = tokio::time::timeout(Duration::from_secs(2), scrape(http)).await.ok()?;
    metric(&text, "outbox_relay_active", "")
}

async fn published(http: SocketAddr) -> f64 {
    metric(&scrape(http).await, "outbox_relay_events_published_total", "").unwrap_or(0.0)
}

/// Whether the relay says it is inactive: gauge 0 and `/readyz` not "active".
async fn inactive(http: SocketAddr) -> bool {
    let (status, body) = get(http, "/readyz").await;
    active(http).await == Some(0.0) && !(status == 200 && body.starts_with("active"))
}

/// A relay (replication, or polling when `polling`) whose PostgreSQL
/// connections go through a proxy, black-holed mid-stream: it must be
/// inactive within receive_timeout and a margin, then resume and lose
/// nothing. Returns how long it took to notice and the duplicate count.
async fn black_hole_and_back(polling: bool) -> (Duration, usize) {
    // GIVEN a relay whose PostgreSQL connections go through a proxy, receive_timeout = 3 s
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(support::pg_addr()).await;
    let mut cfg = TestConfig::outbox(&through(&db.url, proxy.addr), &consumer.exchange)
        .receive_timeout(RECEIVE_TIMEOUT)
        .source_connect_timeout(Duration::from_secs(3));
    if polling {
        cfg = cfg.polling();
    } else {
        cfg.setup();
    }
    let relay = InProcess::start(&cfg).await;
    // (enough that the writer is still writing through the black hole: the
    // relay catches up faster than one session inserts)
    let w = writer(db.url.clone(), "bh", 1000, 5);
    consumer.wait_for_count(100, Duration::from_secs(30)).await;

    // WHEN the proxy black-holes every connection mid-stream
    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();

    // THEN within receive_timeout and a margin the relay is not active
    support::wait_until(RECEIVE_TIMEOUT + MARGIN, "active = 0 and /readyz not active", || inactive(relay.http)).await;
    let noticed = cut.elapsed();

    // AND once the proxy passes again it resumes, and every event arrives
    proxy.set_mode(Mode::Pass);
    let expected = w.await.unwrap();
    consumer.wait_for_ids(&support::ids_of(&expected), Duration::from_secs(90)).await;
    let dups = check_delivery(&expected, &consumer.received());
    // (the events may all be in before the relay is back: it catches up fast,
    // and a reconnect may first find the slot still held by the old walsender)
    support::wait_until(Duration::from_secs(30), "streaming again", || {
        let s = relay.streaming();
        async move { s }
    })
    .await;
    relay.stop().await.expect("clean stop");
    db.drop_all().await;
    (noticed, dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_database_is_noticed_within_the_receive_timeout_and_nothing_is_lost() {
    let (noticed, dups) = black_hole_and_back(false).await;
    println!(
        "black hole noticed after {noticed:?} (receive_timeout {RECEIVE_TIMEOUT:?}); 5000 events, {dups} duplicates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_instances_the_cut_off_one_stops_publishing_and_the_other_takes_over() {
    // GIVEN a private cluster that drops a silent walsender after 5 s
    let pg = PgCluster::start(PgOptions { extra_conf: vec!["wal_sender_timeout = '5s'".into()], ..Default::default() })
        .await;
    pg.local_client("postgres").await.batch_execute("CREATE DATABASE app").await.unwrap();
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.unwrap();
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(pg.addr()).await;
    // AND instance A active through the proxy, B a standby connected directly
    let a_cfg = TestConfig::outbox(&through(&pg.url("app"), proxy.addr), &consumer.exchange)
        .receive_timeout(RECEIVE_TIMEOUT)
        .source_connect_timeout(Duration::from_secs(3));
    a_cfg.setup();
    let a = InProcess::start(&a_cfg).await;
    let b_cfg = TestConfig::outbox(&pg.url("app"), &consumer.exchange).receive_timeout(RECEIVE_TIMEOUT);
    let b = InProcess::start_any(&b_cfg).await;
    support::wait_until(Duration::from_secs(30), "B stands by", || {
        let s = b.standing_by();
        async move { s }
    })
    .await;
    let w = writer(pg.url("app"), "ab", 300, 5);
    consumer.wait_for_count(100, Duration::from_secs(30)).await;

    // WHEN A's database connections are black-holed
    proxy.set_mode(Mode::Blackhole);
    let cut = Instant::now();

    // THEN A stops within receive_timeout (and a margin) and publishes nothing more
    support::wait_until(RECEIVE_TIMEOUT + MARGIN, "A inactive", || inactive(a.http)).await;
    let noticed = cut.elapsed();
    let a_published = published(a.http).await;
    // AND B takes over once PostgreSQL freed the slot (wal_sender_timeout)
    support::wait_until(Duration::from_secs(30), "B active", || async { active(b.http).await == Some(1.0) }).await;
    println!("A stopped {noticed:?} after the cut; B active {:?} after it", cut.elapsed());

    // AND nothing is lost, and A published nothing after it stopped
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);
    consumer.wait_for_ids(&ids, Duration::from_secs(90)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("{} events across the takeover: {dups} duplicates", ids.len());
    assert_eq!(published(a.http).await, a_published, "the cut-off instance published after it stopped");
    assert_eq!(active(a.http).await, Some(0.0));
    b.stop().await.expect("B stops cleanly");
    a.stop().await.expect("A stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_held_by_unroutable_messages_does_not_hold_up_a_fast_shutdown() {
    // GIVEN a private cluster and a relay whose exchange has no queue (block)
    let pg = PgCluster::start(PgOptions::default()).await;
    pg.local_client("postgres").await.batch_execute("CREATE DATABASE app").await.unwrap();
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.unwrap();
    let exchange = support::random_name("x.held.");
    let consumer = Consumer::declare_only(&exchange).await;
    let cfg = TestConfig::outbox(&pg.url("app"), &exchange).source_connect_timeout(Duration::from_secs(3));
    cfg.setup();
    let relay = InProcess::start(&cfg).await;
    // AND events committed that the broker cannot route: the position is held
    let client = pg.local_client("app").await;
    let mut ids = Vec::new();
    for t in 0..3 {
        let aggs: Vec<String> = (0..5).map(|i| format!("held-{t}-{i}")).collect();
        ids.extend(support::insert_events(&client, "wallet", &aggs, "Held").await);
    }
    drop(client);
    support::wait_until(Duration::from_secs(30), "the relay retries unroutable events", || async {
        metric(&scrape(relay.http).await, "outbox_relay_events_unroutable_total", "").unwrap_or(0.0) >= 1.0
    })
    .await;

    // WHEN PostgreSQL is stopped (pg_ctl stop -m fast)
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), pg.stop())
        .await
        .unwrap_or_else(|_| panic!("pg_ctl stop -m fast did not finish within 20 s\n{}", pg.log_tail()));
    let took = t0.elapsed();
    println!("pg_ctl stop -m fast with a held position took {took:?}");
    // THEN it completes within about 10 s
    assert!(took < Duration::from_secs(10), "the shutdown took {took:?}");

    // AND after the cluster is back and a queue is bound, every event arrives
    pg.start_again().await;
    let consumer = consumer.bind_queue("#").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(60)).await;
    support::wait_until(Duration::from_secs(30), "streaming", || {
        let s = relay.streaming();
        async move { s }
    })
    .await;
    relay.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_lock_holder_whose_connection_goes_silent_stops_within_the_receive_timeout() {
    let (noticed, dups) = black_hole_and_back(true).await;
    println!("polling lock holder stopped {noticed:?} after the cut; 5000 events, {dups} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_running_transaction_delays_the_first_slot_creation_but_the_statement_timeout_does_not_fail_it() {
    // GIVEN a transaction that stays open (with an xid) longer than the relay's statement_timeout
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let long = db.client().await;
    long.batch_execute("BEGIN; SELECT txid_current();").await.unwrap();

    // WHEN a relay with receive_timeout = 2 s (so statement_timeout 2 s) starts and must create its slot
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).receive_timeout(Duration::from_secs(2));
    let relay = InProcess::start_any(&cfg).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // the transaction's length, not a synchronisation
    assert!(!relay.streaming(), "the slot cannot exist while that transaction runs");
    long.batch_execute("COMMIT").await.unwrap();

    // THEN the creation simply waited: it streams, without a failed attempt in between
    support::wait_until(Duration::from_secs(15), "relay streaming", || {
        let s = relay.streaming();
        async move { s }
    })
    .await;
    let reconnects = metric(&scrape(relay.http).await, "outbox_relay_reconnects_total", "source").unwrap_or(-1.0);
    assert_eq!(reconnects, 0.0, "slot creation failed on the statement timeout and was retried");
    let ids = support::insert_events(&db.client().await, "wallet", &["a".into()], "AfterWait").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(20)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}
