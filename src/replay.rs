//! `outbox-relay replay`: re-publishes a range of outbox rows through the
//! configured routes, for a consumer that lost its queue or a new one that
//! needs history. This module owns the selection (which rows), the keyset
//! paging over the tables, and the pacing; the rows are read the way the
//! polling source reads them (`polling::read_rows`) and published by the
//! same [`Publisher`](crate::publish::Publisher), with confirms and the routes' `on_unroutable` policies.
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
//!
//! `range` plans the tables and builds each page's SQL; `link` feeds the
//! publisher and waits for its confirms.

mod link;
mod range;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{current_url, Config, RouteMatch, UrlTarget};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{BatchSeq, OutboxEvent, PgTimestamp, SourcePosition};
use crate::publish::nodes::BrokerNodes;
use crate::route::{route_names, Router};
use crate::session::checked_router;
use crate::source::polling;
use crate::source::postgres::PgTarget;
use link::Link;
use range::{check_time, cursor, page_clauses, plan, Lower, Plan};

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
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
    /// Rows selected per route in scope (each row counts for its first
    /// matching route; what was published is `published`).
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
    if !selection.dry_run {
        // Every broker URL is checked before anything is connected.
        BrokerNodes::targets(&config.broker)?;
    }
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
    let mut link = match selection.dry_run {
        true => None,
        false => Some(Link::open(config, router.clone(), selection.rate).await?),
    };
    let mut result = Ok(());
    for p in &plans {
        let scope = Scope { config, selection, router: &router, only, stop: &stop };
        result = replay_table(&sql, p, &scope, link.as_mut(), &mut report).await;
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

/// What every table of one replay shares: the config, the flags, the
/// routes, the `--route` filter and the stop token.
struct Scope<'a> {
    config: &'a Config,
    selection: &'a Selection,
    router: &'a Router,
    only: Option<usize>,
    stop: &'a CancellationToken,
}

/// Reads one table's range page by page and hands each page on.
async fn replay_table(
    sql: &Client,
    plan: &Plan,
    scope: &Scope<'_>,
    mut link: Option<&mut Link>,
    report: &mut ReplayReport,
) -> Result<()> {
    let Scope { config, selection, router, only, stop } = *scope;
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

#[cfg(test)]
mod tests {
    use super::*;

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
