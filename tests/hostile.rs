//! Hostile and odd data, hostile identifiers, md5 and rotated secrets.

use std::time::Duration;

use crate::support::cluster::{PgAuth, PgCluster, PgOptions};
use crate::support::config::{Route, TestConfig};
use crate::support::consumer::Consumer;
use crate::support::relay::{InProcess, Process};
use crate::support::{self, insert_events, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_data_is_delivered_intact() {
    // GIVEN a relay on the default outbox plus a bytea outbox routed as raw bytes
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE bin_outbox (id uuid PRIMARY KEY, aggregate_type text NOT NULL, event_type text NOT NULL, payload bytea NOT NULL)")
        .await
        .unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::new(&db.url)
        .route(Route::outbox(&consumer.exchange).header("aggregate_id", "{aggregate_id}"))
        .route(Route::table("public.bin_outbox").exchange(&consumer.exchange).content_type("application/octet-stream"));
    let relay = InProcess::start(&cfg).await;

    // WHEN a row has every byte value as its bytea payload
    let bin_id = support::uuid();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    client
        .execute("INSERT INTO bin_outbox VALUES ($1::text::uuid, 'bin', 'Raw', $2)", &[&bin_id, &all_bytes])
        .await
        .unwrap();
    // AND a row has unicode in every column and header
    let uni_id = support::uuid();
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES \
             ('{uni_id}', 'wället', '🙂-账户', 'Événement', '{{\"note\": \"naïve ☃ 𝄞\"}}', '{{\"région\": \"Île-de-France\", \"n\": 3, \"ok\": true}}')"
        ))
        .await
        .unwrap();
    // AND a 10 MiB payload (stored out of line, TOASTed)
    let big_id = support::uuid();
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES \
             ('{big_id}', 'wallet', 'big', 'Big', jsonb_build_object('blob', repeat('x', 10 * 1024 * 1024)))"
        ))
        .await
        .unwrap();

    // THEN each arrives intact
    consumer.wait_for_ids(&[bin_id.clone(), uni_id.clone(), big_id.clone()], Duration::from_secs(60)).await;
    let got = consumer.received();
    let bin = got.iter().find(|m| m.message_id == bin_id).unwrap();
    assert_eq!(bin.body, all_bytes, "bytea arrives as raw bytes");
    assert_eq!(bin.properties.content_type().map(String::as_str), Some("application/octet-stream"));
    let uni = got.iter().find(|m| m.message_id == uni_id).unwrap();
    assert_eq!(uni.routing_key, "wället.Événement");
    assert_eq!(uni.properties.message_type().map(String::as_str), Some("Événement"));
    assert_eq!(uni.header("aggregate_id").as_deref(), Some("🙂-账户"));
    assert_eq!(uni.header("région").as_deref(), Some("Île-de-France"));
    let body: serde_json::Value = serde_json::from_slice(&uni.body).unwrap();
    assert_eq!(body["note"], "naïve ☃ 𝄞");
    let big = got.iter().find(|m| m.message_id == big_id).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&big.body).unwrap();
    assert_eq!(body["blob"].as_str().unwrap().len(), 10 * 1024 * 1024);
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_added_and_dropped_while_streaming_are_followed() {
    // GIVEN a streaming relay and an event
    let db = TestDb::new().await;
    let client = db.client().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let mut ids = insert_events(&client, "wallet", &["a".into()], "Before").await;
    // WHEN a column is added (a new Relation message) and then another one is dropped, with events after each
    client.batch_execute("ALTER TABLE outbox ADD COLUMN extra text DEFAULT 'x'").await.unwrap();
    ids.extend(insert_events(&client, "wallet", &["a".into()], "Added").await);
    client.batch_execute("ALTER TABLE outbox DROP COLUMN created_at").await.unwrap();
    ids.extend(insert_events(&client, "wallet", &["a".into()], "Dropped").await);
    // THEN all three arrive
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_route_table_or_a_non_json_payload_stops_with_a_clear_error() {
    // A text payload that is not JSON in a JSON route
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE text_outbox (id uuid PRIMARY KEY, aggregate_type text, event_type text, payload text)",
        )
        .await
        .unwrap();
    let consumer = Consumer::start("#").await;
    let cfg =
        TestConfig::outbox(&db.url, &consumer.exchange).route(Route::table("text_outbox").exchange(&consumer.exchange));
    let relay = InProcess::start(&cfg).await;
    let id = support::uuid();
    client.batch_execute(&format!("INSERT INTO text_outbox VALUES ('{id}', 'w', 'E', 'not {{json')")).await.unwrap();
    let e = relay.stopped_with_error("a payload that is not JSON").await;
    assert!(
        e.to_string().contains("not valid JSON")
            && e.to_string().contains(&id)
            && e.to_string().contains("public.text_outbox"),
        "{}",
        e.chain()
    );
    db.drop_all().await;

    // The route's table renamed under the relay
    let db = TestDb::new().await;
    let client = db.client().await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    client.batch_execute("ALTER TABLE outbox RENAME TO outbox_renamed").await.unwrap();
    client
        .batch_execute("INSERT INTO outbox_renamed (aggregate_type, aggregate_id, event_type, payload) VALUES ('w', 'a', 'E', '{}')")
        .await
        .unwrap();
    let e = relay.stopped_with_error("a row of a table no route names").await;
    assert!(
        e.to_string().contains("public.outbox_renamed") && e.to_string().contains("matches no route"),
        "{}",
        e.chain()
    );
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identifiers_are_quoted_and_cannot_inject_sql() {
    // GIVEN a publication and a table whose names try to end the statement
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("CREATE TABLE canary (x int); INSERT INTO canary VALUES (1)").await.unwrap();
    client.batch_execute("CREATE TABLE \"evil'; DROP TABLE canary; --\" (LIKE outbox INCLUDING ALL)").await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange)
        .publication("pub\"; DROP TABLE canary; --")
        .route(Route::table("public.evil'; DROP TABLE canary; --").name("evil").exchange(&consumer.exchange));

    // WHEN the relay creates its publication and streams from both tables
    let relay = InProcess::start(&cfg).await;
    let id = support::uuid();
    client
        .batch_execute(&format!(
            "INSERT INTO \"evil'; DROP TABLE canary; --\" (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{id}', 'w', 'a', 'E', '{{}}')"
        ))
        .await
        .unwrap();
    consumer.wait_for_ids(std::slice::from_ref(&id), Duration::from_secs(20)).await;

    // THEN the canary table still exists and the publication has the hostile name verbatim
    let n: i64 = client.query_one("SELECT count(*) FROM canary", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let pubs: i64 = client
        .query_one("SELECT count(*) FROM pg_publication WHERE pubname = 'pub\"; DROP TABLE canary; --'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pubs, 1);
    let m = consumer.received().into_iter().find(|m| m.message_id == id).unwrap();
    assert_eq!(m.header("x-outbox-table").as_deref(), Some("public.evil'; DROP TABLE canary; --"));
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_login_and_a_rotated_password_file_is_picked_up_without_a_restart() {
    // GIVEN a cluster that authenticates TCP logins with md5, and a relay role
    let pg = PgCluster::start(PgOptions { host_auth: PgAuth::Md5, ..PgOptions::default() }).await;
    let admin = pg.local_client("postgres").await;
    admin.batch_execute("SET password_encryption = 'md5'").await.unwrap();
    admin.batch_execute("CREATE ROLE relay LOGIN REPLICATION PASSWORD 'first-Pass-1'").await.unwrap();
    admin.batch_execute("CREATE DATABASE app OWNER relay").await.unwrap();
    let stored: bool = admin
        .query_one("SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'relay'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored, "the password is stored as md5");
    let app = pg.local_client("app").await;
    app.batch_execute(&format!("{} ALTER TABLE outbox OWNER TO relay;", outbox_relay::setup::DEFAULT_OUTBOX_TABLE))
        .await
        .unwrap();
    let url_with = |pw: &str| format!("postgres://relay:{pw}@127.0.0.1:{}/app", pg.port());

    // WHEN the relay reads its URL from a _FILE that holds a wrong password
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("source-url");
    std::fs::write(&secret, format!("{}\n", url_with("stale-Pass-0"))).unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox("postgres://placeholder@127.0.0.1/app", &consumer.exchange).slot("rotation");
    let relay = Process::spawn_env(&cfg, &[("OUTBOX_RELAY_SOURCE_URL_FILE", secret.to_str().unwrap())]);
    // THEN it says why, once per attempt, without the password
    support::wait_until(Duration::from_secs(20), "the refusal is logged", || {
        let log = relay.log_text();
        async move { log.contains("28P01") }
    })
    .await;

    // WHEN the secret file is rotated to the right password
    std::fs::write(&secret, format!("{}\n", url_with("first-Pass-1"))).unwrap();
    // THEN the relay picks it up on its next attempt and streams (md5 on both connections)
    let ids = {
        support::wait_until(Duration::from_secs(45), "the relay streams after the rotation", || {
            let log = relay.log_text();
            async move { log.contains("streaming") }
        })
        .await;
        insert_events(&app, "wallet", &["a".into()], "AfterRotation").await
    };
    consumer.wait_for_ids(&ids, Duration::from_secs(20)).await;
    let log = relay.log_text();
    assert!(!log.contains("stale-Pass-0") && !log.contains("first-Pass-1"), "a password leaked into the log:\n{log}");
    let attempts = log.lines().filter(|l| l.contains("28P01")).count();
    assert!(attempts >= 1, "{log}");
    let status = relay.terminate(Duration::from_secs(20)).await;
    assert!(status.success());
}
