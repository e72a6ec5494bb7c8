//! Smoke tests of the harness's private instances (`support::cluster`):
//! they start, authenticate as configured, and come back after a restart;
//! a standby streams and takes over, and an inactive slot can be lost
//! (`support::failover`).
//! The shared three-node RabbitMQ cluster forms and replicates a quorum
//! queue (`support::rabbit_cluster`).
//! They need no shared services; run them alone with
//! `cargo test --test integration support_smoke`.

use std::time::Duration;

use amqprs::channel::QueueDeclareArguments;
use amqprs::connection::{Connection, OpenConnectionArguments};
use tokio_postgres::NoTls;

use crate::support::cluster::{PgAuth, PgCluster, PgOptions, RabbitNode};
use crate::support::failover::slot_wal_status;
use crate::support::rabbit_cluster::{self, declare_quorum};
use crate::support::{self, wait_until};

/// Connects with `url`, returning the error instead of panicking.
async fn try_connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The superuser's stored password hash, read over the unix socket.
async fn stored_password(pg: &PgCluster) -> String {
    let c = pg.local_client("postgres").await;
    c.query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'", &[]).await.unwrap().get(0)
}

/// Opens an AMQP connection to `node` as guest.
async fn amqp_connect(node: &RabbitNode) -> Result<Connection, amqprs::error::Error> {
    let a = node.addr();
    Connection::open(
        &OpenConnectionArguments::new(&a.ip().to_string(), a.port(), "guest", "guest").virtual_host("/").finish(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_pg_cluster_accepts_scram_and_survives_restart_and_stop() {
    // GIVEN a private cluster with SCRAM authentication on TCP
    let pg = PgCluster::start(PgOptions::default()).await;
    assert_ne!(pg.port(), 54329, "not the shared cluster");

    // WHEN a client logs in over TCP with the superuser password
    let client =
        try_connect(&pg.url("postgres")).await.unwrap_or_else(|e| panic!("SCRAM login: {e}\n{}", pg.log_tail()));

    // THEN it is a SCRAM login on a logical-replication server
    assert!(stored_password(&pg).await.starts_with("SCRAM-SHA-256$"), "password stored as SCRAM");
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await.unwrap().get(0);
    assert_eq!(wal_level, "logical");
    let wrong = pg.url("postgres").replace("postgres:postgres@", "postgres:wrong@");
    let Err(err) = try_connect(&wrong).await else { panic!("a wrong password was accepted") };
    let msg = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| err.to_string());
    assert!(msg.contains("password authentication failed"), "{msg}");

    // WHEN the cluster is restarted (fast)
    let started: String = client.query_one("SELECT pg_postmaster_start_time()::text", &[]).await.unwrap().get(0);
    pg.restart_fast().await;

    // THEN the old connection is gone and a new one works on the same port, with a new postmaster
    assert!(client.simple_query("SELECT 1").await.is_err(), "the old session was terminated");
    let client = try_connect(&pg.url("postgres"))
        .await
        .unwrap_or_else(|e| panic!("login after restart: {e}\n{}", pg.log_tail()));
    let restarted: String = client.query_one("SELECT pg_postmaster_start_time()::text", &[]).await.unwrap().get(0);
    assert_ne!(started, restarted, "a new postmaster");

    // WHEN it is stopped, THEN nothing accepts; WHEN started again, THEN logins work again
    pg.stop().await;
    assert!(!support::cluster::port_accepts(pg.addr()).await, "port closed while stopped");
    pg.start_again().await;
    let client = try_connect(&pg.url("postgres"))
        .await
        .unwrap_or_else(|e| panic!("login after start_again: {e}\n{}", pg.log_tail()));
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_pg_clusters_honour_md5_password_and_trust() {
    // GIVEN one cluster per non-default authentication method
    let (md5, clear, trust) = tokio::join!(
        PgCluster::start(PgOptions { host_auth: PgAuth::Md5, ..Default::default() }),
        PgCluster::start(PgOptions { host_auth: PgAuth::Password, ..Default::default() }),
        PgCluster::start(PgOptions { host_auth: PgAuth::Trust, ..Default::default() }),
    );
    let wrong = |pg: &PgCluster| pg.url("postgres").replace("postgres:postgres@", "postgres:wrong@");

    // THEN md5 stores MD5 hashes and checks the password
    assert!(stored_password(&md5).await.starts_with("md5"), "password stored as MD5");
    try_connect(&md5.url("postgres")).await.unwrap_or_else(|e| panic!("md5 login: {e}\n{}", md5.log_tail()));
    assert!(try_connect(&wrong(&md5)).await.is_err(), "md5 refuses a wrong password");

    // AND password checks the clear-text password
    try_connect(&clear.url("postgres")).await.unwrap_or_else(|e| panic!("password login: {e}\n{}", clear.log_tail()));
    assert!(try_connect(&wrong(&clear)).await.is_err(), "password refuses a wrong password");

    // AND trust accepts any password
    try_connect(&wrong(&trust)).await.unwrap_or_else(|e| panic!("trust login: {e}\n{}", trust.log_tail()));
}

/// The `k` column of table `state`, sorted.
async fn state_keys(client: &tokio_postgres::Client) -> Vec<String> {
    client.query("SELECT k FROM state ORDER BY k", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// Whether a replication slot named `slot` exists on `client`'s server.
async fn slot_exists(client: &tokio_postgres::Client, slot: &str) -> bool {
    client.query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot]).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_pg_standby_streams_and_after_promotion_has_the_tables_but_not_the_logical_slot() {
    // GIVEN a private cluster with a state table, and a hot standby of it
    let primary = PgCluster::start(PgOptions::default()).await;
    let p = primary.local_client("postgres").await;
    p.batch_execute("CREATE TABLE state (k text PRIMARY KEY); INSERT INTO state VALUES ('1-in-base-backup')")
        .await
        .unwrap();
    let standby = primary.standby().await;
    assert_ne!(standby.port(), primary.port());
    assert!(standby.in_recovery().await, "a standby is in recovery");
    let s = try_connect(&standby.url("postgres"))
        .await
        .unwrap_or_else(|e| panic!("TCP login on the standby: {e}\n{}", standby.log_tail()));

    // WHEN the primary writes a row and creates a logical slot after the base backup
    p.batch_execute("INSERT INTO state VALUES ('2-streamed')").await.unwrap();
    p.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')").await.unwrap();
    standby.wait_caught_up(&primary).await;

    // THEN the standby has the row (streamed), but not the slot (PostgreSQL 15 replicates no slots)
    assert_eq!(state_keys(&s).await, ["1-in-base-backup", "2-streamed"]);
    assert!(!slot_exists(&s, "s").await, "a logical slot on the standby");
    assert!(s.batch_execute("INSERT INTO state VALUES ('x')").await.is_err(), "a hot standby refuses writes");

    // WHEN the primary crashes and the standby is promoted
    p.batch_execute("INSERT INTO state VALUES ('3-before-crash')").await.unwrap();
    standby.wait_caught_up(&primary).await;
    primary.stop_immediate().await;
    standby.promote().await;

    // THEN it is a primary that accepts writes, with every table row written before
    // the failover, and without the logical slot
    assert!(!standby.in_recovery().await, "the promoted standby left recovery");
    s.batch_execute("INSERT INTO state VALUES ('4-after-promotion')")
        .await
        .unwrap_or_else(|e| panic!("a write on the promoted standby: {e}\n{}", standby.log_tail()));
    assert_eq!(state_keys(&s).await, ["1-in-base-backup", "2-streamed", "3-before-crash", "4-after-promotion"]);
    assert!(!slot_exists(&s, "s").await, "the primary's logical slot exists after the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_pg_inactive_slot_is_lost_past_max_slot_wal_keep_size() {
    // GIVEN a cluster that keeps at most 1 MB of WAL for slots, with an inactive logical slot
    let pg = PgCluster::start(PgOptions::default().slot_wal_limit("1MB")).await;
    let c = pg.local_client("postgres").await;
    c.batch_execute("SELECT pg_create_logical_replication_slot('s', 'pgoutput')").await.unwrap();
    assert_eq!(slot_wal_status(&c, "s").await.as_deref(), Some("reserved"));

    // WHEN the server goes through more WAL than that
    pg.generate_wal(&c, 32).await;

    // THEN the slot's WAL is lost
    wait_until(Duration::from_secs(10), "slot s to have wal_status = lost", || {
        let c = &c;
        async move { slot_wal_status(c, "s").await.as_deref() == Some("lost") }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rabbit_node_accepts_amqp_and_survives_restart() {
    // GIVEN a private RabbitMQ node
    let node = RabbitNode::start().await;
    assert_ne!(node.addr().port(), 56729, "not the shared broker");

    // WHEN a client connects and declares a durable queue
    let conn = amqp_connect(&node).await.unwrap_or_else(|e| panic!("AMQP connection: {e}\n{}", node.log_tail()));
    let ch = conn.open_channel(None).await.unwrap();
    let queue = support::random_name("q.");
    ch.queue_declare(QueueDeclareArguments::new(&queue).durable(true).finish()).await.unwrap();

    // AND the broker is restarted
    node.restart().await;

    // THEN the old connection was closed by the broker
    wait_until(Duration::from_secs(10), "the old connection to be closed", || {
        let conn = &conn;
        async move { !conn.is_open() }
    })
    .await;

    // AND a new connection works and finds the durable queue (the same broker came back)
    let conn =
        amqp_connect(&node).await.unwrap_or_else(|e| panic!("AMQP connection after restart: {e}\n{}", node.log_tail()));
    let ch = conn.open_channel(None).await.unwrap();
    ch.queue_declare(QueueDeclareArguments::new(&queue).passive(true).finish())
        .await
        .unwrap_or_else(|e| panic!("durable queue after restart: {e}"));
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rabbit_node_survives_process_restart_and_kill() {
    // GIVEN a private RabbitMQ node with a durable queue
    let node = RabbitNode::start().await;
    let queue = support::random_name("q.");
    {
        let conn = amqp_connect(&node).await.unwrap_or_else(|e| panic!("AMQP connection: {e}\n{}", node.log_tail()));
        let ch = conn.open_channel(None).await.unwrap();
        ch.queue_declare(QueueDeclareArguments::new(&queue).durable(true).finish()).await.unwrap();
        conn.close().await.unwrap();
    }

    for (how, restart) in [("graceful process restart", 0), ("SIGKILL and restart", 1)] {
        // WHEN the node's OS process is restarted
        let conn = amqp_connect(&node).await.unwrap();
        if restart == 0 {
            node.restart_process().await;
        } else {
            node.kill_and_restart().await;
        }

        // THEN the old connection is gone, and a new one finds the durable queue
        wait_until(Duration::from_secs(30), "the old connection to be closed", || {
            let conn = &conn;
            async move { !conn.is_open() }
        })
        .await;
        let conn = amqp_connect(&node)
            .await
            .unwrap_or_else(|e| panic!("AMQP connection after {how}: {e}\n{}", node.log_tail()));
        let ch = conn.open_channel(None).await.unwrap();
        ch.queue_declare(QueueDeclareArguments::new(&queue).passive(true).finish())
            .await
            .unwrap_or_else(|e| panic!("durable queue after {how}: {e}"));
        conn.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rabbit_cluster_has_three_running_nodes_and_a_quorum_queue_on_all_three() {
    // GIVEN the shared three-node cluster
    let cluster = rabbit_cluster::shared().await;
    let mut all: Vec<String> = cluster.nodes().iter().map(|n| n.node_name().to_owned()).collect();
    all.sort();
    assert_eq!(all.iter().collect::<std::collections::HashSet<_>>().len(), 3, "three node names");

    // THEN every node sees the same three nodes running
    for i in 0..3 {
        let seen = cluster.running_nodes(i).await.unwrap_or_else(|e| panic!("node {}: {e}", i + 1));
        assert_eq!(seen, all, "running nodes as node {} sees them", i + 1);
    }

    // WHEN a quorum queue is declared through node 1
    let (_exchange, queue) = declare_quorum(&cluster.node(0).amqp_url(), "#").await;

    // THEN node 3 lists it as a quorum queue with a member on each of the three nodes
    assert_eq!(cluster.quorum_members(2, &queue).await, all);
    cluster.delete_queue(&queue).await;
}
