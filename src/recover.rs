//! `outbox-relay recover` (and `source.on_slot_lost = "recover"`): after a
//! lost slot, make the relay whole again without guesswork.
//!
//! 1. Mark the record `recovering` and create the new slot *first*: from its
//!    consistent point on, every commit is in the new slot's stream. While
//!    the mark is set, `run` refuses to stream (a crash here is resumed by
//!    running `recover` again, which keeps the slot it made).
//! 2. Re-publish from the outbox table every row whose ordering column is at
//!    or after the record's `replay_from` minus `source.recover_margin` (how
//!    that bound is kept: [`crate::source::replication`]'s monitor), in
//!    order, through the same routes, with the original `message_id` and the
//!    header `x-outbox-replay: true`, with publisher confirms.
//! 3. Clear the mark; `run` streams from the new slot.
//!
//! Rows committed around the switch may arrive twice (once replayed, once
//! streamed), never zero times. What cannot be recovered: rows no longer in
//! the table (an outbox whose rows are deleted in the same transaction, or
//! by a clean-up job, before they were confirmed). `check` warns about such
//! a table.

use std::fmt;

use tokio_util::sync::CancellationToken;

use crate::config::{current_url, Config, SourceMode, UrlTarget};
use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::Lsn;
use crate::replay::{self, ReplayReport, Selection};
use crate::route::Router;
use crate::source::postgres::PgTarget;
use crate::source::replication::record::{Place, RFC3339_UTC};
use crate::source::replication::slot;

/// What a recovery did.
#[derive(Debug)]
pub struct RecoverReport {
    /// The slot recovered.
    pub slot: String,
    /// Where the new slot starts (`None` when a recovery left it in place).
    pub created_at: Option<Lsn>,
    /// Rows at or after this time were re-published.
    pub since: String,
    /// What the re-publishing did.
    pub replay: ReplayReport,
}

impl fmt::Display for RecoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.created_at {
            Some(lsn) => write!(f, "slot {:?} created at {lsn}; ", self.slot)?,
            None => write!(f, "slot {:?} kept (made by an unfinished recovery); ", self.slot)?,
        }
        write!(f, "re-published rows from {}: {}", self.since, self.replay)
    }
}

/// Runs the recovery described in the module doc.
///
/// # Errors
///
/// `Config` in polling mode (no slot) or when there is nothing to recover
/// from (no record: the relay never streamed from this slot); `SourceQuery`,
/// broker errors and `Data` errors from the re-publishing.
pub async fn run(config: &Config, stop: &CancellationToken) -> Result<RecoverReport> {
    let src = &config.source;
    if src.mode == SourceMode::Polling {
        return Err(Error::new(
            ErrorKind::Config,
            "source.mode = \"polling\" has no replication slot to recover; unpublished rows are still in the table",
        ));
    }
    let target = PgTarget::parse(current_url(UrlTarget::Source, &src.url)?.expose())?;
    let sql = target.connect_sql(src.connect_timeout).await?;
    let router = Router::new(&config.routes);
    let place = Place::new(&router.tables(), &src.slot);
    let Some(record) = place.read(&sql).await? else {
        return Err(Error::new(
            ErrorKind::SlotMissing,
            format!(
                "the relay has no record of slot {:?}: it never streamed from it, so nothing was lost \
                 (`outbox-relay setup` or a first `run` creates it)",
                src.slot
            ),
        ));
    };
    let state = slot::slot_state(&sql, &src.slot).await?;
    let created_at = match state {
        Some(s) if record.recovering => {
            tracing::info!(slot = %src.slot, "resuming an unfinished recovery: its slot is kept");
            if s.active_pid.is_some() {
                return Err(Error::new(
                    ErrorKind::SlotInUse,
                    format!("slot {:?} is in use; stop the relay that streams from it first", src.slot),
                ));
            }
            None
        }
        Some(s) if s.wal_status.as_deref() != Some("lost") => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "replication slot {:?} is not lost (wal_status {}): nothing to recover",
                    src.slot,
                    s.wal_status.unwrap_or_default()
                ),
            ));
        }
        existing => {
            if existing.is_some() {
                tracing::warn!(slot = %src.slot, "dropping the invalidated slot before creating it again");
                sql.execute("SELECT pg_drop_replication_slot($1)", &[&src.slot]).await.map_err(|e| {
                    from_pg(ErrorKind::SourceQuery, format!("dropping invalidated slot {:?}", src.slot), e)
                })?;
            }
            // The mark first: a crash between creating the slot and the end of
            // the re-publishing must not let `run` stream from the new slot.
            place.created(&sql, record.confirmed_lsn, true).await?;
            let lsn = slot::create_slot(&sql, &src.slot, src.failover_slot).await?;
            place.created(&sql, lsn, true).await?;
            tracing::info!(slot = %src.slot, %lsn, "new replication slot created; re-publishing from the outbox table");
            Some(lsn)
        }
    };
    let since = since(&sql, &record.replay_from, config).await?;
    tracing::info!(since = %since, last_confirmed = %record.confirmed_lsn, last_commit = record.confirmed_commit_time.as_deref().unwrap_or("unknown"), "re-publishing every row that may not have been confirmed");
    let selection = Selection { since: Some(since.clone()), ..Selection::default() };
    let replay = replay::run(config, &selection, stop.clone()).await?;
    if !replay.complete() {
        // Stopped before the end: the mark stays, `run` keeps refusing, and
        // the next `recover` re-publishes the whole range again.
        let kind = if replay.unrenderable > 0 { ErrorKind::Data } else { ErrorKind::Interrupted };
        return Err(Error::new(
            kind,
            format!("the re-publishing stopped before the end ({replay}); run `outbox-relay recover` again"),
        ));
    }
    place.recovered(&sql).await?;
    Ok(RecoverReport { slot: src.slot.clone(), created_at, since, replay })
}

/// `replay_from - recover_margin`, as RFC 3339 on the server's clock.
async fn since(sql: &tokio_postgres::Client, replay_from: &str, config: &Config) -> Result<String> {
    let margin = format!("{} microseconds", config.source.recover_margin.as_micros());
    let row = sql
        .query_one(
            &format!("SELECT to_char(($1::text::timestamptz - $2::text::interval) AT TIME ZONE 'UTC', {RFC3339_UTC})"),
            &[&replay_from, &margin],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, "computing where the re-publishing starts", e))?;
    Ok(row.get(0))
}
