//! Restarts of a private PostgreSQL cluster and a private RabbitMQ node.

use std::time::Duration;

use tokio_postgres::Client;

use crate::support::cluster::{PgCluster, PgOptions, RabbitNode};
use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::relay::InProcess;
use crate::support::{self, uuid};

/// A writer that survives the database restarting under it: on an error it
/// reconnects and checks whether the transaction it was committing made it,
/// so the expected list is exactly what committed.
fn resilient_writer(url: String, txns: usize, per_txn: usize) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let mut client: Option<Client> = None;
        let mut expected = Vec::new();
        let mut t = 0;
        while t < txns {
            let c = match &client {
                Some(c) if !c.is_closed() => c,
                _ => {
                    client = connect_retry(&url).await;
                    continue;
                }
            };
            let aggs: Vec<String> = (0..per_txn).map(|i| format!("r-{}", (t * per_txn + i) % 20)).collect();
            let ids: Vec<String> = aggs.iter().map(|_| uuid()).collect();
            let mut sql = String::from("BEGIN;");
            for (agg, id) in aggs.iter().zip(&ids) {
                sql.push_str(&format!("INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{id}', 'wallet', '{agg}', 'E', '{{}}');"));
            }
            sql.push_str("COMMIT;");
            let committed = match c.batch_execute(&sql).await {
                Ok(()) => true,
                Err(_) => {
                    // Unknown outcome: ask the database once it is back.
                    client = connect_retry(&url).await;
                    let c = client.as_ref().expect("reconnected");
                    let n: i64 = c
                        .query_one(&format!("SELECT count(*) FROM outbox WHERE id = '{}'", ids[0]), &[])
                        .await
                        .unwrap()
                        .get(0);
                    n == 1
                }
            };
            if committed {
                expected.extend(aggs.into_iter().zip(ids));
                t += 1;
            }
            if t % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        expected
    })
}

async fn connect_retry(url: &str) -> Option<Client> {
    for _ in 0..300 {
        if let Ok((c, conn)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            return Some(c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("database did not come back within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgresql_twice_mid_stream_loses_nothing() {
    // GIVEN a private PostgreSQL cluster, a relay on it and a writer of 6,000 events
    let pg = PgCluster::start(PgOptions::default()).await;
    pg.local_client("postgres").await.batch_execute("CREATE DATABASE app").await.unwrap();
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.unwrap();
    let consumer = Consumer::start("#").await;
    let window = 200;
    let cfg = TestConfig::outbox(&pg.url("app"), &consumer.exchange).max_in_flight(window);
    let relay = InProcess::start(&cfg).await;
    let w = resilient_writer(pg.url("app"), 300, 20);

    // WHEN PostgreSQL is restarted (pg_ctl restart -m fast) twice, each time after progress
    // (at delivery counts below the 6,000 events, each after progress since the last restart:
    // with the relay resuming from its own position there are no duplicates to make up a
    // "1,000 more" once the writer has finished)
    let mut at = 2000;
    for round in 1..=2 {
        consumer.wait_for_count(at, Duration::from_secs(60)).await;
        pg.restart_fast().await;
        println!("PostgreSQL restarted (round {round}) at {} deliveries", consumer.count());
        at = (consumer.count() + 500).min(5500);
    }
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);

    // THEN every committed event arrives, in order per aggregate
    consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("PostgreSQL restart x2 over {} events: {dups} duplicates", ids.len());
    // AND the duplicates stay within what was in flight at each restart (the window and one
    // transaction): the relay resumes from its own last confirmed position, not from the
    // older one PostgreSQL 15 kept for the slot across the restart.
    assert!(dups <= 2 * (window + 20), "{dups} duplicates after two restarts with a window of {window}");
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_rabbitmq_mid_stream_loses_nothing() {
    // GIVEN a private RabbitMQ node with a durable queue, a relay publishing to it, and a writer
    let rabbit = RabbitNode::start().await;
    let (exchange, queue) = Consumer::declare_durable(&rabbit.amqp_url(), "#").await;
    let db = support::TestDb::new().await;
    let cfg = TestConfig::outbox(&db.url, &exchange)
        .broker_url(&rabbit.amqp_url())
        .broker_connect_timeout(Duration::from_secs(3));
    let relay = InProcess::start(&cfg).await;
    let w = crate::support::writer(db.url.clone(), "q", 300, 10);

    // WHEN the broker restarts mid-stream (messages wait in the durable queue)
    let after_some = db.current_wal().await;
    // (strictly past: some event after this point was confirmed)
    db.wait_confirmed_past(after_some + 1, Duration::from_secs(60)).await;
    rabbit.restart().await;
    let expected = w.await.unwrap();
    let ids = support::ids_of(&expected);

    // THEN, read from the durable queue, every event is there, first deliveries in commit order
    let consumer = Consumer::consume_existing(&rabbit.amqp_url(), &exchange, &queue).await;
    consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;
    let dups = check_delivery(&expected, &consumer.received());
    println!("RabbitMQ restart over {} events: {dups} duplicates", ids.len());
    relay.stop().await.unwrap();
    db.drop_all().await;
}
