//! `outbox-relay replay`: re-publishes a range of outbox rows through the
//! configured routes, for a consumer that lost its queue or a new one that
//! needs history. This module owns the selection (which rows), the keyset
//! paging over the tables, and the pacing; the rows are read the way the
//! polling source reads them ([`polling::read_rows`]) and published by the
//! same [`Publisher`], with confirms and the routes' `on_unroutable` policies.
//!
//! ```text
//!  tables --page (batch_size rows, order_by order)--> router (render, --route filter)
//!         --group (--rate pacing)--> Publisher --confirm--> next group
//! ```
//!
//! Each message keeps its original `message_id` (the route's template
//! renders it from the row, as always) and carries the header
//! `x-outbox-replay` as the AMQP boolean `true`, and no `x-outbox-lsn`
//! ([`SourcePosition::Replay`]). Replay only reads: it never deletes or marks
//! rows and never touches the slot, so it works beside a running relay in
//! either source mode. Consumers deduplicate by `message_id`.
//!
//! The range, in `source.order_by` order (ascending only) with the table's
//! single-column primary key as the final tie-breaker: from the first
//! `order_by` column `>= --since` (a timestamp column), or from the row whose
//! primary key is `--from-id` (inclusive), up to the first `order_by` column
//! `<= --until`. Message routes are not rows and are skipped.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::ack::Progress;
use crate::config::{current_url, Config, RouteMatch, UrlTarget};
use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::{BatchSeq, Datum, OutboxEvent, PgTimestamp, SourcePosition, Transaction};
use crate::metrics::Metrics;
use crate::publish::channel::{BrokerChannel, BrokerTarget};
use crate::publish::{Publisher, PublisherSettings};
use crate::route::{route_names, Router};
use crate::session::checked_router;
use crate::source::polling::{self, PolledTable};
use crate::source::postgres::{quote_ident, PgTarget};
use crate::source::replication::slot::table_columns;

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Type OIDs of `timestamp` and `timestamptz`.
const TIMESTAMP_TYPES: [u32; 2] = [1114, 1184];
/// Rendering problems a dry run lists (it counts them all).
const PROBLEMS_LISTED: usize = 10;

/// Which rows to replay, and how (the command line's flags).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--since`: rows whose first `order_by` column is at or after this
    /// time (RFC 3339 text, parsed by PostgreSQL).
    pub since: Option<String>,
    /// `--from-id`: rows at or after the row with this primary key.
    pub from_id: Option<String>,
    /// `--until`: rows whose first `order_by` column is at or before this time.
    pub until: Option<String>,
    /// `--route`: publish only rows whose first matching route is this one.
    pub route: Option<String>,
    /// `--rate`: at most this many messages per second.
    pub rate: Option<u32>,
    /// `--dry-run`: count and render only; nothing is published.
    pub dry_run: bool,
}

impl Selection {
    fn check(&self) -> Result<()> {
        if self.since.is_some() == self.from_id.is_some() {
            return Err(Error::new(ErrorKind::Config, "replay needs exactly one of --since and --from-id"));
        }
        if self.rate == Some(0) {
            return Err(Error::new(ErrorKind::Config, "--rate must be at least 1 (messages per second)"));
        }
        Ok(())
    }
}

/// What a replay did: printed by the command.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    /// Counted and rendered only.
    pub dry_run: bool,
    /// Rows read from the tables in the range.
    pub rows_read: u64,
    /// Messages handed to the broker.
    pub published: u64,
    /// Messages the broker confirmed.
    pub confirmed: u64,
    /// Rows per route in scope (each row counts for its first matching route).
    pub per_route: Vec<(String, u64)>,
    /// Rows that every route's `when` filter declined.
    pub skipped_by_when: u64,
    /// Rows whose first matching route is not the one `--route` names.
    pub skipped_other_route: u64,
    /// Rows that cannot be rendered (a dry run counts them; a real run stops at the first).
    pub unrenderable: u64,
    /// The first few rendering problems.
    pub problems: Vec<String>,
    /// A stop was requested before the end of the range.
    pub interrupted: bool,
    logged_at: Option<Instant>,
}

impl ReplayReport {
    /// The whole range was replayed (or, for a dry run, rendered) without a problem.
    pub fn complete(&self) -> bool {
        !self.interrupted && self.unrenderable == 0
    }

    fn count_route(&mut self, name: &str) {
        if let Some((_, n)) = self.per_route.iter_mut().find(|(r, _)| r == name) {
            *n += 1;
        }
    }

    /// Logs progress when the last line is older than [`PROGRESS_EVERY`].
    fn log_progress(&mut self) {
        if self.logged_at.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
            self.logged_at = Some(Instant::now());
            tracing::info!(
                rows_read = self.rows_read,
                published = self.published,
                confirmed = self.confirmed,
                "replay progress"
            );
        }
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.interrupted { "interrupted before the end of the range" } else { "done" };
        if self.dry_run {
            writeln!(f, "replay dry run {state}: {} rows read, nothing published", self.rows_read)?;
        } else {
            writeln!(
                f,
                "replay {state}: {} rows read, {} published, {} confirmed by the broker",
                self.rows_read, self.published, self.confirmed
            )?;
        }
        for (route, n) in &self.per_route {
            writeln!(f, "  route {route}: {n}")?;
        }
        writeln!(f, "  declined by every route's when filter: {}", self.skipped_by_when)?;
        if self.skipped_other_route > 0 {
            writeln!(f, "  left out (their first matching route is not --route): {}", self.skipped_other_route)?;
        }
        if self.unrenderable > 0 {
            writeln!(f, "  cannot be rendered: {}", self.unrenderable)?;
            for p in &self.problems {
                writeln!(f, "    {p}")?;
            }
        }
        Ok(())
    }
}

/// Replays the rows `selection` names until the end of the range, or until
/// `stop` (then waits for what is in flight up to `broker.shutdown_timeout`
/// and reports what was confirmed, with `interrupted` set).
///
/// # Errors
///
/// `Config` for a bad selection (unknown route, unparsable time, no row with
/// `--from-id`, a descending or non-timestamp `order_by` where one is
/// needed), `Data` for a row that cannot be rendered (not in a dry run), and
/// the connection and broker errors of either end (no retry: run it again,
/// consumers deduplicate).
pub async fn run(config: &Config, selection: &Selection, stop: CancellationToken) -> Result<ReplayReport> {
    selection.check()?;
    let only = route_filter(config, selection)?;
    let target = PgTarget::parse(current_url(UrlTarget::Source, &config.source.url)?.expose())?;
    let broker = match selection.dry_run {
        true => None,
        false => Some(BrokerTarget::from_config(
            current_url(UrlTarget::Broker, &config.broker.url)?.expose(),
            &config.broker,
        )?),
    };
    let sql = target.connect_sql(config.source.connect_timeout).await?;
    let router = Arc::new(checked_router(&sql, config, &target).await?);
    for (flag, text) in [("--since", &selection.since), ("--until", &selection.until)] {
        if let Some(text) = text {
            check_time(&sql, flag, text).await?;
        }
    }
    let plans = plan(&sql, config, selection, only).await?;
    let mut report = ReplayReport { dry_run: selection.dry_run, ..ReplayReport::default() };
    report.per_route = config
        .routes
        .iter()
        .enumerate()
        .filter(|(i, r)| only.map_or(matches!(r.matcher, RouteMatch::Table { .. }), |o| o == *i))
        .map(|(_, r)| (r.name.clone(), 0))
        .collect();
    let mut link = match broker {
        None => None,
        Some(broker) => Some(Link::open(config, &broker, router.clone(), selection.rate).await?),
    };
    let mut result = Ok(());
    for p in &plans {
        result = replay_table(&sql, p, config, selection, &router, only, link.as_mut(), &mut report, &stop).await;
        if result.is_err() || report.interrupted {
            break;
        }
    }
    if let Some(link) = link {
        result = result.and(link.finish(&mut report).await);
    }
    match &result {
        Ok(()) => tracing::info!(
            rows_read = report.rows_read,
            published = report.published,
            confirmed = report.confirmed,
            interrupted = report.interrupted,
            "replay finished"
        ),
        Err(e) => {
            tracing::error!(error = %e.chain(), rows_read = report.rows_read, confirmed = report.confirmed, "replay stopped by an error")
        }
    }
    result.map(|()| report)
}

/// The index of the route `--route` names, checked to be a table route.
fn route_filter(config: &Config, selection: &Selection) -> Result<Option<usize>> {
    let Some(name) = &selection.route else { return Ok(None) };
    let Some(i) = config.routes.iter().position(|r| &r.name == name) else {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "--route {name:?} is not a route of {}; its routes: {}",
                config.path.display(),
                route_names(&config.routes).join(", ")
            ),
        ));
    };
    if let RouteMatch::MessagePrefix(_) = config.routes[i].matcher {
        return Err(Error::new(
            ErrorKind::Config,
            format!("--route {name:?} is a message_prefix route: logical decoding messages are not rows and cannot be replayed"),
        ));
    }
    Ok(Some(i))
}

/// Fails with a `Config` error naming `flag` unless PostgreSQL reads `text` as a timestamp.
async fn check_time(sql: &Client, flag: &str, text: &str) -> Result<()> {
    match sql.query_one("SELECT $1::text::timestamptz", &[&text]).await {
        Ok(_) => Ok(()),
        Err(e) => match e.as_db_error() {
            Some(db) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{flag} {text:?} is not a time PostgreSQL can read ({}); use RFC 3339, e.g. 2024-05-01T12:00:00Z",
                    db.message()
                ),
            )),
            None => Err(from_pg(ErrorKind::SourceQuery, format!("checking {flag}"), e)),
        },
    }
}

/// A column the pages are ordered and continued by.
#[derive(Debug, Clone, PartialEq)]
struct KeyColumn {
    name: String,
    /// Its type as SQL (`format_type`), for casting a text parameter back.
    sql_type: String,
    /// Its index among the table's columns.
    index: usize,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lower {
    /// First column `>= $1` (one timestamp parameter).
    Since,
    /// The keyset `>=` a row's (one parameter per key column): `--from-id`.
    AtOrAfter,
    /// The keyset `>` the previous page's last row.
    After,
}

/// The clauses after `FROM table` of one page: the lower bound's parameters
/// from `$1`, then `until`'s, ascending order by the keyset, `limit` rows.
fn page_clauses(keyset: &[KeyColumn], lower: Lower, until: bool, limit: u32) -> String {
    let first = quote_ident(&keyset[0].name);
    let cols: Vec<String> = keyset.iter().map(|k| quote_ident(&k.name)).collect();
    let cols = cols.join(", ");
    let (mut cond, used) = match lower {
        Lower::Since => (format!("{first} >= $1::text::timestamptz"), 1),
        Lower::AtOrAfter | Lower::After => {
            let op = if lower == Lower::After { ">" } else { ">=" };
            let vals: Vec<String> =
                keyset.iter().enumerate().map(|(i, k)| format!("${}::text::{}", i + 1, k.sql_type)).collect();
            (format!("({cols}) {op} ({})", vals.join(", ")), keyset.len())
        }
    };
    if until {
        cond.push_str(&format!(" AND {first} <= ${}::text::timestamptz", used + 1));
    }
    format!(" WHERE {cond} ORDER BY {cols} LIMIT {limit}")
}

/// The columns of `source.order_by` (bare names folded to lower case, as
/// PostgreSQL does), or why replay cannot page by it.
fn order_columns(order_by: &str) -> std::result::Result<Vec<String>, String> {
    order_by
        .split(',')
        .map(|item| {
            let mut words = item.split_whitespace();
            let col = words.next().unwrap_or_default();
            if words.next().is_some_and(|d| d.eq_ignore_ascii_case("desc")) {
                return Err(format!("source.order_by = {order_by:?}: replay reads in ascending order only"));
            }
            Ok(match col.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
                Some(quoted) => quoted.to_owned(),
                None => col.to_lowercase(),
            })
        })
        .collect()
}

/// One table to replay: what to read and where to start.
#[derive(Debug)]
struct Plan {
    table: PolledTable,
    /// `order_by`'s columns, then the primary key unless among them.
    keyset: Vec<KeyColumn>,
    lower: Lower,
    /// The lower bound's parameters.
    start: Vec<String>,
}

/// The tables in scope, each with its keyset and start; checks everything
/// before the broker is touched.
async fn plan(sql: &Client, config: &Config, selection: &Selection, only: Option<usize>) -> Result<Vec<Plan>> {
    let order = order_columns(&config.source.order_by)
        .map_err(|m| Error::new(ErrorKind::Config, format!("{}: {m}", config.path.display())))?;
    let mut tables = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        match &r.matcher {
            RouteMatch::Table { schema, table } if only.is_none_or(|o| o == i) => {
                if !tables.contains(&(schema.clone(), table.clone())) {
                    tables.push((schema.clone(), table.clone()));
                }
            }
            RouteMatch::Table { .. } => {}
            RouteMatch::MessagePrefix(_) => tracing::info!(route = %r.name,
                "skipping a message_prefix route: logical decoding messages are not rows and cannot be replayed"),
        }
    }
    let mut plans = Vec::new();
    for (schema, table) in tables {
        let columns = table_columns(sql, &schema, &table).await?.unwrap_or_default();
        let key = polling::primary_key(sql, &schema, &table).await.map_err(|e| match e.kind() {
            ErrorKind::Config => Error::new(
                ErrorKind::Config,
                format!("replay needs a single-column primary key on {schema}.{table} to page through it"),
            ),
            _ => e,
        })?;
        let t = PolledTable { schema, table, columns: Arc::new(columns), key };
        let mut names = order.clone();
        if !names.contains(&t.key) {
            names.push(t.key.clone());
        }
        let keyset = keyset(sql, &t, &names).await?;
        if (selection.since.is_some() || selection.until.is_some())
            && !TIMESTAMP_TYPES.contains(&t.columns[keyset[0].index].type_oid)
        {
            return Err(Error::new(ErrorKind::Config, format!(
                "--since and --until compare with the first column of source.order_by, {:?}, which is not a timestamp in {}.{} (use --from-id)",
                keyset[0].name, t.schema, t.table)));
        }
        let (lower, start) = match (&selection.since, &selection.from_id) {
            (Some(since), _) => (Lower::Since, vec![since.clone()]),
            (None, Some(id)) => match start_row(sql, &t, &keyset, id).await? {
                Some(values) => (Lower::AtOrAfter, values),
                None => {
                    tracing::info!(table = %format!("{}.{}", t.schema, t.table), id = %id, "no row with the --from-id key in this table; skipping it");
                    continue;
                }
            },
            (None, None) => unreachable!("Selection::check"),
        };
        plans.push(Plan { table: t, keyset, lower, start });
    }
    if plans.is_empty() {
        if let Some(id) = &selection.from_id {
            return Err(Error::new(
                ErrorKind::Config,
                format!("--from-id {id:?}: no table in scope has a row with that primary key"),
            ));
        }
    }
    Ok(plans)
}

/// The keyset columns named in `names`, with their SQL types.
async fn keyset(sql: &Client, t: &PolledTable, names: &[String]) -> Result<Vec<KeyColumn>> {
    let rows = sql
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&t.schema, &t.table],
        )
        .await
        .map_err(|e| {
            from_pg(ErrorKind::SourceQuery, format!("reading the column types of {}.{}", t.schema, t.table), e)
        })?;
    names
        .iter()
        .map(|name| {
            let sql_type = rows.iter().find(|r| r.get::<_, String>(0) == *name).map(|r| r.get::<_, String>(1));
            let index = t.columns.iter().position(|c| &c.name == name);
            match (sql_type, index) {
                (Some(sql_type), Some(index)) => Ok(KeyColumn { name: name.clone(), sql_type, index }),
                _ => Err(Error::new(
                    ErrorKind::Config,
                    format!("source.order_by names column {name:?}, which {}.{} does not have", t.schema, t.table),
                )),
            }
        })
        .collect()
}

/// The keyset values of the row whose primary key is `id`, if there is one.
async fn start_row(sql: &Client, t: &PolledTable, keyset: &[KeyColumn], id: &str) -> Result<Option<Vec<String>>> {
    let cols: Vec<String> = keyset.iter().map(|k| format!("{}::text", quote_ident(&k.name))).collect();
    let query = format!(
        "SELECT {} FROM {}.{} WHERE {}::text = $1",
        cols.join(", "),
        quote_ident(&t.schema),
        quote_ident(&t.table),
        quote_ident(&t.key)
    );
    let row = sql
        .query_opt(&query, &[&id])
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("finding --from-id in {}.{}", t.schema, t.table), e))?;
    let Some(row) = row else { return Ok(None) };
    let values: Vec<Datum> = (0..keyset.len())
        .map(|i| row.get::<_, Option<String>>(i).map_or(Datum::Null, |s| Datum::Text(s.into_bytes())))
        .collect();
    let positions: Vec<usize> = (0..keyset.len()).collect();
    cursor(t, keyset, &values, &positions, id).map(Some)
}

/// The keyset values of a row (`positions` index `values` per key column),
/// as the next lower bound; a NULL is an error (paging cannot pass it).
fn cursor(
    t: &PolledTable,
    keyset: &[KeyColumn],
    values: &[Datum],
    positions: &[usize],
    key: &str,
) -> Result<Vec<String>> {
    keyset
        .iter()
        .zip(positions)
        .map(|(k, &i)| match values.get(i) {
            Some(Datum::Text(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            _ => Err(Error::new(
                ErrorKind::Data,
                format!(
                    "row {key} of {}.{} has NULL in order_by column {:?}: replay cannot page past it",
                    t.schema, t.table, k.name
                ),
            )),
        })
        .collect()
}

/// Reads one table's range page by page and hands each page on.
#[allow(clippy::too_many_arguments)]
async fn replay_table(
    sql: &Client,
    plan: &Plan,
    config: &Config,
    selection: &Selection,
    router: &Router,
    only: Option<usize>,
    mut link: Option<&mut Link>,
    report: &mut ReplayReport,
    stop: &CancellationToken,
) -> Result<()> {
    let (mut lower, mut bound) = (plan.lower, plan.start.clone());
    let limit = config.source.batch_size;
    let positions: Vec<usize> = plan.keyset.iter().map(|k| k.index).collect();
    loop {
        if stop.is_cancelled() {
            report.interrupted = true;
            return Ok(());
        }
        let clauses = page_clauses(&plan.keyset, lower, selection.until.is_some(), limit);
        let mut params: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|s| s as &(dyn ToSql + Sync)).collect();
        if let Some(until) = &selection.until {
            params.push(until);
        }
        let rows = polling::read_rows(sql, &plan.table, &clauses, &params).await?;
        let Some((last_key, last)) = rows.last() else { return Ok(()) };
        let full = rows.len() >= limit as usize;
        bound = cursor(&plan.table, &plan.keyset, last, &positions, last_key)?;
        lower = Lower::After;
        report.rows_read += rows.len() as u64;
        let events = plan.table.events(
            rows.into_iter().map(|(_, v)| v),
            SourcePosition::Replay(BatchSeq(0)),
            PgTimestamp::now(),
        );
        let events = select(router, config, events, only, report)?;
        if let Some(link) = link.as_deref_mut() {
            link.send(events, report, stop).await?;
        }
        report.log_progress();
        if !full || report.interrupted {
            return Ok(());
        }
    }
}

/// Renders each event through the whole router and keeps those whose first
/// matching route is in scope, counting the rest.
fn select(
    router: &Router,
    config: &Config,
    events: Vec<OutboxEvent>,
    only: Option<usize>,
    report: &mut ReplayReport,
) -> Result<Vec<OutboxEvent>> {
    let mut kept = Vec::with_capacity(events.len());
    for ev in events {
        match router.render(&ev) {
            Ok(None) => report.skipped_by_when += 1,
            Ok(Some(m)) if only.is_none_or(|o| o == m.route) => {
                report.count_route(&config.routes[m.route].name);
                kept.push(ev);
            }
            Ok(Some(_)) => report.skipped_other_route += 1,
            Err(e) if report.dry_run => {
                report.unrenderable += 1;
                if report.problems.len() < PROBLEMS_LISTED {
                    report.problems.push(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(kept)
}

/// The publishing side: a publisher task on its own channel, fed one group
/// at a time, each waited for until confirmed.
struct Link {
    txns: mpsc::Sender<Transaction>,
    progress: watch::Receiver<Progress>,
    publisher: JoinHandle<Result<()>>,
    /// The last group's sequence number.
    seq: u64,
    /// A group sent and not (yet) seen confirmed: its position and size.
    pending: Option<(SourcePosition, usize)>,
    /// Messages per group: a page, or a tenth of a second's worth under `--rate`.
    group: usize,
    rate: Option<u32>,
    started: Instant,
    shutdown_timeout: Duration,
}

impl Link {
    async fn open(config: &Config, broker: &BrokerTarget, router: Arc<Router>, rate: Option<u32>) -> Result<Link> {
        let b = &config.broker;
        let channel = BrokerChannel::open(broker, b.heartbeat, b.connect_timeout, "outbox-relay replay").await?;
        tracing::info!(broker = %broker.redacted, "connected to RabbitMQ (confirm mode)");
        let (txns, rx) = mpsc::channel(1);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let metrics = Metrics::new(route_names(&config.routes));
        let publisher = Publisher::new(channel, router, PublisherSettings::from_config(b), progress_tx, metrics);
        let page = config.source.batch_size.max(1) as usize;
        Ok(Link {
            txns,
            progress,
            publisher: tokio::spawn(publisher.run(rx)),
            seq: 0,
            pending: None,
            group: rate.map_or(page, |r| (r as usize / 10).clamp(1, page)),
            rate,
            started: Instant::now(),
            shutdown_timeout: b.shutdown_timeout,
        })
    }

    /// Publishes `events` group by group, paced by `--rate`, each group
    /// confirmed before the next; returns early (with `interrupted` set) on a stop.
    async fn send(
        &mut self,
        mut events: Vec<OutboxEvent>,
        report: &mut ReplayReport,
        stop: &CancellationToken,
    ) -> Result<()> {
        while !events.is_empty() {
            let rest = events.split_off(self.group.min(events.len()));
            let mut group = std::mem::replace(&mut events, rest);
            if let Some(rate) = self.rate {
                let due = self.started + Duration::from_secs_f64(report.published as f64 / f64::from(rate));
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = stop.cancelled() => {
                        report.interrupted = true;
                        return Ok(());
                    }
                }
            }
            self.seq += 1;
            let position = SourcePosition::Replay(BatchSeq(self.seq));
            for (i, ev) in group.iter_mut().enumerate() {
                ev.position = position;
                ev.ordinal = i as u32;
            }
            let n = group.len();
            let txn = Transaction { position, commit_time: PgTimestamp::now(), events: group };
            if self.txns.send(txn).await.is_err() {
                return Err(self.publisher_ended().await);
            }
            report.published += n as u64;
            self.pending = Some((position, n));
            loop {
                if self.progress.borrow().confirmed.is_some_and(|c| c >= position) {
                    break;
                }
                tokio::select! {
                    changed = self.progress.changed() => if changed.is_err() {
                        return Err(self.publisher_ended().await);
                    },
                    _ = stop.cancelled() => {
                        report.interrupted = true;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_secs(1)) => report.log_progress(),
                }
            }
            self.pending = None;
            report.confirmed += n as u64;
        }
        Ok(())
    }

    /// Why the publisher ended while it was being fed.
    async fn publisher_ended(&mut self) -> Error {
        match tokio::time::timeout(self.shutdown_timeout, &mut self.publisher).await {
            Ok(Ok(Err(e))) => e,
            Ok(Ok(Ok(()))) => Error::new(ErrorKind::BrokerConnection, "the publisher stopped unexpectedly"),
            Ok(Err(join)) => Error::with_source(ErrorKind::Panic, "the publisher task failed", join),
            Err(_) => Error::new(ErrorKind::BrokerConnection, "the publisher stopped taking messages"),
        }
    }

    /// Ends the publisher: what is in flight gets until `shutdown_timeout`
    /// to be confirmed, and counts if it was.
    async fn finish(mut self, report: &mut ReplayReport) -> Result<()> {
        drop(self.txns);
        let result = match tokio::time::timeout(self.shutdown_timeout, &mut self.publisher).await {
            Ok(Ok(r)) => r,
            Ok(Err(join)) => Err(Error::with_source(ErrorKind::Panic, "the publisher task failed", join)),
            Err(_) => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "shutdown timeout: giving up on unconfirmed messages");
                self.publisher.abort();
                Ok(())
            }
        };
        if let Some((position, n)) = self.pending {
            if self.progress.borrow().confirmed.is_some_and(|c| c >= position) {
                report.confirmed += n as u64;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyset(cols: &[(&str, &str)]) -> Vec<KeyColumn> {
        cols.iter()
            .enumerate()
            .map(|(index, (n, t))| KeyColumn { name: (*n).into(), sql_type: (*t).into(), index })
            .collect()
    }

    #[test]
    fn pages_start_at_a_time_or_a_row_and_continue_after_the_last_row() {
        let k = keyset(&[("created_at", "timestamp with time zone"), ("id", "uuid")]);
        assert_eq!(
            page_clauses(&k, Lower::Since, true, 500),
            " WHERE \"created_at\" >= $1::text::timestamptz AND \"created_at\" <= $2::text::timestamptz \
             ORDER BY \"created_at\", \"id\" LIMIT 500"
        );
        assert_eq!(
            page_clauses(&k, Lower::AtOrAfter, false, 10),
            " WHERE (\"created_at\", \"id\") >= ($1::text::timestamp with time zone, $2::text::uuid) \
             ORDER BY \"created_at\", \"id\" LIMIT 10"
        );
        assert_eq!(
            page_clauses(&k, Lower::After, true, 10),
            " WHERE (\"created_at\", \"id\") > ($1::text::timestamp with time zone, $2::text::uuid) \
             AND \"created_at\" <= $3::text::timestamptz ORDER BY \"created_at\", \"id\" LIMIT 10"
        );
    }

    #[test]
    fn order_by_columns_fold_like_postgresql_and_descending_is_refused() {
        assert_eq!(order_columns("created_at, id").unwrap(), ["created_at", "id"]);
        assert_eq!(order_columns("Seq ASC, \"Id\" asc").unwrap(), ["seq", "Id"]);
        assert!(order_columns("created_at DESC, id").unwrap_err().contains("ascending"));
    }

    #[test]
    fn a_selection_needs_exactly_one_start_and_a_positive_rate() {
        let since = Selection { since: Some("2024-01-01T00:00:00Z".into()), ..Selection::default() };
        assert!(since.check().is_ok());
        assert_eq!(Selection::default().check().unwrap_err().kind(), ErrorKind::Config);
        let both = Selection { from_id: Some("x".into()), ..since.clone() };
        assert_eq!(both.check().unwrap_err().kind(), ErrorKind::Config);
        let zero = Selection { rate: Some(0), ..since };
        assert!(zero.check().unwrap_err().context().contains("--rate"));
    }

    #[test]
    fn the_report_names_counts_per_route() {
        let r = ReplayReport {
            rows_read: 3,
            published: 2,
            confirmed: 2,
            per_route: vec![("wallet".into(), 2)],
            skipped_by_when: 1,
            ..ReplayReport::default()
        };
        let text = r.to_string();
        assert!(text.starts_with("replay done: 3 rows read, 2 published, 2 confirmed by the broker\n"), "{text}");
        assert!(text.contains("  route wallet: 2\n"), "{text}");
        assert!(r.complete());
    }
}
