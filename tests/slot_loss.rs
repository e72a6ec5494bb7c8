//! A lost replication slot: detected, loud (exit code 3, `/readyz`, a
//! metric), never silently recreated; `recover` delivers every committed
//! event from the outbox table.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::support::cluster::{PgCluster, PgOptions};
use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::failover::slot_wal_status;
use crate::support::proxy::{Mode, Proxy};
use crate::support::relay::{InProcess, Process, State};
use crate::support::{self, insert_events, TestDb};

/// The relay's record of the slot: (confirmed_lsn, recovering), if any.
async fn record(db: &TestDb, slot: &str) -> Option<(String, bool)> {
    db.client()
        .await
        .query_opt("SELECT confirmed_lsn::text, recovering FROM outbox_relay_state WHERE slot_name = $1", &[&slot])
        .await
        .expect("read the state table")
        .map(|r| (r.get(0), r.get(1)))
}

async fn drop_slot(db: &TestDb, slot: &str) {
    support::wait_until(Duration::from_secs(15), "the slot inactive", || async { db.active_pid().await.is_none() })
        .await;
    db.client().await.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.expect("drop the slot");
}

/// A relay that streamed `n` events to `consumer` (so its record exists,
/// and the lost-slot gauge read 0), then stopped cleanly. Returns its config,
/// its slot and the ids delivered.
async fn streamed_then_stopped(db: &TestDb, consumer: &Consumer, n: usize) -> (TestConfig, String, Vec<String>) {
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    let slot = cfg.load().source.slot;
    let relay = InProcess::start(&cfg).await;
    assert!(relay.handles.metrics.encode().contains("outbox_relay_slot_lost 0"), "the gauge exists at 0");
    let ids = insert_events(&db.client().await, "wallet", &aggregates("a", n), "Before").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(20)).await;
    relay.stop().await.expect("clean stop");
    assert!(record(db, &slot).await.is_some(), "a first start records the slot it created");
    (cfg, slot, ids)
}

fn aggregates(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{}", i % 7)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_while_the_relay_is_down_stops_it_with_exit_3_and_recover_delivers_every_event() {
    // GIVEN a relay that streamed (so its record exists), then stopped
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let (cfg, slot, before) = streamed_then_stopped(&db, &consumer, 20).await;
    let client = db.client().await;

    // WHEN events commit while it is down, the slot is dropped, and more commit
    let pending = insert_events(&client, "wallet", &aggregates("b", 30), "Pending").await;
    drop_slot(&db, &slot).await;
    let orphaned = insert_events(&client, "wallet", &aggregates("c", 30), "Orphaned").await;

    // THEN `run` stops with exit code 3, naming the slot, its last position and the command, and creates nothing
    let (status, log) = Process::spawn(&cfg).exited(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "exit code 3 for a lost slot; log:\n{log}");
    assert!(log.contains(&format!("replication slot \"{slot}\" is lost")), "{log}");
    assert!(log.contains("outbox-relay recover --config"), "the log names the recovering command: {log}");
    assert!(db.confirmed_flush().await.is_none(), "the relay must not recreate the slot by itself");

    // AND `check` reports it with the fix
    let out = cfg.run_binary(&["check"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("is lost") && text.contains("outbox-relay recover"), "{text}");

    // WHEN an operator runs `recover`
    let out = cfg.run_binary(&["recover"], &[]);
    assert!(out.status.success(), "recover failed: {}", String::from_utf8_lossy(&out.stderr));
    // THEN every event committed after the last confirm arrives, marked as a replay, with its original id
    let mut lost = pending.clone();
    lost.extend(orphaned.iter().cloned());
    consumer.wait_for_ids(&lost, Duration::from_secs(30)).await;
    let replayed = consumer.received().into_iter().filter(|m| lost.contains(&m.message_id)).collect::<Vec<_>>();
    assert!(replayed.iter().all(|m| m.header("x-outbox-replay").as_deref() == Some("true")), "replays are marked");
    assert_eq!(record(&db, &slot).await.map(|r| r.1), Some(false), "the recovery is marked done");

    // AND `run` streams from the new slot again
    let relay = InProcess::start(&cfg).await;
    let after = insert_events(&client, "wallet", &aggregates("d", 10), "After").await;
    consumer.wait_for_ids(&after, Duration::from_secs(20)).await;
    relay.stop().await.expect("clean stop");
    let all: Vec<String> = [before, pending, orphaned, after].concat();
    let got = consumer.received();
    let missing: Vec<&String> = all.iter().filter(|id| !got.iter().any(|m| &m.message_id == *id)).collect();
    assert!(missing.is_empty(), "lost events: {missing:?}");
    println!("slot dropped: {} events, {} deliveries ({} duplicates)", all.len(), got.len(), got.len() - all.len());
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_says_so_on_readyz_and_the_metric_and_on_slot_lost_recover_streams_on() {
    // GIVEN a relay that streamed, stopped, and a slot dropped behind pending events
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let (cfg, slot, _first) = streamed_then_stopped(&db, &consumer, 5).await;
    let client = db.client().await;
    let pending = insert_events(&client, "wallet", &aggregates("b", 25), "Pending").await;
    drop_slot(&db, &slot).await;

    // WHEN the relay starts with the default on_slot_lost = "stop"
    let relay = InProcess::start_any(&cfg).await;
    let handles = relay.handles.clone();
    let err = relay.stopped_with_error("a lost slot").await;
    // THEN it stops with the SlotLost kind, /readyz's state says why, the gauge is 1
    assert_eq!(err.kind(), outbox_relay::ErrorKind::SlotLost, "{}", err.chain());
    assert_eq!(handles.health.get(), State::SlotLost);
    assert!(handles.health.lost_reason().contains("does not exist"), "{}", handles.health.lost_reason());
    assert!(handles.metrics.encode().contains("outbox_relay_slot_lost 1"));

    // WHEN it starts with on_slot_lost = "recover"
    let relay = InProcess::start(&cfg.clone().recover_on_slot_loss()).await;
    // THEN the pending events arrive and it streams on from the new slot
    consumer.wait_for_ids(&pending, Duration::from_secs(30)).await;
    let later = insert_events(&client, "wallet", &aggregates("c", 5), "Later").await;
    consumer.wait_for_ids(&later, Duration::from_secs(20)).await;
    assert!(relay.handles.metrics.encode().contains("outbox_relay_slot_lost 0"));
    relay.stop().await.expect("clean stop");
    db.drop_all().await;
}

/// Creates database `app` with the default outbox table on a private cluster.
async fn app_database(pg: &PgCluster) {
    pg.local_client("postgres").await.batch_execute("CREATE DATABASE app").await.expect("create database");
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.expect("outbox table");
}

/// What `outbox-relay recover` does, in-process.
async fn recover(cfg: &TestConfig) -> outbox_relay::recover::RecoverReport {
    outbox_relay::recover::run(&cfg.load(), &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("recover failed: {}", e.chain()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_by_max_slot_wal_keep_size_is_lost_and_recover_delivers_everything() {
    // GIVEN a private cluster with max_slot_wal_keep_size = 1MB, and a relay that streamed and stopped
    let pg = PgCluster::start(PgOptions::default().slot_wal_limit("1MB")).await;
    app_database(&pg).await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&pg.url("app"), &consumer.exchange);
    let slot = cfg.load().source.slot;
    let client = pg.local_client("app").await;
    let relay = InProcess::start(&cfg).await;
    let first = insert_events(&client, "wallet", &aggregates("a", 10), "First").await;
    consumer.wait_for_ids(&first, Duration::from_secs(20)).await;
    relay.stop().await.expect("clean stop");

    // WHEN events commit and the server writes more WAL than the slot may keep
    let pending = insert_events(&client, "wallet", &aggregates("b", 40), "Pending").await;
    pg.generate_wal(&client, 64).await;
    assert_eq!(slot_wal_status(&client, &slot).await.as_deref(), Some("lost"), "the slot is invalidated");

    // THEN the relay stops with a clear error and creates nothing
    let err = InProcess::start_any(&cfg).await.stopped_with_error("an invalidated slot").await;
    assert_eq!(err.kind(), outbox_relay::ErrorKind::SlotLost, "{}", err.chain());
    assert!(err.chain().contains("invalidated"), "{}", err.chain());

    // WHEN an operator recovers THEN every pending event arrives, and streaming goes on
    let report = recover(&cfg).await;
    assert!(report.created_at.is_some(), "a new slot: {report}");
    consumer.wait_for_ids(&pending, Duration::from_secs(30)).await;
    let relay = InProcess::start(&cfg).await;
    let later = insert_events(&client, "wallet", &aggregates("c", 10), "Later").await;
    consumer.wait_for_ids(&later, Duration::from_secs(20)).await;
    relay.stop().await.expect("clean stop");
    assert_eq!(slot_wal_status(&client, &slot).await.as_deref(), Some("reserved"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_to_a_physical_standby_the_lost_slot_is_detected_and_recover_loses_nothing() {
    // GIVEN a primary with a streaming physical standby (pg_basebackup -R), and a relay on the
    // primary whose broker connection runs through a proxy
    let primary = PgCluster::start(PgOptions::default()).await;
    app_database(&primary).await;
    let standby = primary.standby().await;
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(support::amqp_addr()).await;
    let on_primary = TestConfig::outbox(&primary.url("app"), &consumer.exchange).patient_broker_through(proxy.addr);
    let client = primary.local_client("app").await;
    let relay = InProcess::start(&on_primary).await;
    let confirmed = insert_events(&client, "wallet", &aggregates("a", 30), "Confirmed").await;
    consumer.wait_for_ids(&confirmed, Duration::from_secs(20)).await;

    // WHEN the broker goes silent, events commit unconfirmed, the standby has them, and the primary dies
    proxy.set_mode(Mode::Blackhole);
    let mut unconfirmed = Vec::new();
    for i in 0..20 {
        unconfirmed.extend(insert_events(&client, "wallet", &aggregates(&format!("b{i}"), 5), "Unconfirmed").await);
    }
    standby.wait_caught_up(&primary).await;
    primary.stop_immediate().await;
    let _ = relay.stop().await;
    proxy.set_mode(Mode::Pass);
    // AND the standby is promoted, and the relay pointed at it
    standby.promote().await;
    let on_standby = TestConfig::outbox(&standby.url("app"), &consumer.exchange);

    // THEN it finds its record (replicated) but no slot (PostgreSQL 15 does not replicate it): lost
    let err = InProcess::start_any(&on_standby).await.stopped_with_error("a failover without the slot").await;
    assert_eq!(err.kind(), outbox_relay::ErrorKind::SlotLost, "{}", err.chain());
    assert!(err.chain().contains("does not exist"), "{}", err.chain());

    // WHEN an operator recovers on the new primary THEN nothing committed is lost
    recover(&on_standby).await;
    let mut all = confirmed.clone();
    all.extend(unconfirmed.iter().cloned());
    consumer.wait_for_ids(&all, Duration::from_secs(30)).await;
    let relay = InProcess::start(&on_standby).await;
    let after = insert_events(&standby.local_client("app").await, "wallet", &aggregates("c", 10), "After").await;
    consumer.wait_for_ids(&after, Duration::from_secs(20)).await;
    relay.stop().await.expect("clean stop");
    let got = consumer.received();
    let total = all.len() + after.len();
    println!("failover: {total} events, {} deliveries ({} duplicates)", got.len(), got.len() - total);
}
