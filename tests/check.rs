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

/// Runs `outbox-relay check --json` on `cfg`; returns (exit code, the
/// document, stdout+stderr). Asserts that stdout is exactly one JSON
/// document, valid against deploy/check.schema.json, whose `exit_code` is
/// the process's and whose `ok` agrees with it and with `problems`.
fn check_json(cfg: &TestConfig) -> (i32, serde_json::Value, String) {
    let out = cfg.run_binary(&["check", "--json"], &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"]);
    json_document(&out)
}

fn json_document(out: &std::process::Output) -> (i32, serde_json::Value, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{text}"));
    crate::support::schema::assert_valid_check_document(&doc);
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(doc["exit_code"].as_i64(), Some(i64::from(code)), "{text}");
    assert_eq!(doc["ok"].as_bool(), Some(code == 0), "{text}");
    assert_eq!(doc["problems"].as_array().unwrap().is_empty(), code == 0, "{text}");
    (code, doc, text)
}

/// The keys of `doc[field]` (problems, warnings, checks).
fn keys(doc: &serde_json::Value, field: &str) -> Vec<String> {
    doc[field].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap().to_owned()).collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_a_ready_setup_is_ok_with_exit_0_and_keyed_warnings() {
    // GIVEN a fresh database with the outbox table, no slot yet
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    // THEN the document says ok, exit 0, and the warning about WAL retention with its key and fix
    let (code, doc, text) = check_json(&cfg);
    assert_eq!(code, 0, "{text}");
    assert_eq!(doc["ok"], true, "{text}");
    assert_eq!(doc["exit_meaning"], "the relay can run", "{text}");
    let warning = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["key"] == "postgres.max_slot_wal_keep_size")
        .unwrap_or_else(|| panic!("no WAL retention warning: {text}"));
    assert!(warning["message"].as_str().unwrap().contains("max_slot_wal_keep_size = -1"), "{text}");
    assert!(!warning["fix"].as_str().unwrap().is_empty(), "{text}");
    let checks = keys(&doc, "checks");
    for key in ["config", "postgres.connection", "postgres.wal_level", "slot", "broker.connection", "exchange"] {
        assert!(checks.iter().any(|k| k == key), "no check {key:?}: {text}");
    }
    // AND the text output agrees on the exit code
    assert_eq!(check(&cfg).0, 0);
    assert!(!text.contains(&db.url) && !text.contains("postgres://"), "a URL leaked: {text}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_unreachable_ends_are_problems_for_both_with_exit_1() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: nothing listens
    let cfg = TestConfig::outbox(&format!("postgres://relay:Pg-Secret-3@{closed}/app"), "x")
        .broker_url(&format!("amqp://guest:Amqp-Secret-4@{closed}/%2f"));
    let started = Instant::now();
    let (code, doc, text) = check_json(&cfg);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(code, 1, "{text}");
    assert_eq!(doc["ok"], false, "{text}");
    let problems = keys(&doc, "problems");
    assert!(
        problems.contains(&"postgres.connection".to_owned()) && problems.contains(&"broker.connection".to_owned()),
        "both ends reported at once: {text}"
    );
    for p in doc["problems"].as_array().unwrap() {
        assert!(!p["fix"].as_str().unwrap().is_empty(), "{text}");
    }
    for secret in ["Pg-Secret-3", "Amqp-Secret-4", "postgres://", "amqp://"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_wrong_passwords_are_problems_without_the_password() {
    let db = TestDb::new().await;
    let cfg = TestConfig::outbox(&with_user(&db.url, "postgres", "Not-The-Password-1"), "x")
        .broker_url(&support::amqp_url().replace("guest:guest", "guest:Not-The-Password-2"));
    let (code, doc, text) = check_json(&cfg);
    assert_eq!(code, 1, "{text}");
    assert!(keys(&doc, "problems").contains(&"postgres.connection".to_owned()), "{text}");
    assert!(text.contains("28P01"), "PostgreSQL's refusal is named: {text}");
    assert!(!text.contains("Not-The-Password"), "a password leaked: {text}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_missing_table_publication_slot_and_exchange_have_their_keys() {
    let db = TestDb::new().await;
    let cfg = TestConfig::new(&db.url)
        .create_slot(false)
        .route(Route::outbox("no.such.exchange").routing_key("{aggregate_type}.{no_such_column}"))
        .route(Route::table("public.no_such_table").exchange("no.such.exchange"));
    let (code, doc, text) = check_json(&cfg);
    assert_eq!(code, 1, "{text}");
    let problems = keys(&doc, "problems");
    for key in ["table", "route.columns", "publication", "slot", "exchange"] {
        assert!(problems.iter().any(|k| k == key), "no problem {key:?}: {text}");
    }
    db.drop_all().await;
}

#[test]
fn json_an_invalid_config_is_exit_2_with_its_config_keys_and_no_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[source]\nurl = \"postgres://x:Cfg-Secret-5@127.0.0.1/app\"\nslot = \"Bad Slot\"\n")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["check", "--json", "--config"])
        .arg(&path)
        .env_remove("OUTBOX_RELAY_SOURCE_URL")
        .env_remove("OUTBOX_RELAY_BROKER_URL")
        .output()
        .unwrap();
    let (code, doc, text) = json_document(&out);
    assert_eq!(code, 2, "{text}");
    assert_eq!(doc["exit_meaning"], "invalid configuration: fix the keys named", "{text}");
    let problems = keys(&doc, "problems");
    for key in ["source.slot", "broker.url", "routes"] {
        assert!(problems.iter().any(|k| k == key), "no problem {key:?}: {text}");
    }
    assert!(!text.contains("Cfg-Secret-5") && !text.contains("postgres://"), "{text}");
    // AND a missing file is one problem under `config`, still exit 2
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["check", "--json", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    let (code, doc, text) = json_document(&out);
    assert_eq!(code, 2, "{text}");
    assert_eq!(keys(&doc, "problems"), ["config"], "{text}");
}
