//! Broker failover on a three-node RabbitMQ cluster (`support::rabbit_cluster`):
//! the relay lists the three nodes in `broker.url` and publishes to a quorum
//! queue; a node it is connected to stops, its connection is cut, or the whole
//! cluster stops. Nothing is lost, first deliveries keep commit order, and
//! duplicates stay within what was in flight per fault.
//!
//! The queue is read after the faults, from a running node, so the faults
//! never hit the test's own consumer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::config::TestConfig;
use crate::support::consumer::check_delivery;
use crate::support::http::{get, metric, scrape};
use crate::support::proxy::Proxy;
use crate::support::rabbit_cluster::{self, declare_quorum, RabbitCluster};
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, TestDb};

/// `broker.max_in_flight`.
const WINDOW: usize = 200;
/// The largest transaction the writer commits.
const LARGEST_TXN: usize = 10;
/// What one fault may cost in duplicates: the window, plus the rest of one transaction.
const PER_FAULT: usize = WINDOW + LARGEST_TXN;

/// The `outbox_relay_broker_node` samples: (node label, value).
fn broker_nodes(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("outbox_relay_broker_node{"))
        .filter_map(|l| {
            let node = l.split("node=\"").nth(1)?.split('"').next()?.to_owned();
            Some((node, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The node the relay says it is connected to (the one sample at 1), if any.
async fn connected(http: SocketAddr) -> Option<String> {
    let nodes = broker_nodes(&scrape(http).await);
    let up: Vec<&String> = nodes.iter().filter(|(_, v)| *v == 1.0).map(|(n, _)| n).collect();
    assert!(up.len() <= 1, "connected to several nodes at once: {nodes:?}");
    up.first().map(|n| (*n).clone())
}

async fn reconnects(http: SocketAddr) -> f64 {
    metric(&scrape(http).await, "outbox_relay_reconnects_total", "target=\"broker\"").unwrap_or(0.0)
}

/// Waits until the relay reports a connected node other than `from`, and returns it.
async fn wait_connected_elsewhere(http: SocketAddr, from: Option<&str>, timeout: Duration) -> String {
    let seen = Mutex::new(None);
    let what = format!("the relay to be connected to a node other than {from:?}");
    support::wait_until(timeout, &what, || async {
        let now = connected(http).await;
        let moved = now.is_some() && now.as_deref() != from;
        *seen.lock().unwrap() = now;
        moved
    })
    .await;
    seen.into_inner().unwrap().expect("a node")
}

/// Commits transactions of 1 and of 10 events in turn, paced at a few hundred
/// events a second, until `stop` is cancelled (at most 40,000 events), so that
/// every fault lands mid-stream; counts the events committed in `written`.
/// Returns (aggregate, id) in commit order.
fn steady_writer(
    url: String,
    stop: CancellationToken,
    written: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let client = support::connect(&url).await;
        let mut expected = Vec::new();
        let mut t = 0;
        while !stop.is_cancelled() && expected.len() < 40_000 {
            let n = if t % 2 == 0 { 1 } else { LARGEST_TXN };
            let aggs: Vec<String> = (0..n).map(|i| format!("w-{}", (t * 7 + i) % 20)).collect();
            let ids = insert_events(&client, "wallet", &aggs, "TransactionAdded").await;
            expected.extend(aggs.into_iter().zip(ids));
            written.store(expected.len(), Ordering::SeqCst);
            t += 1;
            // pacing, not synchronisation
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        expected
    })
}

/// A quorum queue on the cluster, a relay publishing to it through `urls`,
/// and a steady writer.
struct Run {
    db: TestDb,
    exchange: String,
    queue: String,
    relay: InProcess,
    stop_writer: CancellationToken,
    writer: tokio::task::JoinHandle<Vec<(String, String)>>,
    written: Arc<AtomicUsize>,
    started: Instant,
}

impl Run {
    async fn start(cluster: &RabbitCluster, urls: &[String]) -> Run {
        let started = Instant::now();
        let (exchange, queue) = declare_quorum(&cluster.node(0).amqp_url(), "#").await;
        let db = TestDb::new().await;
        let cfg = TestConfig::outbox(&db.url, &exchange)
            .broker_urls(urls)
            .max_in_flight(WINDOW)
            .broker_connect_timeout(Duration::from_secs(2))
            .shutdown_timeout(Duration::from_secs(5));
        let relay = InProcess::start(&cfg).await;
        let stop_writer = CancellationToken::new();
        let written = Arc::new(AtomicUsize::new(0));
        let writer = steady_writer(db.url.clone(), stop_writer.clone(), written.clone());
        Run { db, exchange, queue, relay, stop_writer, writer, written, started }
    }

    /// Waits until `more` events more than now have been committed, then
    /// until the relay has confirmed them (its slot is past them).
    async fn progress(&self, more: usize, within: Duration) {
        let target = self.written.load(Ordering::SeqCst) + more;
        let what = format!("the writer to have committed {target} events");
        support::wait_until(within, &what, || async move { self.written.load(Ordering::SeqCst) >= target }).await;
        let now = self.db.current_wal().await;
        self.db.wait_confirmed_past(now, within).await;
    }

    /// Stops the writer, reads the whole queue from a running node, checks
    /// delivery and returns (events, duplicates).
    async fn finish(self, cluster: &RabbitCluster) -> (usize, usize) {
        self.stop_writer.cancel();
        let expected = self.writer.await.expect("writer");
        let ids = support::ids_of(&expected);
        let consumer = cluster.read_queue(&self.exchange, &self.queue).await;
        consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;
        let dups = check_delivery(&expected, &consumer.received());
        self.relay.stop().await.expect("the relay stops cleanly");
        cluster.delete_queue(&self.queue).await;
        self.db.drop_all().await;
        println!("  {} events, {dups} duplicates, {:?} in all", ids.len(), self.started.elapsed());
        (ids.len(), dups)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_connected_node_mid_stream_moves_the_relay_to_another_node_and_loses_nothing() {
    fault_on_the_connected_node(Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_connected_node_mid_stream_moves_the_relay_to_another_node_and_loses_nothing() {
    fault_on_the_connected_node(Fault::Kill).await;
}

/// How the connected node goes away.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `rabbitmqctl stop`: clients get `connection.close` (CONNECTION_FORCED).
    Stop,
    /// SIGKILL of the VM: sockets close with no AMQP goodbye.
    Kill,
}

async fn fault_on_the_connected_node(fault: Fault) {
    // GIVEN a relay listing the cluster's three nodes, publishing to a quorum queue while events commit
    let cluster = rabbit_cluster::shared().await;
    let run = Run::start(&cluster, &cluster.urls()).await;
    let http = run.relay.http;
    let from = wait_connected_elsewhere(http, None, Duration::from_secs(10)).await;
    let i = cluster.index_of_addr(&from).unwrap_or_else(|| panic!("connected to {from}, not a cluster node"));
    run.progress(1000, Duration::from_secs(30)).await;

    // WHEN the node it is connected to stops (or is killed) mid-stream
    let t0 = Instant::now();
    let go_away = async {
        match fault {
            Fault::Stop => cluster.stop_member(i).await,
            Fault::Kill => cluster.kill_member(i).await,
        }
    };
    let ((), to) = tokio::join!(go_away, async {
        let to = wait_connected_elsewhere(http, Some(&from), Duration::from_secs(60)).await;
        (to, t0.elapsed())
    });
    let (to, moved_in) = to;

    // THEN the relay moves to another node of the cluster and publishes there
    let j = cluster.index_of_addr(&to).unwrap_or_else(|| panic!("moved to {to}, not a cluster node"));
    assert_ne!(i, j);
    run.progress(500, Duration::from_secs(30)).await;
    println!("failover from node {} ({from}) to node {} ({to}) in {moved_in:?} after {fault:?}", i + 1, j + 1);

    // AND WHEN the node starts again (and rejoins), still mid-stream
    cluster.start_member(i).await;
    run.progress(200, Duration::from_secs(30)).await;

    // THEN every event is in the quorum queue, first deliveries in commit order, duplicates
    // within one fault's window
    let (events, dups) = run.finish(&cluster).await;
    println!("{fault:?} of the connected node: failover in {moved_in:?}, {dups} duplicates of {events}");
    assert!(dups <= PER_FAULT, "{dups} duplicates for one fault (window {WINDOW}, transactions up to {LARGEST_TXN})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_the_connection_to_one_node_through_the_proxy_moves_the_relay_on() {
    // GIVEN a relay whose first URL reaches node 1 through a proxy, the others directly
    let cluster = rabbit_cluster::shared().await;
    let proxy = Proxy::start(cluster.node(0).addr()).await;
    let mut urls = cluster.urls();
    urls[0] = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let run = Run::start(&cluster, &urls).await;
    let http = run.relay.http;
    let first = wait_connected_elsewhere(http, None, Duration::from_secs(10)).await;
    assert_eq!(first, proxy.addr.to_string(), "the relay starts on the first listed URL");
    run.progress(1000, Duration::from_secs(30)).await;

    // WHEN the proxy cuts its connection mid-stream
    let t0 = Instant::now();
    proxy.cut();

    // THEN the relay moves on to the next listed node, node 2, and publishes there
    let to = wait_connected_elsewhere(http, Some(&first), Duration::from_secs(30)).await;
    let moved_in = t0.elapsed();
    assert_eq!(to, cluster.node(1).addr().to_string(), "the next URL in the list");
    let nodes = broker_nodes(&scrape(http).await);
    assert!(nodes.contains(&(first.clone(), 0.0)), "the proxied node is no longer marked connected: {nodes:?}");
    run.progress(1500, Duration::from_secs(30)).await;
    println!("failover from the proxy ({first}) to node 2 ({to}) in {moved_in:?} after the cut");

    // AND nothing is lost, first deliveries in commit order, duplicates within one window
    let (events, dups) = run.finish(&cluster).await;
    println!("cut through the proxy: failover in {moved_in:?}, {dups} duplicates of {events}");
    assert!(dups <= PER_FAULT, "{dups} duplicates for one fault (window {WINDOW}, transactions up to {LARGEST_TXN})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_whole_cluster_and_starting_it_again_loses_nothing() {
    // GIVEN a relay listing the cluster's three nodes, publishing to a quorum queue while events commit
    let cluster = rabbit_cluster::shared().await;
    let run = Run::start(&cluster, &cluster.urls()).await;
    let http = run.relay.http;
    wait_connected_elsewhere(http, None, Duration::from_secs(10)).await;
    run.progress(1000, Duration::from_secs(30)).await;

    // WHEN every node stops mid-stream
    cluster.stop_all().await;
    let down = Instant::now();
    let reconnects_down = reconnects(http).await;

    // THEN the relay is not ready, not active, connected to no node, and keeps trying
    support::wait_until(Duration::from_secs(30), "not ready, not active, connected to no node", || async {
        let active = metric(&scrape(http).await, "outbox_relay_active", "");
        get(http, "/readyz").await.0 == 503 && active == Some(0.0) && connected(http).await.is_none()
    })
    .await;
    support::wait_until(Duration::from_secs(30), "more broker reconnects while the cluster is down", || async {
        reconnects(http).await > reconnects_down
    })
    .await;

    // WHEN the cluster starts again (all three nodes at once)
    cluster.start_all().await;
    let down_for = down.elapsed();

    // THEN the relay connects to a node again and publishes
    let back = Instant::now();
    let to = wait_connected_elsewhere(http, None, Duration::from_secs(60)).await;
    let reconnected_in = back.elapsed();
    let tries = reconnects(http).await - reconnects_down;
    run.progress(200, Duration::from_secs(90)).await;
    println!(
        "whole cluster down for {down_for:?} ({tries} failed rounds over the nodes counted as broker reconnects); \
         back on {to} {reconnected_in:?} after the cluster was up, publishing again {:?} after",
        back.elapsed()
    );

    // AND nothing is lost, first deliveries in commit order, duplicates within a window per node lost
    let (events, dups) = run.finish(&cluster).await;
    println!("whole cluster stop: {dups} duplicates of {events}");
    assert!(dups <= 3 * PER_FAULT, "{dups} duplicates for three nodes lost (window {WINDOW})");
}
