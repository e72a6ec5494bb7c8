//! The preflight: one test per problem it must find.

use std::time::{Duration, Instant};

use crate::support::config::{Route, TestConfig};
use crate::support::consumer::Consumer;
use crate::support::relay::InProcess;
use crate::support::{self, TestDb};

/// Runs `outbox-relay check` on `cfg`; returns (exit code, stdout+stderr).
fn check(cfg: &TestConfig) -> (i32, String) {
    let out = cfg.run_binary(&["check"], &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn with_user(url: &str, user: &str, password: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    u.set_username(user).unwrap();
    u.set_password(Some(password)).unwrap();
    u.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_setup_passes_with_only_warnings() {
    // GIVEN a fresh database with the outbox table, no slot yet
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    // THEN check passes, warning only
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("will be created"), "a missing slot with create_slot = true is not a problem: {text}");
    assert!(text.contains("max_slot_wal_keep_size = -1"), "warns about unbounded WAL retention: {text}");
    // AND after setup it finds the slot
    cfg.setup();
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("exists (pgoutput)"), "{text}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_ends_are_reported_within_ten_seconds() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: nothing listens
    let cfg = TestConfig::outbox(&format!("postgres://relay:pw@{closed}/app"), "x")
        .broker_url(&format!("amqp://guest:guest@{closed}/%2f"));
    let started = Instant::now();
    let (code, text) = check(&cfg);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("PROBLEM PostgreSQL") && text.contains("PROBLEM RabbitMQ"),
        "both ends reported at once: {text}"
    );
    assert!(text.contains("fix:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_reported_without_the_password() {
    let db = TestDb::new().await;
    let cfg = TestConfig::outbox(&with_user(&db.url, "postgres", "Not-The-Password-1"), "x")
        .broker_url(&support::amqp_url().replace("guest:guest", "guest:Not-The-Password-2"));
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("28P01"), "PostgreSQL's refusal is named: {text}");
    assert!(text.contains("PROBLEM RabbitMQ"), "{text}");
    assert!(!text.contains("Not-The-Password"), "a password leaked: {text}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_or_select_gets_the_grant_to_run() {
    let db = TestDb::new().await;
    let role = support::random_name("plain_");
    db.client().await.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'")).await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&with_user(&db.url, &role, "pw"), &consumer.exchange);
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("ALTER ROLE \"{role}\" REPLICATION")), "{text}");
    assert!(text.contains(&format!("GRANT SELECT ON \"public\".\"outbox\" TO \"{role}\"")), "{text}");
    db.client().await.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}")).await.ok();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_column_publication_slot_and_exchange_are_each_named() {
    let db = TestDb::new().await;
    let cfg = TestConfig::new(&db.url)
        .create_slot(false)
        .route(Route::outbox("no.such.exchange").routing_key("{aggregate_type}.{no_such_column}"))
        .route(Route::table("public.no_such_table").exchange("no.such.exchange"));
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    for needle in [
        "public.no_such_table named by a route does not exist",
        "no_such_column",
        "publication \"outbox_relay\" does not exist",
        "does not exist",
        "exchange \"no.such.exchange\" does not exist",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(text.contains(&format!("slot \"{}\" does not exist", db.name)), "{text}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_active_elsewhere_is_a_warning_not_a_problem() {
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    let relay = InProcess::start(&cfg).await;
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("is active (walsender PID"), "{text}");
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[test]
fn an_invalid_config_is_reported_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[source]\nurl = \"postgres://x@127.0.0.1/app\"\nslot = \"Bad Slot\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("source.slot") && text.contains("broker"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_and_exhausted_slots_are_problems_with_their_fix() {
    use crate::support::cluster::{PgCluster, PgOptions};
    // GIVEN a cluster without logical WAL and with a single replication slot, already taken
    let pg = PgCluster::start(PgOptions {
        extra_conf: vec!["wal_level = replica".into(), "max_replication_slots = 1".into()],
        ..PgOptions::default()
    })
    .await;
    let admin = pg.local_client("postgres").await;
    admin.batch_execute("CREATE DATABASE app").await.unwrap();
    admin.batch_execute("SELECT pg_create_physical_replication_slot('someone_else')").await.unwrap();
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&pg.url("app"), &consumer.exchange);
    // THEN check names both, with the fix
    let (code, text) = check(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("wal_level = replica") && text.contains("ALTER SYSTEM SET wal_level = logical"), "{text}");
    assert!(text.contains("all 1 replication slots are in use") && text.contains("max_replication_slots"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_mode_needs_no_logical_wal_but_a_key_a_privilege_and_the_mark_column() {
    use crate::support::cluster::{PgCluster, PgOptions};
    // GIVEN a database without logical WAL (what polling is for)
    let pg =
        PgCluster::start(PgOptions { extra_conf: vec!["wal_level = replica".into()], ..PgOptions::default() }).await;
    pg.local_client("postgres").await.batch_execute("CREATE DATABASE app").await.unwrap();
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&pg.url("app"), &consumer.exchange).polling();
    // THEN polling passes check: no complaint about wal_level, slots or publications
    let (code, text) = check(&cfg);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("wal_level") && !text.contains("slot"), "{text}");
    assert!(text.contains("primary key \"id\""), "{text}");
    // AND with after_publish = "mark", a missing mark column is a problem with its fix
    let (code, text) = check(&cfg.mark_published("published_at"));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("ADD COLUMN \"published_at\" timestamptz"), "{text}");
}
