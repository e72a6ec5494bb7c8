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
//! position is sent as soon as the reader sees it, but status updates are at
//! least [`FEEDBACK_INTERVAL`] apart (so at most 100 a second, and at a
//! steady trickle they go out in the wake-up that read the confirms, not in
//! one of their own); a status update also goes out at least every
//! `status_interval` and at once when the server asks. How much a crash
//! replays is what was confirmed but not yet reported: the window plus a
//! few milliseconds of events.
//!
//! # A silent server
//!
//! The walsender may go quiet without closing anything (a partition, a
//! black hole). Any message from it resets a timer; after a third of
//! `source.receive_timeout` without one the reader asks for a reply (a
//! status update with the reply-requested flag), and after the whole of it
//! the reader fails with a `SourceConnection` error ("no message ... for N
//! s"): the session ends, `outbox_relay_active` drops to 0 and the
//! supervisor restarts the pipeline with backoff. While the reader is not
//! reading because the channel to the publisher is full, the timer stands
//! still and starts from zero when reading resumes (see [`liveness`]).
//!
//! # PostgreSQL shutting down
//!
//! At shutdown a walsender exits only once its client's reported position
//! equals what it sent: [`WalSndDone`] in `walsender.c` compares `sentPtr`
//! with the reported flush (write when flush is invalid) and, until they
//! match, sends a keepalive with the reply-requested flag and `wal_end =
//! sentPtr`; the next turn of `WalSndLoop` after our reply sends another
//! (`waiting_for_ping_response` is reset by every reply), so a stopping
//! walsender plays a quick ping-pong with an unchanged `wal_end` and no
//! WAL data. A physical walreceiver or the logical apply worker report what
//! they wrote and flushed, so they catch up and let it go; our position is
//! what the broker confirmed, and while it is held back (an unroutable
//! message under `on_unroutable = "block"`) the walsender would wait for
//! ever and with it `pg_ctl stop`. So when that ping-pong has lasted
//! [`liveness::SHUTDOWN_GRACE`] (time for confirms in flight to land) and
//! the confirmed position is still behind `wal_end`, the reader sends its
//! confirmed position one last time, closes the connection (the walsender
//! then exits) and the session restarts with backoff. Nothing beyond what
//! the broker confirmed is ever reported: after the restart streaming
//! resumes from the confirmed position. Normal keepalive requests come
//! `wal_sender_timeout / 2` apart, far slower than the ping-pong (a
//! `wal_sender_timeout` under 1 s could be mistaken for it: the cost is a
//! reconnect). While the reader is not reading (the channel to the
//! publisher is full) it cannot see the ping-pong; then the SQL connection
//! being closed (a fast shutdown terminates ordinary sessions before it
//! stops walsenders) ends the session instead.
//!
//! [`WalSndDone`]: https://github.com/postgres/postgres/blob/master/src/backend/replication/walsender.c

pub mod connection;
mod liveness;
mod monitor;
pub mod pgoutput;
pub mod protocol;
pub mod record;
pub mod slot;
mod start;
pub mod transaction;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::ack::{FlushPosition, Progress};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{KeepaliveLsn, Lsn, Transaction};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::source::{publisher_gone, SourceLink};
use connection::ReplicationConnection;
use liveness::{ReceiveTimer, ShutdownWatch, Wake};
use protocol::ReplicationMessage;
pub use start::{prepare, start, Prepared, Ready, StartContext};
use transaction::TransactionAssembler;

/// Shortest gap between two status updates, and so the longest delay between
/// reading a confirm and reporting it.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_millis(10);
/// How often the loop proves to the watchdog that it turns.
const HEALTH_BEAT: Duration = Duration::from_millis(100);
/// Status updates while a stop drains the publisher's confirms.
const DRAIN_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// The reader's clocks.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// `source.status_interval`.
    pub status_interval: Duration,
    /// `source.receive_timeout`.
    pub receive_timeout: Duration,
}

/// The reader's state for one replication session.
struct Reader {
    conn: ReplicationConnection,
    assembler: TransactionAssembler,
    position: FlushPosition,
    /// Transactions handed to the publisher in this session (counted at
    /// their last part).
    sent_txns: u64,
    /// A complete transaction waiting for room in the channel.
    pending: Option<Transaction>,
    /// The newest keepalive position.
    keepalive: Option<KeepaliveLsn>,
    /// The server's newest WAL end seen, for the lag gauge.
    server_wal_end: Lsn,
    metrics: Arc<Metrics>,
    /// Beaten on every feedback tick: proof for the watchdog that the loop turns.
    health: Arc<Health>,
    /// Every position known confirmed, kept beyond this session (the next
    /// start may begin there) and written to the durable record by the monitor.
    reported: Arc<crate::ack::Reported>,
    /// Silence on the connection (`source.receive_timeout`).
    timer: ReceiveTimer,
    /// A walsender waiting for our position to shut down.
    shutdown: ShutdownWatch,
    /// The `wal_end` of a shutdown ping-pong seen, checked once the
    /// position is refreshed.
    stopping_at: Option<Lsn>,
    /// When the last status update went out.
    last_status: Instant,
}

/// Streams from a started replication connection until a stop, then reports
/// progress while the publisher drains and sends the final position (the
/// contract of [`crate::source`]).
///
/// # Errors
///
/// Any failure of the connection or the decoder, or [`publisher_gone`]; the
/// session restarts from the slot (or stops, for `Data` errors).
pub async fn stream(ready: Ready, link: SourceLink, timing: Timing, metrics: Arc<Metrics>) -> Result<()> {
    let Ready { conn, start, sql, place, record, reported } = ready;
    let SourceLink { txns: tx, mut progress, stop, health } = link;
    let monitor = monitor::Monitor {
        sql,
        place,
        progress: progress.clone(),
        reported: reported.clone(),
        metrics: metrics.clone(),
        replay_from: record.map(|r| r.replay_from),
    }
    .spawn();
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
        reported,
        timer: ReceiveTimer::new(timing.receive_timeout, Instant::now()),
        shutdown: ShutdownWatch::default(),
        stopping_at: None,
        last_status: Instant::now(),
    };
    let mut status = tokio::time::interval(timing.status_interval);
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = tokio::time::interval(HEALTH_BEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let outcome: Result<()> = loop {
        tokio::select! {
            biased;
            // PRIORITY 1: stop requested.
            _ = stop.cancelled() => break Ok(()),
            // While a transaction waits for room the reader cannot see a
            // shutdown ping-pong; a fast shutdown closes the SQL connection first.
            _ = monitor.sql_closed().cancelled(), if r.pending.is_some() => {
                break Err(Error::new(
                    ErrorKind::SourceConnection,
                    format!("PostgreSQL at {} closed the SQL connection (shutting down?) while the reader waited for the publisher", r.conn.endpoint()),
                ));
            }
            // PRIORITY 2: hand over a waiting transaction.
            permit = tx.reserve(), if r.pending.is_some() => match permit {
                Ok(permit) => {
                    let txn = r.pending.take().expect("guarded by is_some");
                    r.sent_txns += u64::from(!txn.part.more);
                    permit.send(txn);
                    // Reading resumes: the silence we caused does not count.
                    r.timer.heard(Instant::now());
                }
                Err(_) => break Err(publisher_gone()),
            },
            // PRIORITY 3: confirmed progress; a closed channel means the
            // publisher ended (it never does on its own while we hold `tx`).
            res = progress.changed() => if res.is_err() {
                break Err(publisher_gone());
            },
            // PRIORITY 4: a new position waits for the gap between status
            // updates to pass (it is sent after the select); and the watchdog's beat.
            _ = tokio::time::sleep_until(r.last_status + FEEDBACK_INTERVAL), if r.position.unsent() => {}
            _ = beat.tick() => r.health.beat(),
            // PRIORITY 5: the regular status update.
            _ = status.tick() => if let Err(e) = r.send_status(false).await { break Err(e); },
            // PRIORITY 6: read from the server, unless a transaction is waiting for room.
            msg = r.conn.recv(), if r.pending.is_none() => {
                if let Err(e) = r.on_message(msg, &tx).await { break Err(e); }
            }
            // PRIORITY 7: the server has been silent (only while reading).
            _ = tokio::time::sleep_until(r.timer.next_wake()), if r.pending.is_none() => {
                if let Err(e) = r.on_silence().await { break Err(e); }
            }
        }
        r.refresh_position(&progress);
        if r.position.unsent() && r.last_status.elapsed() >= FEEDBACK_INTERVAL {
            if let Err(e) = r.send_status(false).await {
                break Err(e);
            }
        }
        if let Err(e) = r.check_shutdown().await {
            break Err(e);
        }
    };
    if let Err(e) = outcome {
        if e.kind().source_connection_usable() {
            // What the broker confirmed before the failure is confirmed:
            // report it, so the restart replays only what was in flight.
            r.refresh_position(&progress);
            let _ = r.send_status(false).await;
        }
        r.conn.close().await;
        return Err(e);
    }
    r.drain(tx, progress).await
}

impl Reader {
    /// Handles one message from the walsender.
    async fn on_message(
        &mut self,
        msg: Result<Option<ReplicationMessage>>,
        tx: &mpsc::Sender<Transaction>,
    ) -> Result<()> {
        let msg = msg?;
        self.timer.heard(Instant::now());
        match msg {
            None => Err(Error::new(ErrorKind::SourceConnection, "PostgreSQL ended the replication stream (CopyDone)")),
            Some(ReplicationMessage::XLogData { wal_start, wal_end, data, .. }) => {
                self.shutdown.data();
                self.server_wal_end = self.server_wal_end.max(wal_end);
                let decoded = pgoutput::decode_shared(&data).map_err(|e| {
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
                    tracing::debug!(position = %txn.position, events = txn.events.len(), "transaction received");
                    // Only whole transactions count (a part with more to come does not).
                    let whole = u64::from(!txn.part.more);
                    match tx.try_send(txn) {
                        Ok(()) => self.sent_txns += whole,
                        Err(mpsc::error::TrySendError::Full(txn)) => self.pending = Some(txn),
                        Err(mpsc::error::TrySendError::Closed(_)) => return Err(publisher_gone()),
                    }
                }
                Ok(())
            }
            Some(ReplicationMessage::PrimaryKeepalive { wal_end, reply_requested, .. }) => {
                self.server_wal_end = self.server_wal_end.max(wal_end);
                self.keepalive = Some(KeepaliveLsn(wal_end));
                if reply_requested {
                    self.send_status(false).await?;
                    self.stopping_at = self.shutdown.ping(Instant::now(), wal_end);
                }
                Ok(())
            }
        }
    }

    /// The receive timer woke up: ask for a reply, or give up on the connection.
    async fn on_silence(&mut self) -> Result<()> {
        match self.timer.on_wake(Instant::now()) {
            Wake::Nothing => Ok(()),
            Wake::Ping => {
                tracing::debug!("no message from PostgreSQL for a while; asking for a reply");
                self.send_status(true).await
            }
            Wake::Dead(silent) => Err(Error::new(
                ErrorKind::SourceConnection,
                format!(
                    "no message from PostgreSQL at {} for {} s (source.receive_timeout): the connection is considered dead",
                    self.conn.endpoint(),
                    silent.as_secs()
                ),
            )),
        }
    }

    /// After a shutdown ping-pong (see the module doc): when the confirmed
    /// position is still behind what the walsender sent, report it once more
    /// and fail, so the connection is closed and the walsender can exit.
    async fn check_shutdown(&mut self) -> Result<()> {
        let Some(wal_end) = self.stopping_at.take() else { return Ok(()) };
        let confirmed = self.position.current().0;
        if confirmed >= wal_end {
            return Ok(());
        }
        self.send_status(false).await?;
        Err(Error::new(
            ErrorKind::SourceConnection,
            format!(
                "PostgreSQL at {} is shutting down and waits for the flush position to reach {wal_end}; the broker confirmed up to {confirmed}: closing the replication connection so that it can stop (streaming resumes from {confirmed})",
                self.conn.endpoint()
            ),
        ))
    }

    /// Folds the publisher's progress (and, when idle, the keepalive) into
    /// the flush position.
    fn refresh_position(&mut self, progress: &watch::Receiver<Progress>) {
        self.fold_confirmed(progress);
        let p = *progress.borrow();
        let idle = p.txns_done == self.sent_txns && self.pending.is_none() && !self.assembler.in_transaction();
        if idle {
            if let Some(k) = self.keepalive {
                self.position.idle_keepalive(k);
            }
        }
        // Confirmed is enough to resume from, reported or not yet: a
        // restart then replays only what was in flight.
        self.reported.remember(self.position.current());
    }

    async fn send_status(&mut self, reply: bool) -> Result<()> {
        let flush = self.position.current().0;
        self.conn.send_status(flush, reply).await?;
        self.position.mark_sent();
        self.last_status = Instant::now();
        self.metrics.set_confirmed_lsn(flush.0);
        self.metrics.set_replication_lag_bytes(self.server_wal_end.0.saturating_sub(flush.0));
        tracing::trace!(%flush, "status update sent");
        Ok(())
    }

    /// Graceful stop: no new intake; keep the walsender fed with status
    /// updates while the publisher drains its confirms (the session bounds
    /// that wait), then send the final position and close.
    async fn drain(mut self, tx: mpsc::Sender<Transaction>, mut progress: watch::Receiver<Progress>) -> Result<()> {
        drop(tx);
        // A transaction that never reached the publisher is not confirmed:
        // the next session replays it.
        self.pending = None;
        tracing::info!(
            in_flight_txns = self.sent_txns - progress.borrow().txns_done,
            "stopping: draining in-flight confirms"
        );
        let mut status = tokio::time::interval(DRAIN_STATUS_INTERVAL);
        loop {
            tokio::select! {
                biased;
                res = progress.changed() => {
                    if res.is_err() {
                        break;
                    }
                    self.fold_confirmed(&progress);
                }
                _ = status.tick() => { let _ = self.send_status(false).await; }
            }
        }
        self.fold_confirmed(&progress);
        let final_lsn = self.position.current();
        let sent = self.send_status(false).await;
        self.conn.close().await;
        tracing::info!(final_lsn = %final_lsn, "replication stopped; final position acknowledged");
        sent
    }

    /// Folds the publisher's confirmed transaction into the flush position.
    fn fold_confirmed(&mut self, progress: &watch::Receiver<Progress>) {
        if let Some(c) = progress.borrow().confirmed.and_then(|c| c.end_lsn()) {
            self.position.confirmed(c);
        }
    }
}
