//! Bad rows: a clear stop, never a skip; logical messages routed by prefix; the relay's own headers per route.

use std::time::Duration;

use crate::support::config::{Route, TestConfig};
use crate::support::consumer::{check_delivery, Consumer};
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_payload_stops_the_relay_naming_table_id_and_lsn_and_is_never_skipped() {
    // GIVEN an outbox whose payload may be NULL, and a good event before and after a bad one
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("ALTER TABLE outbox ALTER COLUMN payload DROP NOT NULL").await.unwrap();
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange);
    let relay = InProcess::start(&cfg).await;
    let good = insert_events(&client, "wallet", &["a".into()], "Good").await;
    let bad_id = support::uuid();
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{bad_id}', 'wallet', 'a', 'Bad', NULL)"
        ))
        .await
        .unwrap();
    let after_bad = db.current_wal().await;
    let later = insert_events(&client, "wallet", &["a".into()], "Later").await;

    // WHEN the relay reaches the bad row THEN it stops with a data error naming table, id and LSN
    let err = relay.stopped_with_error("a bad row").await;
    assert_eq!(err.kind(), outbox_relay::ErrorKind::Data, "{}", err.chain());
    let text = err.to_string();
    assert!(
        text.contains("public.outbox") && text.contains(&bad_id) && text.contains("LSN") && text.contains("payload"),
        "{text}"
    );

    // AND the good event before it was delivered, nothing after it, and the slot stays before the bad row
    consumer.wait_for_ids(&good, Duration::from_secs(10)).await;
    assert!(consumer.received().iter().all(|m| m.message_id != later[0]), "nothing after the bad row is published");
    let flush = db.confirmed_flush().await.unwrap();
    assert!(flush < after_bad, "the slot never moves past the bad row");

    // AND a restart stops at the same row again: it is never skipped
    let relay = InProcess::start(&cfg).await;
    let err = relay.stopped_with_error("the same bad row").await;
    assert!(err.to_string().contains(&bad_id), "{}", err.chain());
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_template_column_stops_the_relay_with_the_column_named() {
    // GIVEN an outbox whose aggregate_type (used by the routing key) may be NULL
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("ALTER TABLE outbox ALTER COLUMN aggregate_type DROP NOT NULL").await.unwrap();
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &consumer.exchange)).await;

    // WHEN a row has a NULL aggregate_type
    let bad_id = support::uuid();
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{bad_id}', NULL, 'a', 'E', '{{}}')"
        ))
        .await
        .unwrap();

    // THEN the relay stops naming the column, the template and the row, having published nothing
    let err = relay.stopped_with_error("a NULL template column").await;
    let text = err.to_string();
    assert!(text.contains("aggregate_type") && text.contains("routing_key") && text.contains(&bad_id), "{text}");
    assert_eq!(consumer.count(), 0);
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_decoding_messages_are_routed_by_prefix() {
    // GIVEN a route for the message prefix "wallet" next to the table route
    let db = TestDb::new().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &consumer.exchange).route(
        Route::message_prefix("wallet")
            .name("wallet-messages")
            .exchange(&consumer.exchange)
            .routing_key("msg.{aggregate_type}.{event_type}"),
    );
    let relay = InProcess::start(&cfg).await;
    let client = db.client().await;

    // WHEN a transaction emits a transactional message and inserts a row
    let msg_id = support::uuid();
    let content = format!(
        r#"{{"id":"{msg_id}","aggregate_type":"wallet","event_type":"FraudDetected","payload":{{"account":"acc-1"}}}}"#
    );
    client
        .batch_execute(&format!("BEGIN; SELECT pg_logical_emit_message(true, 'wallet', '{content}');"))
        .await
        .unwrap();
    let row_ids = insert_events(&client, "wallet", &["acc-1".into()], "TransactionAdded").await;
    // (insert_events ran its own BEGIN/COMMIT inside the open transaction: the COMMIT commits both)
    let _ = client.batch_execute("COMMIT").await;

    // THEN both arrive, the message with its own id, routing key and body
    let expected = vec![("acc-1".to_owned(), msg_id.clone()), ("acc-1".to_owned(), row_ids[0].clone())];
    consumer.wait_for_ids(&[msg_id.clone(), row_ids[0].clone()], Duration::from_secs(20)).await;
    check_delivery(&expected, &consumer.received());
    let m = consumer.received().into_iter().find(|m| m.message_id == msg_id).unwrap();
    assert_eq!(m.routing_key, "msg.wallet.FraudDetected");
    assert_eq!(m.header("x-outbox-table").as_deref(), Some("message:wallet"));
    assert_eq!(String::from_utf8(m.body).unwrap(), content);
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_outbox_headers_off_sends_none_of_them_and_one_with_them_on_does() {
    // GIVEN two routes for the same table, one per aggregate type, one without the x-outbox-* headers
    let db = TestDb::new().await;
    let client = db.client().await;
    let consumer = Consumer::start("#").await;
    let cfg = TestConfig::new(&db.url)
        .route(Route::outbox(&consumer.exchange).name("lean").when("aggregate_type", "lean").outbox_headers(false))
        .route(Route::outbox(&consumer.exchange).name("full").when("aggregate_type", "full"));
    let relay = InProcess::start(&cfg).await;
    // WHEN an event of each commits
    let lean = insert_events(&client, "lean", &["a".into()], "E").await;
    let full = insert_events(&client, "full", &["a".into()], "E").await;
    consumer.wait_for_ids(&[lean[0].clone(), full[0].clone()], Duration::from_secs(20)).await;
    // THEN the lean one has no x-outbox-* header, the other all three
    let got = consumer.received();
    let of = |id: &str| got.iter().find(|m| m.message_id == id).unwrap();
    for h in ["x-outbox-table", "x-outbox-lsn", "x-outbox-commit-time"] {
        assert_eq!(of(&lean[0]).header(h), None, "{h}");
        assert!(of(&full[0]).header(h).is_some(), "{h}");
    }
    relay.stop().await.unwrap();
    db.drop_all().await;
}
