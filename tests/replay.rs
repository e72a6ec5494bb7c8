//! `outbox-relay replay`: a range of rows re-published with their original
//! ids and `x-outbox-replay: true`, `--dry-run`, `--route`, `--rate`, bad
//! selections. No relay runs: replay needs none (it only reads the table).

use std::time::{Duration, Instant};

use amqprs::FieldValue;

use crate::support::config::{Route, TestConfig};
use crate::support::consumer::{Consumer, Received};
use crate::support::{self, insert_events, TestDb};

/// Runs `outbox-relay replay ARGS --config FILE`; returns (exit code, stdout, stderr).
async fn replay(cfg: &TestConfig, args: &[&str]) -> (i32, String, String) {
    let cfg = cfg.clone();
    let args: Vec<String> = std::iter::once("replay").chain(args.iter().copied()).map(str::to_owned).collect();
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cfg.run_binary(&args, &["OUTBOX_RELAY_SOURCE_URL", "OUTBOX_RELAY_BROKER_URL"])
    })
    .await
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `count` events, one transaction each (so `created_at` increases), of `event_type`.
async fn insert_one_by_one(db: &TestDb, count: usize, event_type: &str) -> Vec<String> {
    let client = db.client().await;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        ids.extend(insert_events(&client, "wallet", &[format!("r{i}")], event_type).await);
    }
    ids
}

/// The row's `created_at` as RFC 3339 (UTC, microseconds).
async fn created_at(db: &TestDb, id: &str) -> String {
    let sql = "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM outbox WHERE id::text = $1";
    db.client().await.query_one(sql, &[&id]).await.unwrap().get(0)
}

/// Whether the message carries `x-outbox-replay` as the AMQP boolean true.
fn marked_replayed(m: &Received) -> bool {
    let headers = m.properties.headers().expect("headers");
    headers.as_ref().iter().any(|(k, v)| (k.as_ref() as &str) == "x-outbox-replay" && matches!(v, FieldValue::t(true)))
}

/// Asserts that exactly `ids` arrive, in order, and nothing more for a while.
async fn exactly(consumer: &Consumer, ids: &[String]) -> Vec<Received> {
    consumer.wait_for_ids(ids, Duration::from_secs(30)).await;
    support::holds_throughout(Duration::from_millis(500), || async {
        assert_eq!(consumer.count(), ids.len(), "only the range is replayed");
    })
    .await;
    let got = consumer.received();
    assert_eq!(got.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>(), ids, "in order");
    got
}

const EPOCH: &str = "2000-01-01T00:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_id_until_republishes_exactly_that_range_marked_as_replayed() {
    // GIVEN 20 committed rows and no relay running
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).batch_size(3);
    let ids = insert_one_by_one(&db, 20, "Added").await;
    let until = created_at(&db, &ids[14]).await;

    // WHEN rows 5..=14 are replayed (pages of 3 rows)
    let (code, out, err) = replay(&cfg, &["--from-id", &ids[5], "--until", &until]).await;

    // THEN exactly those arrive, in order, with their original ids, marked, without an LSN
    assert_eq!(code, 0, "{out}{err}");
    let got = exactly(&consumer, &ids[5..15]).await;
    assert!(got.iter().all(marked_replayed), "x-outbox-replay is the boolean true");
    assert!(got.iter().all(|m| m.header("x-outbox-lsn").is_none()));
    assert!(out.contains("10 rows read, 10 published, 10 confirmed by the broker"), "{out}");
    // AND the table is untouched
    let left: i64 = db.client().await.query_one("SELECT count(*) FROM outbox", &[]).await.unwrap().get(0);
    assert_eq!(left, 20);
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_per_route_and_route_limits_what_is_published() {
    // GIVEN a polling-mode config with two filtered routes on one table, and rows for
    // each plus one that every `when` declines
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::new(&db.url)
        .polling()
        .route(Route::outbox(&consumer.exchange).name("adds").when("event_type", "Added"))
        .route(Route::outbox(&consumer.exchange).name("removes").when("event_type", "Removed"));
    let adds = insert_one_by_one(&db, 3, "Added").await;
    let removes = insert_one_by_one(&db, 2, "Removed").await;
    insert_one_by_one(&db, 1, "Other").await;

    // WHEN a dry run covers everything THEN it counts per route and publishes nothing
    let (code, out, err) = replay(&cfg, &["--since", EPOCH, "--dry-run"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("6 rows read, nothing published"), "{out}");
    assert!(out.contains("route adds: 3") && out.contains("route removes: 2"), "{out}");
    assert!(out.contains("declined by every route's when filter: 1"), "{out}");
    support::holds_throughout(Duration::from_millis(500), || async { assert_eq!(consumer.count(), 0) }).await;

    // WHEN one route is replayed from the first of its rows THEN only its rows arrive
    let since = created_at(&db, &removes[0]).await;
    let (code, out, err) = replay(&cfg, &["--since", &since, "--route", "removes"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let got = exactly(&consumer, &removes).await;
    assert!(got.iter().all(marked_replayed));
    assert!(!got.iter().any(|m| adds.contains(&m.message_id)));

    // AND an unknown route is a usage error naming the routes there are
    let (code, out, err) = replay(&cfg, &["--since", EPOCH, "--route", "nope"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("\"nope\"") && err.contains("adds, removes"), "{err}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_selections_exit_2_with_a_clear_message() {
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    insert_one_by_one(&db, 1, "Added").await;

    // an unreadable time names the flag
    let (code, out, err) = replay(&cfg, &["--since", "last tuesday-ish"]).await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--since \"last tuesday-ish\" is not a time"), "{err}");
    // a key no row has
    let (code, _, err) = replay(&cfg, &["--from-id", &support::uuid()]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--from-id") && err.contains("no table in scope has a row"), "{err}");
    // both starts, or none (clap's usage errors)
    let (code, _, err) = replay(&cfg, &["--since", EPOCH, "--from-id", "x"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = replay(&cfg, &[]).await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(consumer.count(), 0);
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_paces_publishing() {
    // GIVEN 400 rows
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    let aggregates: Vec<String> = (0..400).map(|i| format!("a{i}")).collect();
    let ids = insert_events(&db.client().await, "wallet", &aggregates, "Added").await;

    // WHEN they are replayed at 200 messages per second
    let started = Instant::now();
    let (code, out, err) = replay(&cfg, &["--since", EPOCH, "--rate", "200"]).await;
    let took = started.elapsed();

    // THEN all arrive, and it took about two seconds (a lower bound only)
    assert_eq!(code, 0, "{out}{err}");
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    assert!(took >= Duration::from_millis(1500), "400 messages at 200/s took only {took:?}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_replay_that_cannot_finish_and_reports_it() {
    // GIVEN rows and an exchange with no queue: under `block` nothing is ever confirmed
    let db = TestDb::new().await;
    let exchange = support::random_name("x.");
    let _exchange = Consumer::declare_only(&exchange).await;
    let cfg = TestConfig::outbox(&db.url, &exchange).shutdown_timeout(Duration::from_secs(1));
    insert_one_by_one(&db, 3, "Added").await;
    let (_dir, path) = cfg.write();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .args(["replay", "--since", EPOCH, "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // WHEN it is asked to stop while it waits for the broker
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().expect("running").to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();

    // THEN it ends within the shutdown timeout, exit 1, saying it was interrupted
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output()).await.expect("ended").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("interrupted before the end of the range") && stdout.contains("0 confirmed"), "{stdout}");
    db.drop_all().await;
}
