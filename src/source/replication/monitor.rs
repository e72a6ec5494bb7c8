//! Beside the reader, on the ordinary SQL connection: keeps the relay's
//! durable record ([`super::record`]) up to date and the slot's health in the
//! metrics. Nothing here is on the path of an event; a failed write or read
//! is logged and retried on the next tick.
//!
//! # How `replay_from` is bounded
//!
//! After a lost slot, `recover` re-publishes every row whose ordering column
//! (by default `created_at`, whose default `now()` is the start time of the
//! inserting transaction) is at or after `replay_from`, minus
//! `source.recover_margin`. The rows that may not have been confirmed are
//! those of transactions that commit after the last confirmed commit, at
//! time `C`. Such a transaction either started at or after `C - 2 ticks`
//! (then its rows are at or after that time), or it was running during the
//! whole interval `[C - 2 ticks, C]`, which holds a sample of the oldest
//! running transaction's start (`pg_stat_activity.xact_start`, taken about
//! every tick): that sample is at or before its start. So
//! `replay_from = min(C - 2 ticks, every sample taken since then)` covers
//! them all, on the server's own clock. Until the samples reach back that
//! far (just after a start) the previous bound is kept. Without
//! `pg_read_all_stats` the relay sees only its own role's transactions:
//! `recover_margin` (default 5 minutes) is then the bound for the others.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::record::Place;
use super::slot;
use crate::ack::{Progress, Reported};
use crate::error::{from_pg, ErrorKind, Result};
use crate::event::{Lsn, PgTimestamp};
use crate::metrics::Metrics;

/// How often the oldest running transaction is sampled and the record
/// written (when the position moved): the "at most about once a second".
const TICK: Duration = Duration::from_secs(1);
/// Slot health is read every this many ticks.
const HEALTH_EVERY: u32 = 10;
/// Samples kept: enough to reach back across a long confirm stall.
const SAMPLES: usize = 4096;

/// Aborts the monitor when the reader's session ends.
#[derive(Debug)]
pub(super) struct MonitorGuard(JoinHandle<()>, CancellationToken);

impl MonitorGuard {
    /// Cancelled once the SQL connection is closed (a fast shutdown closes
    /// it before it stops the walsender).
    pub(super) fn sql_closed(&self) -> &CancellationToken {
        &self.1
    }
}

impl Drop for MonitorGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The monitor's inputs.
pub(super) struct Monitor {
    pub(super) sql: Client,
    pub(super) place: Place,
    pub(super) progress: watch::Receiver<Progress>,
    pub(super) reported: Arc<Reported>,
    pub(super) metrics: Arc<Metrics>,
    /// The record's bound when the session started (RFC 3339); `None` when
    /// the role may not keep a record (then only the slot health is read).
    pub(super) replay_from: Option<String>,
}

impl Monitor {
    /// Starts the monitor task.
    pub(super) fn spawn(self) -> MonitorGuard {
        let closed = CancellationToken::new();
        MonitorGuard(tokio::spawn(self.run(closed.clone())), closed)
    }

    async fn run(self, closed: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples: VecDeque<(PgTimestamp, PgTimestamp)> = VecDeque::new();
        let mut written: Option<Lsn> = None;
        let recording = self.replay_from.is_some();
        let mut replay_from = self.replay_from.clone().unwrap_or_default();
        for n in 0u32.. {
            tick.tick().await;
            if self.sql.is_closed() {
                closed.cancel();
                return;
            }
            if n % HEALTH_EVERY == 0 {
                self.read_health().await;
            }
            if !recording {
                continue;
            }
            match sample(&self.sql).await {
                Ok(s) => {
                    if samples.len() == SAMPLES {
                        samples.pop_front();
                    }
                    samples.push_back(s);
                }
                Err(e) => tracing::warn!(error = %e.chain(), "sampling the oldest running transaction failed"),
            }
            let progress = *self.progress.borrow();
            let (Some(lsn), Some(commit)) = (self.reported.get(), progress.confirmed_commit_time) else { continue };
            if written == Some(lsn) {
                continue;
            }
            if let Some(bound) = bound(&samples, commit) {
                replay_from = bound.to_rfc3339();
            }
            match self.place.progress(&self.sql, lsn, &commit.to_rfc3339(), &replay_from).await {
                Ok(()) => written = Some(lsn),
                Err(e) => tracing::warn!(error = %e.chain(), "writing the relay's progress record failed"),
            }
        }
    }

    async fn read_health(&self) {
        match slot::slot_health(&self.sql, &self.place.slot).await {
            Ok(Some(h)) => self.metrics.set_slot_health(h.retained_bytes, &h.wal_status, h.safe_wal_size),
            Ok(None) => tracing::warn!(slot = %self.place.slot, "replication slot disappeared"),
            Err(e) => tracing::warn!(error = %e.chain(), "reading slot health failed"),
        }
    }
}

/// `(server time, start of the oldest running transaction or server time)`.
async fn sample(sql: &Client) -> Result<(PgTimestamp, PgTimestamp)> {
    let row = sql
        .query_one(
            "SELECT (extract(epoch FROM now() - '2000-01-01 00:00:00+00'::timestamptz) * 1e6)::bigint, \
                    (extract(epoch FROM coalesce(min(xact_start), now()) - '2000-01-01 00:00:00+00'::timestamptz) * 1e6)::bigint \
             FROM pg_stat_activity WHERE datname = current_database() AND xact_start IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, "sampling pg_stat_activity", e))?;
    Ok((PgTimestamp(row.get(0)), PgTimestamp(row.get(1))))
}

/// The replay bound for the last confirmed commit at `commit` (see the
/// module doc), or `None` while the samples do not reach back far enough.
fn bound(samples: &VecDeque<(PgTimestamp, PgTimestamp)>, commit: PgTimestamp) -> Option<PgTimestamp> {
    let tick = i64::try_from(TICK.as_micros()).unwrap_or(i64::MAX);
    // Two ticks: samples come about a tick apart, not exactly.
    let from = PgTimestamp(commit.0.saturating_sub(2 * tick));
    let (first, _) = samples.front()?;
    if *first > from {
        return None;
    }
    let oldest = samples.iter().filter(|(at, _)| *at >= from).map(|(_, start)| *start).min();
    Some(oldest.map_or(from, |o| o.min(from)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn samples(list: &[(i64, i64)]) -> VecDeque<(PgTimestamp, PgTimestamp)> {
        list.iter().map(|&(at, start)| (PgTimestamp(at * S), PgTimestamp(start * S))).collect()
    }

    #[test]
    fn the_bound_is_a_tick_before_the_commit_when_nothing_ran_long() {
        let s = samples(&[(90, 90), (91, 91), (100, 100), (101, 101)]);
        assert_eq!(bound(&s, PgTimestamp(100 * S)), Some(PgTimestamp(98 * S)));
    }

    #[test]
    fn a_long_transaction_running_across_the_commit_pulls_the_bound_back() {
        // A transaction from t=10 still running at t=99..101: its rows were
        // created at 10 and it commits after the confirmed commit at 100.
        let s = samples(&[(97, 97), (99, 10), (100, 10), (101, 101)]);
        assert_eq!(bound(&s, PgTimestamp(100 * S)), Some(PgTimestamp(10 * S)));
    }

    #[test]
    fn samples_from_before_the_window_do_not_count() {
        let s = samples(&[(50, 5), (97, 97), (99, 99), (100, 100)]);
        assert_eq!(bound(&s, PgTimestamp(100 * S)), Some(PgTimestamp(98 * S)));
    }

    #[test]
    fn no_bound_until_the_samples_reach_back_to_the_window() {
        let s = samples(&[(100, 100), (101, 101)]);
        assert_eq!(bound(&s, PgTimestamp(100 * S)), None);
        assert_eq!(bound(&VecDeque::new(), PgTimestamp(100 * S)), None);
    }
}
