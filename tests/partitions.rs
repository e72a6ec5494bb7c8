//! A partitioned outbox table, named by its parent in the route: the
//! publication sends its rows as the parent's, and `check` explains a
//! publication that would not.

use std::time::Duration;

use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::relay::InProcess;
use crate::support::{self, TestDb};

/// Replaces the default outbox table with the same columns partitioned by
/// `created_at`: one partition before 2024, one from 2024 on.
async fn partition_outbox(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "DROP TABLE outbox;
             CREATE TABLE outbox (
               id uuid NOT NULL DEFAULT gen_random_uuid(), aggregate_type text NOT NULL, aggregate_id text NOT NULL,
               event_type text NOT NULL, payload jsonb NOT NULL, headers jsonb,
               created_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (id, created_at)
             ) PARTITION BY RANGE (created_at);
             CREATE TABLE outbox_old PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO ('2024-01-01');
             CREATE TABLE outbox_new PARTITION OF outbox FOR VALUES FROM ('2024-01-01') TO (MAXVALUE);",
        )
        .await
        .unwrap();
}

/// Inserts `n` rows, alternately into the old and the new partition, one
/// transaction; returns their ids.
async fn insert_both(db: &TestDb, n: usize) -> Vec<String> {
    let mut sql = String::from("BEGIN;");
    let mut ids = Vec::new();
    for i in 0..n {
        let id = support::uuid();
        let at = if i % 2 == 0 { "'2020-06-01T00:00:00Z'" } else { "now()" };
        sql.push_str(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, created_at) \
             VALUES ('{id}', 'wallet', 'a{i}', 'Parted', '{{\"n\": {i}}}', {at});"
        ));
        ids.push(id);
    }
    sql.push_str("COMMIT;");
    db.client().await.batch_execute(&sql).await.unwrap();
    ids
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client().await.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_outbox_named_by_its_parent_is_delivered_as_the_parent() {
    // GIVEN a partitioned outbox, the route naming the parent, and `setup`
    let db = TestDb::new().await;
    partition_outbox(&db).await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    cfg.setup();
    // THEN the publication lists the parent (publish_via_partition_root), not the partitions
    let listed = "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'outbox_relay' AND tablename = 'outbox'";
    assert_eq!(count(&db, listed).await, 1);
    // WHEN rows land in both partitions, before the relay runs and while it runs
    let mut ids = insert_both(&db, 10).await;
    let relay = InProcess::start(&cfg).await;
    ids.extend(insert_both(&db, 10).await);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox_old").await, 10);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox_new").await, 10);
    // THEN every row arrives, with x-outbox-table naming the parent
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    for m in consumer.received() {
        assert_eq!(m.header("x-outbox-table").as_deref(), Some("public.outbox"), "{}", m.message_id);
    }
    relay.stop().await.unwrap();
    // AND a second run (which checks the publication again) neither alters it nor fails
    let relay = InProcess::start(&cfg).await;
    let more = insert_both(&db, 2).await;
    consumer.wait_for_ids(&more, Duration::from_secs(30)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_without_publish_via_partition_root_is_a_problem_with_its_fix() {
    // GIVEN a partitioned outbox in a publication made without the option (as older relays did)
    let db = TestDb::new().await;
    partition_outbox(&db).await;
    db.client()
        .await
        .batch_execute("CREATE PUBLICATION outbox_relay FOR TABLE outbox WITH (publish = 'insert')")
        .await
        .unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    // THEN check reports it, with the fix, and does not call the parent missing
    let out = cfg.run_binary(&["check"], &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("PROBLEM publication \"outbox_relay\" sends the rows of the partitioned table(s) public.outbox"),
        "{text}"
    );
    assert!(
        text.contains("fix: ALTER PUBLICATION \"outbox_relay\" SET (publish_via_partition_root = true);"),
        "{text}"
    );
    assert!(!text.contains("does not cover"), "{text}");
    // AND setup refuses with the same fix instead of adding the parent a second time
    let out = cfg.run_binary(&["setup"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("SET (publish_via_partition_root = true)"), "{err}");
    assert!(!err.contains("already member"), "{err}");
    // WHEN the fix is applied THEN check passes and the relay delivers
    db.client()
        .await
        .batch_execute("ALTER PUBLICATION outbox_relay SET (publish_via_partition_root = true)")
        .await
        .unwrap();
    let out = cfg.run_binary(&["check"], &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("covers every route's table"), "{text}");
    let relay = InProcess::start(&cfg).await;
    let ids = insert_both(&db, 4).await;
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    assert!(consumer.received().iter().all(|m| m.header("x-outbox-table").as_deref() == Some("public.outbox")));
    relay.stop().await.unwrap();
    db.drop_all().await;
}
