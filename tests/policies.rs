//! on_unroutable policies: block, dead_letter, drop.

use std::time::Duration;

use crate::support::config::{Route, TestConfig, Unroutable};
use crate::support::consumer::Consumer;
use crate::support::http::{metric, scrape};
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, TestDb};

async fn unroutable(http: std::net::SocketAddr) -> f64 {
    metric(&scrape(http).await, "outbox_relay_events_unroutable_total", "route=").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_holds_the_position_until_a_queue_is_bound_and_loses_nothing() {
    // GIVEN an exchange with no queue at all, and the default policy (block)
    let db = TestDb::new().await;
    let exchange = support::random_name("x.");
    let consumer = Consumer::declare_only(&exchange).await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &exchange)).await;
    let client = db.client().await;

    // WHEN events commit that no queue will take
    let ids = insert_events(&client, "wallet", &["a".into(), "a".into(), "b".into()], "Unbound").await;
    let after = db.current_wal().await;
    let http = relay.http;
    // THEN the relay keeps retrying (the counter grows past one round) and the slot stays before them
    support::wait_until(Duration::from_secs(20), "at least two rounds of returns", || async move {
        unroutable(http).await >= 6.0
    })
    .await;
    assert!(db.confirmed_flush().await.unwrap() < after, "block never moves the position past an unroutable message");

    // WHEN a queue is bound THEN the retried messages arrive and the slot moves on
    let consumer = consumer.bind_queue("#").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(60)).await;
    db.wait_confirmed_past(after, Duration::from_secs(15)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_sends_unroutable_messages_with_their_origin_and_moves_on() {
    // GIVEN a main exchange with a queue for "routable.#" only, and a dead-letter exchange with a queue
    let db = TestDb::new().await;
    let main = Consumer::start("routable.#").await;
    let dead = Consumer::start("#").await;
    let cfg = TestConfig::outbox(&db.url, &main.exchange).on_unroutable(Unroutable::DeadLetter(dead.exchange.clone()));
    let relay = InProcess::start(&cfg).await;
    let client = db.client().await;

    // WHEN a routable and an unroutable event commit
    let ok = insert_events(&client, "routable", &["a".into()], "E").await;
    let lost = insert_events(&client, "nowhere", &["a".into()], "E").await;
    let after = db.current_wal().await;

    // THEN the routable one reaches its queue and the other the dead-letter queue, with its origin
    main.wait_for_ids(&ok, Duration::from_secs(20)).await;
    dead.wait_for_ids(&lost, Duration::from_secs(20)).await;
    let m = dead.received().into_iter().find(|m| m.message_id == lost[0]).unwrap();
    assert_eq!(m.header("x-outbox-original-exchange").as_deref(), Some(main.exchange.as_str()));
    assert_eq!(m.header("x-outbox-original-routing-key").as_deref(), Some("nowhere.E"));
    assert!(m.header("x-outbox-reason").unwrap().contains("312"), "reason names NO_ROUTE");
    assert!(main.received().iter().all(|m| m.message_id != lost[0]));
    // AND the position moves on
    db.wait_confirmed_past(after, Duration::from_secs(15)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_counts_and_moves_on() {
    // GIVEN an exchange with no queue at all, and the policy drop
    let db = TestDb::new().await;
    let exchange = support::random_name("x.");
    let _decl = Consumer::declare_only(&exchange).await;
    let relay = InProcess::start(&TestConfig::outbox(&db.url, &exchange).on_unroutable(Unroutable::Drop)).await;

    // WHEN two events commit
    insert_events(&db.client().await, "wallet", &["a".into(), "b".into()], "Dropped").await;
    let after = db.current_wal().await;

    // THEN both are counted as unroutable and the position moves past them
    let http = relay.http;
    support::wait_until(Duration::from_secs(20), "both counted as unroutable", || async move {
        unroutable(http).await == 2.0
    })
    .await;
    db.wait_confirmed_past(after, Duration::from_secs(15)).await;
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_overrides_the_broker_policy_with_its_own() {
    // GIVEN the broker default `block`, and two routes on the same table split by event_type:
    // "Audit" events may be dropped, the rest go to a dead-letter exchange of their own
    let db = TestDb::new().await;
    let exchange = support::random_name("x.");
    let _decl = Consumer::declare_only(&exchange).await;
    let dead = Consumer::start("#").await;
    let cfg = TestConfig::new(&db.url)
        .route(Route::outbox(&exchange).name("audit").when("event_type", "Audit").on_unroutable(Unroutable::Drop))
        .route(Route::outbox(&exchange).name("rest").on_unroutable(Unroutable::DeadLetter(dead.exchange.clone())));
    let relay = InProcess::start(&cfg).await;
    let client = db.client().await;

    // WHEN an audit event and a payment commit, neither routable
    insert_events(&client, "wallet", &["a".into()], "Audit").await;
    let rest = insert_events(&client, "wallet", &["a".into()], "Payment").await;
    let after = db.current_wal().await;
    // THEN the audit event is dropped, the payment is dead-lettered, and the position moves on
    dead.wait_for_ids(&rest, Duration::from_secs(20)).await;
    assert_eq!(dead.count(), 1, "only the payment is dead-lettered");
    db.wait_confirmed_past(after, Duration::from_secs(15)).await;
    let text = scrape(relay.http).await;
    assert_eq!(metric(&text, "outbox_relay_events_unroutable_total", "route=\"audit\""), Some(1.0), "{text}");
    relay.stop().await.unwrap();
    db.drop_all().await;
}
