//! The polling source, for databases without logical replication: under a
//! session advisory lock (one active instance per slot name), read a batch of
//! rows in `order_by` order, publish them through the same publisher, and
//! only after the broker confirmed the whole batch delete them (or set
//! `mark_column`). A crash between the confirm and the delete republishes the
//! batch: at least once. Order is `order_by` among the rows one poll sees,
//! which is not commit order when transactions overlap.
//!
//! Rows are identified for the delete by the table's single-column primary
//! key. Polling publishes no `x-outbox-lsn` header, and `timestamp` is the
//! time the row was read (the commit time is not known without the WAL).
//!
//! Only the rows a route matches are published and then deleted or marked:
//! a row that every route's `when` filter declines stays in the table (a
//! warning per batch, with the count, at most once a minute per table).
//! So that such rows never stall polling, each batch of a pass continues
//! after the previous batch's last row (keyset continuation on `order_by`
//! plus the key), and a pass ends at the first batch that is not full; the
//! next pass starts from the beginning. `polling/scan.rs` has the details and the SQL.

mod scan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use crate::config::{AfterPublish, Config};
use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::{BatchSeq, Column, Datum, EventSource, OutboxEvent, Part, PgTimestamp, SourcePosition, Transaction};
use crate::route::Router;
use crate::source::replication::slot::table_columns;
use crate::source::{publisher_gone, SourceLink};
pub(crate) use scan::{order_items, typed_columns};
use scan::{Param, Pass, Scan};

/// Rows no route matches are warned about at most this often per table.
const DECLINED_WARN_EVERY: Duration = Duration::from_secs(60);

/// One table polled: its columns and its key.
#[derive(Debug, Clone)]
pub struct PolledTable {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Every column, in table order (what the router sees).
    pub columns: Arc<Vec<Column>>,
    /// The single-column primary key used to delete or mark rows.
    pub key: String,
}

impl PolledTable {
    /// Rows as read by [`read_rows`] (their values), as the events of one
    /// transaction at `position`, read at `now` (the commit time is not
    /// known without the WAL).
    pub(crate) fn events(
        &self,
        rows: impl IntoIterator<Item = Vec<Datum>>,
        position: SourcePosition,
        now: PgTimestamp,
    ) -> Vec<OutboxEvent> {
        let qualified = format!("{}.{}", self.schema, self.table);
        rows.into_iter()
            .enumerate()
            .map(|(i, values)| OutboxEvent {
                source: EventSource::Row { table: qualified.clone(), columns: self.columns.clone(), values },
                position,
                commit_time: now,
                ordinal: i as u32,
            })
            .collect()
    }
}

/// The advisory lock key for a slot name: one polling instance per name.
pub fn lock_name(slot: &str) -> String {
    format!("outbox-relay/{slot}")
}

/// Takes the session-level advisory lock, or fails with `SlotInUse` when
/// another instance holds it (this one then stands by).
///
/// # Errors
///
/// `SlotInUse`, or `SourceQuery`.
pub async fn lock(client: &Client, slot: &str) -> Result<()> {
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&lock_name(slot)])
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, "taking the polling advisory lock", e))?
        .get(0);
    if got {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::SlotInUse, format!("another instance holds the polling lock {:?}", lock_name(slot))))
    }
}

/// The single-column primary key of `schema.table`.
///
/// # Errors
///
/// `Config` when the table has no primary key or a composite one.
pub async fn primary_key(client: &Client, schema: &str, table: &str) -> Result<String> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) \
             WHERE i.indisprimary AND n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("reading the primary key of {schema}.{table}"), e))?;
    match rows.as_slice() {
        [row] => Ok(row.get(0)),
        _ => Err(Error::new(
            ErrorKind::Config,
            format!("polling needs a single-column primary key on {schema}.{table} to delete or mark published rows"),
        )),
    }
}

/// Takes the lock and reads each routed table's columns and key: everything
/// polling needs before the broker is touched.
///
/// # Errors
///
/// `Config` for message routes (polling reads tables only) or a table
/// without a single-column primary key; `SlotInUse` when another instance
/// holds the lock; `SourceQuery`.
pub async fn prepare(client: &Client, config: &Config, router: &Router) -> Result<Vec<PolledTable>> {
    if router.wants_messages() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{}: message_prefix routes need source.mode = \"replication\"", config.path.display()),
        ));
    }
    lock(client, &config.source.slot).await?;
    let mut tables = Vec::new();
    for (schema, table) in router.tables() {
        let columns = table_columns(client, &schema, &table).await?.unwrap_or_default();
        let key = primary_key(client, &schema, &table).await?;
        tables.push(PolledTable { schema, table, columns: Arc::new(columns), key });
    }
    Ok(tables)
}

/// A polling source holding its lock, ready to read.
#[derive(Debug)]
pub struct Ready {
    /// The connection that holds the advisory lock (session-level: it is
    /// released when this connection ends) and runs every query; shared
    /// with [`lock_lost`].
    client: Arc<Client>,
    /// The routed tables.
    tables: Vec<PolledTable>,
}

impl Ready {
    /// The source on the connection that took the lock for `slot`.
    pub fn new(client: Client, tables: Vec<PolledTable>, slot: &str) -> Self {
        tracing::info!(lock = %lock_name(slot), "polling (advisory lock held)");
        Ready { client: Arc::new(client), tables }
    }

    /// A watch on the lock's connection, for [`lock_lost`].
    pub fn lock_connection(&self) -> Arc<Client> {
        self.client.clone()
    }
}

/// Resolves when the connection holding the lock can no longer be trusted
/// to hold it: closed, a probe (`SELECT 1`, every `receive_timeout / 3`)
/// failed, or a probe got no answer within `2/3` of it. The session then
/// ends and the publisher with it, within `receive_timeout` of the
/// connection going silent. The server releases the lock only when it
/// drops the session (its `tcp_keepalives_*`, `tcp_user_timeout` or
/// `idle_session_timeout`): keep that longer than `receive_timeout`, so
/// this holder stops before another instance can take the lock.
pub async fn lock_lost(client: Arc<Client>, receive_timeout: std::time::Duration) -> Error {
    let lost = |what: String| {
        Error::new(
            ErrorKind::SourceConnection,
            format!("the polling lock's connection {what}: stopping before another instance takes the lock"),
        )
    };
    loop {
        tokio::time::sleep(receive_timeout / 3).await;
        if client.is_closed() {
            return lost("is closed".into());
        }
        match tokio::time::timeout(receive_timeout * 2 / 3, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return lost(format!("failed a probe ({e})")),
            Err(_) => {
                return lost(format!(
                    "did not answer a probe within {} ms (source.receive_timeout)",
                    (receive_timeout * 2 / 3).as_millis()
                ))
            }
        }
    }
}

/// Runs the polling loop until a stop, then lets the publisher drain (the
/// contract of [`crate::source`]). Each batch is its own transaction, known
/// by its sequence number; its rows are deleted or marked once the broker
/// confirmed all of them.
///
/// # Errors
///
/// Database failures or [`publisher_gone`] (the session restarts).
pub async fn run(ready: Ready, config: &Config, link: SourceLink) -> Result<()> {
    let Ready { client, tables } = ready;
    let SourceLink { txns: tx, mut progress, stop, health } = link;
    let router = Router::new(&config.routes);
    let mut scans = Vec::with_capacity(tables.len());
    for t in &tables {
        scans.push((Scan::prepare(&client, t, &config.source.order_by).await?, Pass::default()));
    }
    let mut warned: Vec<Option<Instant>> = vec![None; tables.len()];
    let mut seq: u64 = 0;
    loop {
        health.beat();
        if stop.is_cancelled() {
            break;
        }
        // Rows published this round, and whether a pass goes on (a full batch).
        let (mut found, mut more) = (0, false);
        for (i, t) in tables.iter().enumerate() {
            let (scan, pass) = &mut scans[i];
            let rows = read_batch(&client, t, config, scan, pass).await?;
            let full = rows.len() >= config.source.batch_size as usize;
            let now = PgTimestamp::now();
            let batch = SourcePosition::Batch(BatchSeq(seq + 1));
            let (all_keys, values): (Vec<String>, Vec<Vec<Datum>>) = rows.into_iter().unzip();
            let all = t.events(values, batch, now);
            // Only the rows a route matches are published, then deleted or
            // marked; the others stay, and the pass reads past them.
            let declines: Vec<bool> = all.iter().map(|ev| router.declines(ev)).collect();
            let declined: Vec<String> =
                all_keys.iter().zip(&declines).filter(|(_, d)| **d).map(|(k, _)| k.clone()).collect();
            let last = all.last().and_then(|ev| match &ev.source {
                EventSource::Row { values, .. } => Some(values.as_slice()),
                EventSource::Message { .. } => None,
            });
            more |= scan.advance(pass, last, &declined, full);
            if !declined.is_empty() {
                warn_declined(t, declined.len(), &mut warned[i]);
            }
            let (mut keys, mut events) = (Vec::new(), Vec::new());
            for ((key, mut ev), declined) in all_keys.into_iter().zip(all).zip(declines) {
                if !declined {
                    ev.ordinal = events.len() as u32;
                    keys.push(key);
                    events.push(ev);
                }
            }
            if events.is_empty() {
                continue;
            }
            found += events.len();
            seq += 1;
            if tx.send(Transaction { position: batch, commit_time: now, events, part: Part::WHOLE }).await.is_err() {
                return Err(publisher_gone());
            }
            // Wait for the broker to confirm the whole batch. After a stop
            // the publisher still drains it, within the session's deadline;
            // if the session gives up first, the rows stay for the next start.
            loop {
                health.beat();
                if progress.borrow().confirmed.is_some_and(|c| c >= batch) {
                    break;
                }
                tokio::select! {
                    // Wake up now and then to beat.
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    res = progress.changed() => if res.is_err() && progress.borrow().confirmed.is_none_or(|c| c < batch) {
                        if stop.is_cancelled() {
                            tracing::warn!("shutdown timeout: unconfirmed rows stay in the table and are published on the next start");
                            return Ok(());
                        }
                        return Err(publisher_gone());
                    },
                }
            }
            finish_batch(&client, t, config, scan, &keys).await?;
        }
        if found == 0 && !more {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(config.source.poll_interval) => {}
                res = progress.changed() => if res.is_err() { return Err(publisher_gone()); },
            }
        }
    }
    // Nothing is in flight between batches: let the publisher end.
    drop(tx);
    while progress.changed().await.is_ok() {}
    Ok(())
}

/// Says that rows of a batch stay in the table because no route matches
/// them: once per batch, at most once a minute per table (the same rows are
/// read again by every pass until something removes them).
fn warn_declined(t: &PolledTable, count: usize, last: &mut Option<Instant>) {
    if last.is_some_and(|at| at.elapsed() < DECLINED_WARN_EVERY) {
        tracing::debug!(table = %format!("{}.{}", t.schema, t.table), count, "rows no route matches stay in the table");
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(
        table = %format!("{}.{}", t.schema, t.table),
        count,
        "{count} row(s) of this batch match no route (every route's `when` filter declines them): they are neither \
         published nor deleted or marked, and stay in the table (repeated at most once a minute)"
    );
}

/// Reads the pass's next batch: up to `batch_size` unpublished rows.
async fn read_batch(
    client: &Client,
    t: &PolledTable,
    config: &Config,
    scan: &Scan,
    pass: &Pass,
) -> Result<Vec<(String, Vec<Datum>)>> {
    let (clauses, params) = scan.batch(mark_column(config), pass, config.source.batch_size);
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(Param::as_sql).collect();
    read_rows(client, t, &clauses, &params).await
}

/// The mark column, in mark mode.
fn mark_column(config: &Config) -> Option<&str> {
    match (config.source.after_publish, &config.source.mark_column) {
        (AfterPublish::Mark, Some(m)) => Some(m),
        _ => None,
    }
}

/// Reads rows of `t` with `SELECT key, every column FROM t {clauses}`
/// (`params` bound in `clauses`): each row's key, then its values in table
/// order, all as text (the same text format pgoutput sends). Shared by
/// polling and [`crate::replay`].
///
/// # Errors
///
/// `SourceQuery`.
pub(crate) async fn read_rows(
    client: &Client,
    t: &PolledTable,
    clauses: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<(String, Vec<Datum>)>> {
    let sql = scan::rows_sql(t, clauses);
    let rows = client
        .query(&sql, params)
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("reading rows of {}.{}", t.schema, t.table), e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let key: String = r.get(0);
            let values = (1..r.len())
                .map(|i| match r.get::<_, Option<String>>(i) {
                    Some(s) => Datum::Text(s.into_bytes().into()),
                    None => Datum::Null,
                })
                .collect();
            (key, values)
        })
        .collect())
}

/// Deletes or marks the confirmed rows, by key.
async fn finish_batch(client: &Client, t: &PolledTable, config: &Config, scan: &Scan, keys: &[String]) -> Result<()> {
    client.execute(&scan.finish_sql(t, mark_column(config)), &[&keys]).await.map_err(|e| {
        from_pg(ErrorKind::SourceQuery, format!("removing published rows from {}.{}", t.schema, t.table), e)
    })?;
    Ok(())
}
