//! The test harness: real PostgreSQL (wal_level=logical) and real RabbitMQ,
//! addressed by environment variables with local defaults (the ones
//! `scripts/services.sh` starts). Every test gets its own database (so its
//! own slot and publication) and its own exchange and queue, with random
//! names, so tests can run in parallel.

#![allow(dead_code)]

pub mod cluster;
pub mod config;
pub mod consumer;
pub mod failover;
pub mod http;
pub mod pki;
pub mod proxy;
pub mod rabbit_cluster;
pub mod relay;
pub mod schema;

use std::future::Future;
use std::time::{Duration, Instant};

// The crate's internal connection paths are named here only, so that a
// move in `src/` is fixed in one place.
use outbox_relay::source::postgres::PgTarget;
use outbox_relay::source::replication::connection::ReplicationConnection;
use tokio_postgres::{Client, NoTls};

/// Admin URL of the test cluster (a superuser, database `postgres`).
pub fn pg_admin_url() -> String {
    std::env::var("OUTBOX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:54329/postgres".into())
}

/// URL of the test broker.
pub fn amqp_url() -> String {
    std::env::var("OUTBOX_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:56729/%2f".into())
}

/// A random lowercase suffix for names.
pub fn random_name(prefix: &str) -> String {
    let mut s = String::from(prefix);
    for _ in 0..10 {
        s.push(fastrand::lowercase());
    }
    s
}

/// Connects with tokio-postgres and spawns the connection.
pub async fn connect(url: &str) -> Client {
    let (client, conn) =
        tokio_postgres::connect(url, NoTls).await.unwrap_or_else(|e| panic!("connecting to test PostgreSQL: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh database with the default outbox table.
pub struct TestDb {
    /// Database name.
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
}

impl TestDb {
    /// Creates the database and the SPEC's default outbox table.
    pub async fn new() -> TestDb {
        let name = random_name("outbox_t_");
        let admin = connect(&pg_admin_url()).await;
        admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create test database");
        let url = with_dbname(&pg_admin_url(), &name);
        let db = TestDb { name, url };
        db.client().await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.expect("create outbox table");
        db
    }

    /// A new connection to this database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// The slot's (named like the database) `confirmed_flush_lsn` as a number, if the slot exists.
    pub async fn confirmed_flush(&self) -> Option<u64> {
        slot_confirmed_flush(&self.client().await, &self.name).await
    }

    /// Waits until the slot's `confirmed_flush_lsn` is at or past `target`,
    /// polling every 50 ms for at most `within`.
    ///
    /// # Panics
    ///
    /// On timeout, naming the caller's line, the target and the last position seen.
    #[track_caller]
    pub fn wait_confirmed_past(&self, target: u64, within: Duration) -> impl Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let start = Instant::now();
            let client = self.client().await;
            loop {
                let seen = slot_confirmed_flush(&client, &self.name).await;
                if seen.is_some_and(|p| p >= target) {
                    return;
                }
                if start.elapsed() > within {
                    panic!(
                        "timed out after {within:?} waiting for slot {} to confirm past {} (last seen: {}) (at {caller})",
                        self.name,
                        outbox_relay::event::Lsn(target),
                        seen.map_or("no slot".to_owned(), |p| outbox_relay::event::Lsn(p).to_string()),
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// PID of the walsender streaming from `slot`, if any.
    pub async fn active_pid(&self) -> Option<i32> {
        let slot = &self.name;
        let c = self.client().await;
        c.query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .expect("read slot")
            .and_then(|r| r.get(0))
    }

    /// Current WAL insert position (past every record inserted so far, even
    /// with synchronous_commit = off, unlike pg_current_wal_lsn).
    pub async fn current_wal(&self) -> u64 {
        wal_insert_lsn(&self.client().await).await
    }

    /// Drops the slot (terminating its walsender) and the database. Also
    /// runs on drop (a failed test), so no slot keeps WAL in the shared cluster.
    pub async fn drop_all(mut self) {
        cleanup(std::mem::take(&mut self.name)).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let name = std::mem::take(&mut self.name);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(cleanup(name));
        })
        .join();
    }
}

async fn cleanup(name: String) {
    if name.is_empty() {
        return;
    }
    {
        let admin = connect(&pg_admin_url()).await;
        let _ = admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '{0}' AND active_pid IS NOT NULL;",
                name
            ))
            .await;
        for _ in 0..50 {
            let r = admin
                .batch_execute(&format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{0}'",
                    name
                ))
                .await;
            if r.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", name)).await;
    }
}

/// `confirmed_flush_lsn` of `slot` as a number, if the slot exists.
async fn slot_confirmed_flush(client: &Client, slot: &str) -> Option<u64> {
    let row = client
        .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .expect("read slot");
    row.and_then(|r| r.get::<_, Option<String>>(0)).map(|s| lsn(&s))
}

/// Host and port of a URL, as a socket address (`default_port` when it names none).
fn socket_addr_of(url: &str, default_port: u16) -> std::net::SocketAddr {
    let u = url::Url::parse(url).expect("valid test URL");
    format!("{}:{}", u.host_str().expect("a host"), u.port().unwrap_or(default_port)).parse().expect("an IP address")
}

/// Where the shared broker listens (for a proxy in front of it).
pub fn amqp_addr() -> std::net::SocketAddr {
    socket_addr_of(&amqp_url(), 5672)
}

/// Where the shared PostgreSQL listens (for a proxy in front of it).
pub fn pg_addr() -> std::net::SocketAddr {
    socket_addr_of(&pg_admin_url(), 5432)
}

/// The ids of `(aggregate, id)` pairs, in order.
pub fn ids_of(expected: &[(String, String)]) -> Vec<String> {
    expected.iter().map(|(_, id)| id.clone()).collect()
}

/// The relay's own replication connection to `url` (5 s timeout).
pub async fn relay_replication_connect(url: &str) -> Result<ReplicationConnection, outbox_relay::Error> {
    ReplicationConnection::connect(&PgTarget::parse(url).expect("a valid source URL"), Duration::from_secs(5)).await
}

/// The relay's own SQL connection to `url` (5 s timeout).
pub async fn relay_sql_connect(url: &str) -> Result<Client, outbox_relay::Error> {
    PgTarget::parse(url).expect("a valid source URL").connect_sql(Duration::from_secs(5)).await
}

/// Replaces the database name in a postgres URL.
pub fn with_dbname(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("valid test URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// `pg_current_wal_insert_lsn()` on `client`'s server: past every record
/// inserted so far, even with synchronous_commit = off (unlike
/// `pg_current_wal_lsn()`, which only counts WAL already written out).
pub async fn wal_insert_lsn(client: &Client) -> u64 {
    let s: String =
        client.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.expect("read WAL position").get(0);
    lsn(&s)
}

/// Parses "X/Y".
pub fn lsn(s: &str) -> u64 {
    s.parse::<outbox_relay::event::Lsn>().expect("LSN").0
}

/// Inserts one outbox event per element of `aggregates`, in one
/// transaction, and returns their ids in insert order.
pub async fn insert_events(
    client: &Client,
    aggregate_type: &str,
    aggregates: &[String],
    event_type: &str,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(aggregates.len());
    let mut sql = String::from("BEGIN;");
    for agg in aggregates {
        let id = uuid();
        sql.push_str(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('{id}', '{aggregate_type}', '{agg}', '{event_type}', '{{\"n\": {}}}');",
            ids.len()
        ));
        ids.push(id);
    }
    sql.push_str("COMMIT;");
    client.batch_execute(&sql).await.expect("insert events");
    ids
}

/// A random UUID v4 as text.
pub fn uuid() -> String {
    let b: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// Polls `cond` every 50 ms until it returns true or `timeout` passes.
///
/// # Panics
///
/// On timeout, naming the caller's line and `what`.
#[track_caller]
pub fn wait_until<'a, F, Fut>(timeout: Duration, what: &'a str, cond: F) -> impl Future<Output = ()> + 'a
where
    F: FnMut() -> Fut + 'a,
    Fut: Future<Output = bool> + 'a,
{
    wait_until_at(std::panic::Location::caller(), timeout, what, cond)
}

/// [`wait_until`] naming `caller` on timeout (for helpers that are themselves `#[track_caller]`).
pub async fn wait_until_at<F, Fut>(
    caller: &'static std::panic::Location<'static>,
    timeout: Duration,
    what: &str,
    mut cond: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what} (at {caller})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `check` (which asserts) every 200 ms for `period`: a condition that
/// must hold throughout, not just become true. It runs at least once, and
/// once more at or after the end of the period.
pub async fn holds_throughout<F, Fut>(period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let end = Instant::now() + period;
    loop {
        check().await;
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A background writer: `txns` transactions of `per_txn` events over 20
/// aggregates, paced (a short pause every 20 transactions) so faults land
/// mid-stream. Returns (aggregate, id) in commit order.
pub fn writer(
    url: String,
    tag: &'static str,
    txns: usize,
    per_txn: usize,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let client = connect(&url).await;
        let mut expected = Vec::new();
        for t in 0..txns {
            let aggs: Vec<String> = (0..per_txn).map(|i| format!("{tag}-{}", (t * per_txn + i) % 20)).collect();
            let ids = insert_events(&client, "wallet", &aggs, "TransactionAdded").await;
            expected.extend(aggs.into_iter().zip(ids));
            if t % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        expected
    })
}
