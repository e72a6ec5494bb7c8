//! What happens before the first byte streams: the publication and the slot
//! are there (the slot created only at a first start), the relay's record
//! agrees that this is the slot it streamed from, no other instance streams
//! from it, then START_REPLICATION and the position it resumes from.
//!
//! A slot is lost (and the relay stops with [`ErrorKind::SlotLost`], creating
//! nothing) when the record says the relay streamed from it and it is
//! missing, when it is invalidated (`wal_status = lost`), when a recovery is
//! unfinished, or when the server's system identifier is not the recorded
//! one. The standby check in [`prepare`] runs before the broker is touched;
//! the race-free check is START_REPLICATION itself (SQLSTATE 55006 when
//! another walsender holds the slot), in [`start`].

use std::sync::Arc;

use tokio_postgres::Client;

use super::connection::ReplicationConnection;
use super::record::{Place, Record};
use super::slot;
use crate::ack::Reported;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Lsn;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::source::postgres::PgTarget;

/// A replication connection in CopyBoth mode, and what the reader needs
/// beside it.
#[derive(Debug)]
pub struct Ready {
    /// The walsender connection, streaming.
    pub(super) conn: ReplicationConnection,
    /// Where streaming resumed: the newest of the slot's `confirmed_flush_lsn`
    /// (read after START_REPLICATION) and the relay's own last report.
    pub(super) start: Lsn,
    /// The ordinary connection, for the monitor (slot health, the record).
    pub(super) sql: Client,
    /// Where the record lives.
    pub(super) place: Place,
    /// The record as read at the start (`None`: the role may not keep one).
    pub(super) record: Option<Record>,
    /// Where the reader records each position it reports.
    pub(super) reported: Arc<Reported>,
}

/// What [`prepare`] found: the record to stream under.
#[derive(Debug)]
pub struct Prepared {
    place: Place,
    /// `None` when the role may not keep a record.
    record: Option<Record>,
}

/// What [`start`] needs from the session.
#[derive(Debug)]
pub struct StartContext {
    /// Whether routes want logical decoding messages.
    pub messages: bool,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The last position reported in this process (kept across sessions).
    pub reported: Arc<Reported>,
}

/// Makes sure the publication and the slot exist (creating them at a first
/// start when `source.create_slot`), that the slot is the one the relay's
/// record knows, and that no other instance streams from it.
///
/// # Errors
///
/// `SlotLost` (see the module doc), `SlotMissing` when they are missing and
/// may not be created, `SlotInUse` when another instance is active (this one
/// then stands by), `SourceQuery`.
pub async fn prepare(sql: &Client, config: &Config, router: &Router) -> Result<Prepared> {
    let src = &config.source;
    let place = Place::new(&router.tables(), &src.slot);
    if src.create_slot {
        crate::setup::ensure(sql, config, router).await?;
    } else if slot::publication_state(sql, &src.publication).await?.is_none() {
        return Err(Error::new(
            ErrorKind::SlotMissing,
            format!("publication {:?} does not exist and source.create_slot = false", src.publication),
        ));
    }
    let recording = place.ensure_table(sql).await?;
    let record = if recording { place.read(sql).await? } else { None };
    let Some(state) = slot::slot_state(sql, &src.slot).await? else {
        return Err(match &record {
            Some(record) => place.lost(record, "it does not exist", &config.path),
            None => Error::new(
                ErrorKind::SlotMissing,
                format!("replication slot {:?} does not exist and source.create_slot = false", src.slot),
            ),
        });
    };
    if let Some(pid) = state.active_pid {
        return Err(Error::new(
            ErrorKind::SlotInUse,
            format!("replication slot {:?} is active for PID {pid}", src.slot),
        ));
    }
    let record = match record {
        Some(record) => Some(record),
        None if recording => {
            // A slot made by hand or before the relay kept a record: adopt it.
            place.created(sql, state.confirmed_flush.unwrap_or(Lsn::ZERO), false).await?;
            place.read(sql).await?
        }
        None => None,
    };
    if let Some(record) = &record {
        if state.wal_status.as_deref() == Some("lost") {
            let what = "it is invalidated (wal_status = lost: it fell behind max_slot_wal_keep_size)";
            return Err(place.lost(record, what, &config.path));
        }
        if record.recovering {
            return Err(place.lost(record, "a recovery created it and has not finished re-publishing", &config.path));
        }
    }
    Ok(Prepared { place, record })
}

/// Opens the replication connection, checks the system against the record,
/// and starts streaming from the newest position known to be confirmed: the
/// slot's own, or the relay's last report (PostgreSQL 15 and 16 may have
/// lost the slot's at a restart; the server accepts a later start and skips
/// what lies before it). The slot's position is read *after*
/// START_REPLICATION, so none can slip in between.
///
/// # Errors
///
/// Connection, authentication and replication command failures;
/// `SlotInUse` when another walsender holds the slot; `SlotLost` on another
/// system, or when the slot vanished since [`prepare`].
pub async fn start(
    target: &PgTarget,
    sql: Client,
    config: &Config,
    prepared: Prepared,
    ctx: StartContext,
) -> Result<Ready> {
    let src = &config.source;
    let Prepared { place, record } = prepared;
    let mut conn = ReplicationConnection::connect(target, src.connect_timeout).await?;
    let ident = conn.identify_system().await?;
    if let Some(record) = &record {
        match &record.system_identifier {
            Some(recorded) if *recorded != ident.system_id => {
                let what = format!(
                    "the server's system identifier is {}, not the recorded {recorded}: this is another cluster",
                    ident.system_id
                );
                return Err(place.lost(record, &what, &config.path));
            }
            Some(_) if record.timeline != Some(ident.timeline as i32) => {
                tracing::warn!(slot = %src.slot, from = ?record.timeline, to = ident.timeline, "the server's timeline changed (a failover or a restore?); the slot is still there, streaming on");
                place.set_system(&sql, &ident.system_id, ident.timeline as i32).await?;
            }
            Some(_) => {}
            None => place.set_system(&sql, &ident.system_id, ident.timeline as i32).await?,
        }
    }
    let recorded = record.as_ref().map_or(Lsn::ZERO, |r| r.confirmed_lsn);
    let own = ctx.reported.get().unwrap_or(Lsn::ZERO).max(recorded);
    conn.start_replication(&src.slot, &src.publication, own, ctx.messages).await.map_err(|e| match &record {
        Some(record) if e.kind() == ErrorKind::SlotMissing => {
            place.lost(record, "it was dropped while the relay was starting", &config.path)
        }
        _ => e,
    })?;
    let slot_position = slot::slot_state(&sql, &src.slot).await?.and_then(|s| s.confirmed_flush).unwrap_or(Lsn::ZERO);
    let start = slot_position.max(own);
    tracing::info!(slot = %src.slot, publication = %src.publication, from = %start, slot_position = %slot_position, server_wal = %ident.xlog_pos, "streaming");
    ctx.metrics.set_confirmed_lsn(start.0);
    ctx.metrics.set_slot_lost(false);
    Ok(Ready { conn, start, sql, place, record, reported: ctx.reported })
}
