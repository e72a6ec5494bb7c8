//! A list of broker nodes on one real RabbitMQ: a dead node is skipped, a cut
//! connection moves the relay to the next node at once, the metric and the
//! log name the node, `check` reports each node. (The failover tests on a
//! real three-node cluster with a quorum queue are in `broker_cluster`.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::http::{get, metric, scrape};
use crate::support::proxy::Proxy;
use crate::support::relay::{InProcess, Process};
use crate::support::{self, insert_events, writer, TestDb};

/// A loopback address where nothing listens.
fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The shared broker's URL with host and port replaced by `addr`.
fn url_at(addr: SocketAddr) -> String {
    let mut u = url::Url::parse(&support::amqp_url()).unwrap();
    u.set_ip_host(addr.ip()).unwrap();
    u.set_port(Some(addr.port())).unwrap();
    u.to_string()
}

async fn node_gauge(http: SocketAddr, node: SocketAddr) -> Option<f64> {
    metric(&scrape(http).await, "outbox_relay_broker_node", &format!("node=\"{node}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_node_in_the_environment_list_is_skipped_and_the_node_is_named() {
    // GIVEN OUTBOX_RELAY_BROKER_URL = a dead node, then the live broker (comma-separated)
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let (dead, live) = (dead_addr(), support::amqp_addr());
    let http = SocketAddr::from(([127, 0, 0, 1], crate::support::cluster::free_port()));
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange)
        .broker_url("amqp://guest:guest@127.0.0.1:1/%2f")
        .http_listen(http);
    let list = format!("{}, {}", url_at(dead), support::amqp_url());
    let relay = Process::spawn_env(&cfg, &[("OUTBOX_RELAY_BROKER_URL", &list)]);
    support::wait_until(Duration::from_secs(30), "the relay is streaming", || async move {
        get(http, "/readyz").await.0 == 200
    })
    .await;

    // WHEN an event is written
    let client = db.client().await;
    let ids = insert_events(&client, "n", &["a".into()], "Listed").await;

    // THEN it arrives through the live node, which the metric and the log name
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    assert_eq!(node_gauge(http, live).await, Some(1.0));
    assert_eq!(node_gauge(http, dead).await, Some(0.0), "every listed node has a series");
    let log = relay.log_text();
    assert!(log.contains(&format!("RabbitMQ node unusable; trying the next node node={dead}")), "{log}");
    assert!(log.contains(&format!("node={live}")) && log.contains("connected to RabbitMQ"), "{log}");
    assert!(!log.contains("guest:guest"), "a password leaked: {log}");
    assert!(relay.terminate(Duration::from_secs(20)).await.success());
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_connection_moves_the_relay_to_the_next_node_at_once_and_loses_nothing() {
    // GIVEN two "nodes" (two proxies in front of the one broker) and a writer
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let (p1, p2) = (Proxy::start(support::amqp_addr()).await, Proxy::start(support::amqp_addr()).await);
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange)
        .broker_urls(&[url_at(p1.addr), url_at(p2.addr)])
        .max_in_flight(200);
    let relay = InProcess::start(&cfg).await;
    let http = relay.http;
    assert_eq!(node_gauge(http, p1.addr).await, Some(1.0), "on the first node as listed");
    let w = writer(db.url.clone(), "f", 100, 20);

    // WHEN the connection to node 1 is cut mid-stream
    consumer.wait_for_more(300, 2000, Duration::from_secs(60)).await;
    let cut = Instant::now();
    p1.cut();

    // THEN the relay is on node 2 soon, without a backoff
    support::wait_until(Duration::from_secs(10), "the relay moves to node 2", || async move {
        node_gauge(http, p2.addr).await == Some(1.0)
    })
    .await;
    let moved = cut.elapsed();
    assert_eq!(node_gauge(http, p1.addr).await, Some(0.0));
    // AND every event arrives in commit order, duplicates within the window
    let expected = w.await.unwrap();
    consumer.wait_for_ids(&support::ids_of(&expected), Duration::from_secs(60)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("moved to node 2 in {moved:?}; {dups} duplicates of {}", expected.len());
    assert!(dups <= 200 + 20, "duplicates {dups} exceed the window plus one transaction");
    assert_eq!(p2.connections(), 1, "one connection to node 2: no reconnect storm");
    relay.stop().await.unwrap();
    db.drop_all().await;
}

/// Runs `outbox-relay check`; returns (exit code, output).
fn check(cfg: &TestConfig) -> (i32, String) {
    let out = cfg.run_binary(&["check"], &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_node_and_passes_when_one_is_usable() {
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let (dead1, dead2) = (dead_addr(), dead_addr());
    let base = TestConfig::outbox(&db.url, &consumer.exchange);

    // One dead node and the live one: passes, with a warning naming the dead node.
    let cfg = base.clone().broker_urls(&[url_at(dead1), support::amqp_url()]);
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("RabbitMQ {} reachable", support::amqp_addr())), "{text}");
    let warning = text.lines().find(|l| l.contains(&dead1.to_string())).unwrap_or_default();
    assert!(warning.starts_with("warn") && warning.contains("2 nodes"), "{text}");
    assert!(text.contains("exists"), "the exchange is checked on the live node: {text}");

    // Both dead: a problem for each, exit 1.
    let cfg = base.broker_urls(&[url_at(dead1), url_at(dead2)]);
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    for dead in [dead1, dead2] {
        assert!(text.lines().any(|l| l.contains("PROBLEM") && l.contains(&dead.to_string())), "{text}");
    }
    assert!(!text.contains("guest:guest"), "a password leaked: {text}");
    db.drop_all().await;
}
