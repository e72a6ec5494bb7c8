//! The replication reader: pgoutput messages to whole transactions, and the
//! confirmed position back to PostgreSQL in standby status updates.
//!
//! ```text
//!  walsender --XLogData/keepalive--> [reader] --Transaction--> publisher
//!      ^                                |  ^                       |
//!      +----- status update (flush) ----+  +---- Progress (watch) --+
//! ```
//!
//! The flush position is the tracker's confirmed commit end LSN; when
//! nothing is in flight and no transaction is half received it is the last
//! keepalive `wal_end` instead, so a quiet outbox beside busy unrelated tables
//! never makes the slot retain WAL (see [`crate::ack::position`]). A new
//! position is sent within [`FEEDBACK_INTERVAL`] of its confirm, and a status
//! update goes out at least every `status_interval` and at once when the
//! server asks.

pub mod connection;
pub mod pgoutput;
pub mod protocol;
pub mod slot;
pub mod transaction;

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::{FlushPosition, Progress};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{KeepaliveLsn, Lsn, Transaction};
use crate::metrics::Metrics;
use connection::ReplicationConnection;
use protocol::ReplicationMessage;
use transaction::TransactionAssembler;

/// Longest delay between a confirm and the status update that reports it.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(100);

/// Settings of the reader.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// Longest gap between two status updates.
    pub status_interval: Duration,
    /// How long a graceful stop waits for in-flight confirms.
    pub shutdown_timeout: Duration,
}

/// The reader's state for one replication session.
struct Reader {
    conn: ReplicationConnection,
    assembler: TransactionAssembler,
    position: FlushPosition,
    /// Transactions handed to the publisher in this session.
    sent_txns: u64,
    /// A complete transaction waiting for room in the channel.
    pending: Option<Transaction>,
    /// The newest keepalive position.
    keepalive: Option<KeepaliveLsn>,
    /// The server's newest WAL end seen, for the lag gauge.
    server_wal_end: Lsn,
    metrics: std::sync::Arc<Metrics>,
    /// Beaten on every feedback tick: proof for the watchdog that the loop turns.
    health: std::sync::Arc<crate::http::Health>,
}

/// Streams from an open replication connection until `shutdown`, then drains.
///
/// `start` is the slot's `confirmed_flush_lsn` read after START_REPLICATION.
///
/// # Errors
///
/// Any failure of the connection, the decoder or the publisher; the caller
/// restarts from the slot (or stops, for `Data` errors).
#[allow(clippy::too_many_arguments)]
pub async fn stream(
    conn: ReplicationConnection,
    start: Lsn,
    tx: mpsc::Sender<Transaction>,
    mut progress: watch::Receiver<Progress>,
    mut publisher: JoinHandle<Result<()>>,
    shutdown: CancellationToken,
    settings: ReaderSettings,
    metrics: std::sync::Arc<Metrics>,
    health: std::sync::Arc<crate::http::Health>,
) -> Result<()> {
    let mut r = Reader {
        conn,
        assembler: TransactionAssembler::new(),
        position: FlushPosition::new(start),
        sent_txns: 0,
        pending: None,
        keepalive: None,
        server_wal_end: start,
        metrics,
        health,
    };
    let mut status = tokio::time::interval(settings.status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut feedback = tokio::time::interval(FEEDBACK_INTERVAL);
    feedback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome: Result<()> = loop {
        tokio::select! {
            biased;
            // PRIORITY 1: stop requested.
            _ = shutdown.cancelled() => break Ok(()),
            // PRIORITY 2: the publisher failed (it never ends on its own while we hold `tx`).
            res = &mut publisher => {
                let err = match res {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => Error::new(ErrorKind::BrokerConnection, "publisher stopped unexpectedly"),
                    Err(join) => Error::with_source(ErrorKind::BrokerConnection, "publisher task panicked", join),
                };
                // What the broker confirmed before the failure is confirmed:
                // report it, so the restart replays only what was in flight.
                r.refresh_position(&progress);
                let _ = r.send_status(false).await;
                r.conn.close().await;
                return Err(err);
            }
            // PRIORITY 3: hand over a waiting transaction.
            permit = tx.reserve(), if r.pending.is_some() => match permit {
                Ok(permit) => {
                    permit.send(r.pending.take().expect("guarded by is_some"));
                    r.sent_txns += 1;
                }
                Err(_) => break Err(Error::new(ErrorKind::BrokerConnection, "publisher stopped taking transactions")),
            },
            // PRIORITY 4: confirmed progress.
            res = progress.changed() => if res.is_err() {
                break Err(Error::new(ErrorKind::BrokerConnection, "publisher dropped its progress channel"));
            },
            // PRIORITY 5: report a new position promptly.
            _ = feedback.tick() => {
                r.health.beat();
                if r.position.unsent() {
                    if let Err(e) = r.send_status(false).await { break Err(e); }
                }
            }
            // PRIORITY 6: the regular status update.
            _ = status.tick() => if let Err(e) = r.send_status(false).await { break Err(e); },
            // PRIORITY 7: read from the server, unless a transaction is waiting for room.
            msg = r.conn.recv(), if r.pending.is_none() => {
                if let Err(e) = r.on_message(msg, &tx).await { break Err(e); }
            }
        }
        r.refresh_position(&progress);
    };
    if let Err(e) = outcome {
        publisher.abort();
        if e.kind() != ErrorKind::SourceConnection && e.kind() != ErrorKind::SourceProtocol {
            // The replication connection still works: hand back what was confirmed.
            r.refresh_position(&progress);
            let _ = r.send_status(false).await;
        }
        r.conn.close().await;
        return Err(e);
    }
    r.drain(tx, progress, publisher, settings).await
}

impl Reader {
    /// Handles one message from the walsender.
    async fn on_message(
        &mut self,
        msg: Result<Option<ReplicationMessage>>,
        tx: &mpsc::Sender<Transaction>,
    ) -> Result<()> {
        match msg? {
            None => Err(Error::new(ErrorKind::SourceConnection, "PostgreSQL ended the replication stream (CopyDone)")),
            Some(ReplicationMessage::XLogData { wal_start, wal_end, data, .. }) => {
                self.server_wal_end = self.server_wal_end.max(wal_end);
                let decoded = pgoutput::decode(&data).map_err(|e| {
                    Error::with_source(
                        ErrorKind::SourceProtocol,
                        format!("decoding pgoutput message at WAL {wal_start}"),
                        e,
                    )
                })?;
                let txn = self.assembler.push(decoded).map_err(|e| {
                    Error::with_source(
                        ErrorKind::SourceProtocol,
                        format!("assembling transactions at WAL {wal_start}"),
                        e,
                    )
                })?;
                if let Some(txn) = txn {
                    tracing::debug!(end_lsn = %txn.end_lsn, events = txn.events.len(), "transaction received");
                    match tx.try_send(txn) {
                        Ok(()) => self.sent_txns += 1,
                        Err(mpsc::error::TrySendError::Full(txn)) => self.pending = Some(txn),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err(Error::new(
                                ErrorKind::BrokerConnection,
                                "publisher stopped taking transactions",
                            ))
                        }
                    }
                }
                Ok(())
            }
            Some(ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. }) => {
                self.server_wal_end = self.server_wal_end.max(wal_end);
                self.keepalive = Some(KeepaliveLsn(wal_end));
                if reply_requested {
                    self.send_status(false).await?;
                }
                Ok(())
            }
        }
    }

    /// Folds the publisher's progress (and, when idle, the keepalive) into
    /// the flush position.
    fn refresh_position(&mut self, progress: &watch::Receiver<Progress>) {
        let p = *progress.borrow();
        if let Some(c) = p.confirmed {
            self.position.confirmed(c);
        }
        let idle = p.txns_done == self.sent_txns && self.pending.is_none() && !self.assembler.in_transaction();
        if idle {
            if let Some(k) = self.keepalive {
                self.position.idle_keepalive(k);
            }
        }
    }

    async fn send_status(&mut self, reply: bool) -> Result<()> {
        let flush = self.position.current().0;
        self.conn.send_status(flush, reply).await?;
        self.position.mark_sent();
        self.metrics.set_confirmed_lsn(flush.0);
        self.metrics.set_replication_lag_bytes(self.server_wal_end.0.saturating_sub(flush.0));
        tracing::trace!(%flush, "status update sent");
        Ok(())
    }

    /// Graceful stop: no new intake; wait for the publisher to drain its
    /// confirms (bounded), keep the walsender fed with status updates, then
    /// send the final position and close.
    async fn drain(
        mut self,
        tx: mpsc::Sender<Transaction>,
        mut progress: watch::Receiver<Progress>,
        mut publisher: JoinHandle<Result<()>>,
        settings: ReaderSettings,
    ) -> Result<()> {
        drop(tx);
        // A transaction that never reached the publisher is not confirmed:
        // the next session replays it.
        self.pending = None;
        tracing::info!(
            in_flight_txns = self.sent_txns - progress.borrow().txns_done,
            "stopping: draining in-flight confirms"
        );
        let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
        let mut status = tokio::time::interval(Duration::from_secs(1));
        let result = loop {
            tokio::select! {
                biased;
                res = &mut publisher => break match res {
                    Ok(r) => r,
                    Err(join) => Err(Error::with_source(ErrorKind::BrokerConnection, "publisher task panicked", join)),
                },
                _ = progress.changed() => {
                    if let Some(c) = progress.borrow().confirmed { self.position.confirmed(c); }
                }
                _ = status.tick() => { let _ = self.send_status(false).await; }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(timeout = ?settings.shutdown_timeout, "shutdown timeout: giving up on unconfirmed messages (they will be republished on the next start)");
                    publisher.abort();
                    break Ok(());
                }
            }
        };
        if let Some(c) = progress.borrow().confirmed {
            self.position.confirmed(c);
        }
        let final_lsn = self.position.current();
        let sent = self.send_status(false).await;
        self.conn.close().await;
        tracing::info!(final_lsn = %final_lsn, "replication stopped; final position acknowledged");
        result.and(sent)
    }
}
