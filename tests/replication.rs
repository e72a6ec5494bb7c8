//! Delivery through logical replication: properties, order, rollbacks, SCRAM, slot position.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::config::TestConfig;
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::proxy::{Mode, Proxy};
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_from_four_writers_arrive_in_commit_order_with_spec_properties() {
    // GIVEN a relay on a fresh database and a consumer bound to everything
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;

    // WHEN four writers commit 2,500 events each, 10 per transaction, each on its own aggregates
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let client = support::connect(&url).await;
            let mut expected = Vec::new();
            for t in 0..250 {
                let aggs: Vec<String> = (0..10).map(|i| format!("w{w}-a{}", (t + i) % 7)).collect();
                let ids = insert_events(&client, "wallet", &aggs, "TransactionAdded").await;
                expected.extend(aggs.into_iter().zip(ids));
            }
            expected
        }));
    }
    let mut expected = Vec::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    let ids = support::ids_of(&expected);

    // THEN every id arrives, first deliveries per aggregate in commit order
    consumer.wait_for_ids(&ids, Duration::from_secs(120)).await;
    let received = consumer.received();
    let dups = check_delivery(&expected, &received);
    println!("10k events, 4 writers: {} deliveries, {dups} duplicates", received.len());
    assert_eq!(dups, 0, "a healthy run publishes no duplicates");

    // AND the properties are those of the SPEC
    let m = received.iter().find(|m| m.message_id == ids[0]).unwrap();
    let p = &m.properties;
    assert_eq!(p.message_type().map(String::as_str), Some("TransactionAdded"));
    assert_eq!(p.content_type().map(String::as_str), Some("application/json"));
    assert_eq!(p.delivery_mode(), Some(2));
    assert_eq!(p.app_id().map(String::as_str), Some("outbox-relay"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ts = p.timestamp().expect("timestamp");
    assert!(ts <= now && ts + 600 > now, "timestamp {ts} is the commit time");
    assert_eq!(m.routing_key, "wallet.TransactionAdded");
    assert_eq!(m.header("x-outbox-table").as_deref(), Some("public.outbox"));
    let lsn = m.header("x-outbox-lsn").expect("x-outbox-lsn");
    assert!(lsn.parse::<outbox_relay::event::Lsn>().is_ok(), "x-outbox-lsn {lsn} is an LSN");
    let ct = m.header("x-outbox-commit-time").expect("commit time");
    assert!(ct.ends_with('Z') && ct.contains('T'), "RFC 3339: {ct}");
    let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["n"], 0);

    // AND within one transaction the LSN header is the same and grows across transactions
    let by_lsn: HashMap<String, usize> = received.iter().fold(HashMap::new(), |mut acc, m| {
        *acc.entry(m.header("x-outbox-lsn").unwrap()).or_default() += 1;
        acc
    });
    assert!(by_lsn.values().all(|&n| n == 10), "each transaction of 10 events shares one end LSN");

    // AND the slot's position reaches the end of the last transaction after the confirms
    let last_lsn = received.iter().map(|m| support::lsn(&m.header("x-outbox-lsn").unwrap())).max().unwrap();
    db.wait_confirmed_past(last_lsn, Duration::from_secs(10)).await;
    relay.stop().await.expect("clean stop");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_rolled_back_transactions_never_arrive() {
    // GIVEN a streaming relay
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let client = db.client().await;

    // WHEN rolled-back and committed transactions alternate
    let mut expected = Vec::new();
    for i in 0..20 {
        // a rolled-back transaction with outbox rows...
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{}', 'wallet', 'r{i}', 'Rolled', '{{}}'); ROLLBACK;",
                support::uuid()
            ))
            .await
            .unwrap();
        // ...and a committed one
        let ids = insert_events(&client, "wallet", &[format!("c{i}")], "Committed").await;
        expected.push((format!("c{i}"), ids[0].clone()));
    }
    let ids = support::ids_of(&expected);

    // THEN only the committed events arrive
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    // check_delivery fails on any id that was not committed
    check_delivery(&expected, &consumer.received());
    assert!(consumer.received().iter().all(|m| m.properties.message_type().map(String::as_str) == Some("Committed")));
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_unpublished_tables_advance_the_slot_while_the_outbox_is_quiet() {
    // GIVEN a streaming relay and a table outside the publication
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;
    let client = db.client().await;
    client.batch_execute("CREATE TABLE unrelated (id serial primary key, v text)").await.unwrap();
    // WHEN only the unrelated table is written
    for _ in 0..50 {
        client
            .batch_execute("INSERT INTO unrelated (v) SELECT repeat('x', 1000) FROM generate_series(1, 20)")
            .await
            .unwrap();
    }
    let target = db.current_wal().await;
    // THEN the slot's confirmed position moves past those writes (no WAL retained for nothing)
    db.wait_confirmed_past(target, Duration::from_secs(30)).await;
    assert_eq!(consumer.count(), 0, "nothing was published for the unrelated table");
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_never_moves_past_unconfirmed_messages_while_the_broker_is_black_holed() {
    // GIVEN a relay whose broker connection goes through a proxy
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let proxy = Proxy::start(support::amqp_addr()).await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).patient_broker_through(proxy.addr);
    let relay = InProcess::start(&cfg).await;
    let client = db.client().await;
    let first = insert_events(&client, "wallet", &["a".into()], "First").await;
    consumer.wait_for_ids(&first, Duration::from_secs(30)).await;
    let before_block = db.current_wal().await;
    db.wait_confirmed_past(before_block, Duration::from_secs(10)).await;

    // WHEN the broker is black-holed and more events commit
    proxy.set_mode(Mode::Blackhole);
    let second = insert_events(&client, "wallet", &["a".into(), "b".into()], "Second").await;
    let after_commit = db.current_wal().await;

    // THEN for as long as the broker is silent, the slot stays before the new commit
    support::holds_throughout(Duration::from_secs(4), || async {
        let flush = db.confirmed_flush().await.unwrap();
        assert!(flush < after_commit, "confirmed_flush_lsn moved past a commit the broker never confirmed");
    })
    .await;
    assert!(consumer.received().iter().all(|m| !second.contains(&m.message_id)), "the proxy held the messages");

    // AND once the broker answers again, the events arrive and the slot moves past them
    proxy.set_mode(Mode::Pass);
    consumer.wait_for_ids(&second, Duration::from_secs(60)).await;
    db.wait_confirmed_past(after_commit, Duration::from_secs(15)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_role_streams_and_a_wrong_password_is_refused_without_leaking_it() {
    // GIVEN a non-superuser role with REPLICATION and a SCRAM password, owning its database
    let db = TestDb::new().await;
    let role = support::random_name("relay_");
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'Scram-Secret-1'; \
             ALTER TABLE outbox OWNER TO {role}; GRANT CREATE ON DATABASE {} TO {role};",
            db.name
        ))
        .await
        .unwrap();
    let stored: bool = admin
        .query_one(&format!("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{role}'"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored, "the role's password is stored as SCRAM");
    let consumer = Consumer::start("#").await;
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some("Scram-Secret-1")).unwrap();

    // WHEN the relay logs in as that role THEN events flow (replication connection authenticated by SCRAM)
    let relay = InProcess::start(&TestConfig::outbox(url.as_str(), &consumer.exchange)).await;
    let ids = insert_events(&db.client().await, "wallet", &["s".into()], "Scram").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    relay.stop().await.unwrap();

    // AND a wrong password is refused with an authentication error that never shows the password
    url.set_password(Some("Wrong-Password-9")).unwrap();
    let err = support::relay_replication_connect(url.as_str()).await.expect_err("wrong password must fail");
    assert_eq!(err.kind(), outbox_relay::ErrorKind::SourceAuth, "{}", err.chain());
    let text = format!("{} {:?} {}", err, err, err.chain());
    assert!(text.contains("28P01"), "names the SQLSTATE: {text}");
    assert!(!text.contains("Wrong-Password-9"), "password leaked: {text}");
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_position_reaches_the_slot_within_a_second_not_a_status_interval() {
    // GIVEN a relay whose regular status updates are 30 s apart
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).status_interval(Duration::from_secs(30));
    assert_eq!(cfg.load().source.status_interval, Duration::from_secs(30));
    let relay = InProcess::start(&cfg).await;
    // WHEN an event is delivered
    let ids = insert_events(&db.client().await, "wallet", &["a".into()], "Prompt").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(10)).await;
    let lsn = support::lsn(&consumer.received()[0].header("x-outbox-lsn").unwrap());
    let delivered = std::time::Instant::now();
    // THEN the slot's confirmed position passes its commit within about a second
    db.wait_confirmed_past(lsn, Duration::from_millis(1500)).await;
    println!("slot confirmed {:?} after delivery", delivered.elapsed());
    relay.stop().await.unwrap();
    db.drop_all().await;
}
