//! What happens before the first byte streams: the publication and the slot
//! are there (created when `create_slot`), no other instance streams from the
//! slot, then START_REPLICATION and the position the slot resumes from.
//!
//! The standby check in [`prepare`] runs before the broker is touched; the
//! race-free check is START_REPLICATION itself (SQLSTATE 55006 when another
//! walsender holds the slot), in [`start`].

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::connection::ReplicationConnection;
use super::slot;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Lsn;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::source::postgres::PgTarget;

/// How often the slot's WAL retention is read.
const SLOT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// A replication connection in CopyBoth mode, and where it resumes.
#[derive(Debug)]
pub struct Ready {
    /// The walsender connection, streaming.
    pub(super) conn: ReplicationConnection,
    /// The slot's `confirmed_flush_lsn`, read after START_REPLICATION.
    pub(super) start: Lsn,
    /// Reads the slot's health into the metrics while the session runs;
    /// stopped when dropped.
    pub(super) _slot_health: AbortOnDrop,
}

/// Aborts a background task when its owner goes away.
#[derive(Debug)]
pub(super) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Makes sure the publication and the slot exist (creating them when
/// `source.create_slot`), and that no other instance streams from the slot.
///
/// # Errors
///
/// `SlotMissing` when they are missing and may not be created, `SlotInUse`
/// when another instance is active (this one then stands by), `SourceQuery`.
pub async fn prepare(sql: &Client, config: &Config, router: &Router) -> Result<()> {
    let src = &config.source;
    if src.create_slot {
        crate::setup::ensure(sql, config, router).await?;
    } else {
        if slot::slot_state(sql, &src.slot).await?.is_none() {
            return Err(Error::new(
                ErrorKind::SlotMissing,
                format!("replication slot {:?} does not exist and source.create_slot = false", src.slot),
            ));
        }
        if slot::publication_state(sql, &src.publication).await?.is_none() {
            return Err(Error::new(
                ErrorKind::SlotMissing,
                format!("publication {:?} does not exist and source.create_slot = false", src.publication),
            ));
        }
    }
    if let Some(pid) = slot::slot_state(sql, &src.slot).await?.and_then(|s| s.active_pid) {
        return Err(Error::new(
            ErrorKind::SlotInUse,
            format!("replication slot {:?} is active for PID {pid}", src.slot),
        ));
    }
    Ok(())
}

/// Opens the replication connection and starts streaming from the slot's own
/// position. The position is read *after* START_REPLICATION, on the SQL
/// connection, so none can slip in between. The SQL connection then serves
/// the slot health reader.
///
/// # Errors
///
/// Connection, authentication and replication command failures;
/// `SlotInUse` when another walsender holds the slot.
pub async fn start(
    target: &PgTarget,
    sql: Client,
    config: &Config,
    messages: bool,
    metrics: Arc<Metrics>,
) -> Result<Ready> {
    let src = &config.source;
    let mut conn = ReplicationConnection::connect(target, src.connect_timeout).await?;
    let ident = conn.identify_system().await?;
    conn.start_replication(&src.slot, &src.publication, Lsn::ZERO, messages).await?;
    let start = slot::slot_state(&sql, &src.slot).await?.and_then(|s| s.confirmed_flush).unwrap_or(Lsn::ZERO);
    tracing::info!(slot = %src.slot, publication = %src.publication, from = %start, server_wal = %ident.xlog_pos, "streaming");
    metrics.set_confirmed_lsn(start.0);
    let slot_health = AbortOnDrop(spawn_slot_health(sql, src.slot.clone(), metrics));
    Ok(Ready { conn, start, _slot_health: slot_health })
}

/// Reads the slot's health every [`SLOT_HEALTH_INTERVAL`] into the metrics,
/// on the session's ordinary connection. A failed read is logged, not fatal:
/// the replication stream is what matters.
fn spawn_slot_health(sql: Client, slot: String, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SLOT_HEALTH_INTERVAL);
        loop {
            tick.tick().await;
            match slot::slot_health(&sql, &slot).await {
                Ok(Some(h)) => metrics.set_slot_health(h.retained_bytes, &h.wal_status, h.safe_wal_size),
                Ok(None) => tracing::warn!(%slot, "replication slot disappeared"),
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "reading slot health failed");
                    if sql.is_closed() {
                        return;
                    }
                }
            }
        }
    })
}
