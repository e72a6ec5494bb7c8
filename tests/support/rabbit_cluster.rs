//! A three-node RabbitMQ cluster for failover tests, and quorum queues on it.
//!
//! Three [`RabbitNode`]s (`support::cluster`) sharing one random Erlang
//! cookie, each with its own loopback ports, node name and dirs, started
//! concurrently; nodes 2 and 3 then join node 1 (`stop_app`, `join_cluster`,
//! `start_app`). That takes a while, so the cluster is formed once per test
//! process, on first use, and [`shared`] hands it to one test at a time (the
//! tests stop its nodes) with every member running.
//!
//! A static is never dropped: an `atexit` handler stops the nodes by PID
//! when the test process exits, and deletes their dirs. A SIGKILLed test
//! process leaves dirs like any `RabbitNode`'s (`outbox-t-rmq-*`, with its
//! `owner.pid`), which [`sweep_stale`](super::cluster::sweep_stale) cleans
//! in the next test process.

use std::ops::Deref;
use std::sync::Once;
use std::time::{Duration, Instant};

use amqprs::channel::{ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments};
use amqprs::connection::Connection;
use amqprs::{FieldTable, FieldValue};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

use super::cluster::{halt_blocking, RabbitNode};
use super::consumer::{url_args, Consumer};

/// How long the members may take to see each other running after a (re)start.
const SETTLE: Duration = Duration::from_secs(120);
/// How long the nodes get to stop on SIGTERM when the process exits.
const EXIT_GRACE: Duration = Duration::from_secs(15);

/// Three clustered nodes; node 1 (index 0) is the one the others joined.
pub struct RabbitCluster {
    nodes: [RabbitNode; 3],
}

static CLUSTER: OnceCell<RabbitCluster> = OnceCell::const_new();
static TURN: Mutex<()> = Mutex::const_new(());

/// The shared cluster, for one test until dropped (see [`shared`]).
pub struct ClusterTurn {
    cluster: &'static RabbitCluster,
    _turn: MutexGuard<'static, ()>,
}

impl Deref for ClusterTurn {
    type Target = RabbitCluster;
    fn deref(&self) -> &RabbitCluster {
        self.cluster
    }
}

/// The process's cluster, for the calling test alone until the guard drops
/// (other callers wait). Formed on first use; every member is running (one
/// that an earlier, failed test left stopped is started again).
pub async fn shared() -> ClusterTurn {
    let turn = TURN.lock().await;
    let cluster = CLUSTER.get_or_init(RabbitCluster::form).await;
    cluster.start_stopped().await;
    ClusterTurn { cluster, _turn: turn }
}

extern "C" fn halt_at_exit() {
    if let Some(c) = CLUSTER.get() {
        halt_blocking(&c.nodes.iter().collect::<Vec<_>>(), EXIT_GRACE);
    }
}

impl RabbitCluster {
    /// Starts three nodes with one cookie and joins nodes 2 and 3 to node 1.
    async fn form() -> RabbitCluster {
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registers a function without arguments that only reads a static.
            let rc = unsafe { libc::atexit(halt_at_exit) };
            assert_eq!(rc, 0, "atexit");
        });
        let t0 = Instant::now();
        let cookie: String = (0..32).map(|_| fastrand::uppercase()).collect();
        let (a, b, c) = tokio::join!(
            RabbitNode::start_with_cookie(&cookie),
            RabbitNode::start_with_cookie(&cookie),
            RabbitNode::start_with_cookie(&cookie)
        );
        let booted = t0.elapsed();
        let seed = a.node_name().to_owned();
        tokio::join!(b.stop_app(), c.stop_app());
        // one at a time: both joins change node 1's membership
        for n in [&b, &c] {
            n.ctl(&["join_cluster", &seed]).await;
        }
        tokio::join!(b.start_app(), c.start_app());
        let cluster = RabbitCluster { nodes: [a, b, c] };
        cluster.wait_all_running(0).await;
        println!(
            "[cluster] RabbitMQ cluster {} formed in {:?} (nodes booted in {booted:?})",
            cluster.describe(),
            t0.elapsed()
        );
        cluster
    }

    /// The nodes; index 0 is node 1.
    pub fn nodes(&self) -> &[RabbitNode; 3] {
        &self.nodes
    }

    /// Node `i` (0, 1 or 2).
    pub fn node(&self, i: usize) -> &RabbitNode {
        &self.nodes[i]
    }

    /// The nodes' `amqp://` URLs, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RabbitNode::amqp_url).collect()
    }

    /// Which node listens for AMQP on `port`.
    pub fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr().port() == port)
    }

    /// Which node listens for AMQP on `addr` (`127.0.0.1:PORT`, as the relay's metrics write it).
    pub fn index_of_addr(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr().to_string() == addr)
    }

    /// `node@host (127.0.0.1:PORT), …` for messages.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(|n| format!("{} ({})", n.node_name(), n.addr())).collect();
        all.join(", ")
    }

    /// A node that is running (to read queues from, to ask about the cluster).
    ///
    /// # Panics
    ///
    /// When none is.
    pub fn running_node(&self) -> &RabbitNode {
        self.nodes.iter().find(|n| n.is_running()).expect("no node of the cluster is running")
    }

    /// Stops member `i` (`rabbitmqctl stop`); returns once its process has exited.
    pub async fn stop_member(&self, i: usize) {
        let t0 = Instant::now();
        self.nodes[i].stop_process().await;
        println!("[cluster] node {} ({}) stopped in {:?}", i + 1, self.nodes[i].addr(), t0.elapsed());
    }

    /// Starts member `i` again after [`stop_member`](Self::stop_member), with
    /// its node name and data (so it rejoins by itself); returns once the
    /// cluster has all three running again.
    /// SIGKILL to member `i`'s VM: its sockets close without an AMQP
    /// `connection.close`, and its Raft members stop mid-write. Start it
    /// again with [`start_member`](Self::start_member).
    pub async fn kill_member(&self, i: usize) {
        self.nodes[i].kill_process().await;
        println!("[cluster] node {} ({}) killed (SIGKILL)", i + 1, self.nodes[i].addr());
    }

    pub async fn start_member(&self, i: usize) {
        let t0 = Instant::now();
        self.nodes[i].start_process().await;
        self.wait_all_running(i).await;
        println!("[cluster] node {} ({}) back in the cluster in {:?}", i + 1, self.nodes[i].addr(), t0.elapsed());
    }

    /// Stops every member, all at once; returns once their processes have exited.
    pub async fn stop_all(&self) {
        let t0 = Instant::now();
        let [a, b, c] = &self.nodes;
        tokio::join!(stop_if_running(a), stop_if_running(b), stop_if_running(c));
        println!("[cluster] all three nodes stopped in {:?}", t0.elapsed());
    }

    /// Starts every stopped member, all at once (a member restarting after
    /// the whole cluster stopped waits for its peers while it loads its
    /// tables); returns once all three are running and clustered.
    pub async fn start_all(&self) {
        self.start_stopped().await;
    }

    async fn start_stopped(&self) {
        if self.nodes.iter().all(RabbitNode::is_running) {
            return;
        }
        let t0 = Instant::now();
        let stopped: Vec<String> =
            (0..3).filter(|&i| !self.nodes[i].is_running()).map(|i| (i + 1).to_string()).collect();
        let [a, b, c] = &self.nodes;
        tokio::join!(start_if_stopped(a), start_if_stopped(b), start_if_stopped(c));
        self.wait_all_running(0).await;
        println!("[cluster] node(s) {} started again, all three running in {:?}", stopped.join(", "), t0.elapsed());
    }

    /// The nodes node `i` sees running (`cluster_status`), or why it cannot say.
    pub async fn running_nodes(&self, i: usize) -> Result<Vec<String>, String> {
        let out = self.nodes[i].try_ctl_stdout(&["cluster_status", "--formatter", "json"]).await?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("cluster_status: {e}: {out}"))?;
        let running = v["running_nodes"].as_array().ok_or_else(|| format!("no running_nodes in {out}"))?;
        let mut names: Vec<String> = running.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect();
        names.sort();
        Ok(names)
    }

    /// Waits until node `i` sees all three nodes running, at most two minutes.
    ///
    /// # Panics
    ///
    /// On timeout, with what it last saw and the tail of its log.
    pub async fn wait_all_running(&self, i: usize) {
        let mut want: Vec<String> = self.nodes.iter().map(|n| n.node_name().to_owned()).collect();
        want.sort();
        let deadline = Instant::now() + SETTLE;
        loop {
            let last = match self.running_nodes(i).await {
                Ok(seen) if seen == want => return,
                Ok(seen) => format!("{seen:?}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!(
                    "node {} did not see all three nodes running within {SETTLE:?}; last: {last}\n{}",
                    i + 1,
                    self.nodes[i].log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The members of quorum queue `queue` (node names, sorted), as node `i` lists them.
    pub async fn quorum_members(&self, i: usize, queue: &str) -> Vec<String> {
        let out = self.nodes[i]
            .try_ctl_stdout(&["list_queues", "name", "type", "members", "--formatter", "json"])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.nodes[i].log_tail()));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("list_queues: {e}: {out}"));
        let q = v
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == queue))
            .unwrap_or_else(|| panic!("queue {queue} not listed by node {}: {out}", i + 1));
        assert_eq!(q["type"], "quorum", "queue {queue} is not a quorum queue: {q}");
        let mut members: Vec<String> = q["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        members.sort();
        members
    }

    /// Consumes every message of `queue` from a running node (connected after
    /// the faults, so the faults never hit the consumer's connection).
    pub async fn read_queue(&self, exchange: &str, queue: &str) -> Consumer {
        Consumer::consume_existing(&self.running_node().amqp_url(), exchange, queue).await
    }

    /// Deletes `queue` through a running node (best effort: the cluster
    /// outlives the test, its queues need not).
    pub async fn delete_queue(&self, queue: &str) {
        if let Ok(conn) = Connection::open(&url_args(&self.running_node().amqp_url())).await {
            if let Ok(ch) = conn.open_channel(None).await {
                let _ = ch.queue_delete(QueueDeleteArguments::new(queue)).await;
            }
            let _ = conn.close().await;
        }
    }
}

async fn stop_if_running(n: &RabbitNode) {
    if n.is_running() {
        n.stop_process().await;
    }
}

async fn start_if_stopped(n: &RabbitNode) {
    if !n.is_running() {
        n.start_process().await;
    }
}

/// Through the node at `url`: a durable topic exchange and a durable quorum
/// queue (`x-queue-type = quorum`, one member per cluster node) bound to it
/// with `binding`. Returns (exchange, queue).
pub async fn declare_quorum(url: &str, binding: &str) -> (String, String) {
    let exchange = super::random_name("x.");
    let queue = super::random_name("qq.");
    let conn = Connection::open(&url_args(url)).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let ch = conn.open_channel(None).await.expect("channel");
    ch.exchange_declare(ExchangeDeclareArguments::new(&exchange, "topic").durable(true).finish())
        .await
        .expect("declare exchange");
    let mut args = FieldTable::new();
    args.insert("x-queue-type".try_into().expect("a short string"), FieldValue::from("quorum"));
    ch.queue_declare(QueueDeclareArguments::new(&queue).durable(true).arguments(args).finish())
        .await
        .expect("declare quorum queue");
    ch.queue_bind(QueueBindArguments::new(&queue, &exchange, binding)).await.expect("bind");
    let _ = conn.close().await;
    (exchange, queue)
}
