//! The publishing side of a replay: a [`Publisher`] on its own broker
//! channel, fed one group of rows at a time (a page, or under `--rate` a
//! tenth of a second's worth), each group confirmed before the next.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ReplayReport;
use crate::ack::Progress;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::event::{BatchSeq, OutboxEvent, Part, PgTimestamp, SourcePosition, Transaction};
use crate::metrics::Metrics;
use crate::publish::nodes::BrokerNodes;
use crate::publish::{Publisher, PublisherSettings};
use crate::route::{route_names, Router};

/// The publishing side: a publisher task on its own channel, fed one group
/// at a time, each waited for until confirmed.
pub(super) struct Link {
    txns: mpsc::Sender<Transaction>,
    progress: watch::Receiver<Progress>,
    /// None once joined (a finished task must not be awaited again).
    publisher: Option<JoinHandle<Result<()>>>,
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
    /// Connects to the first usable node of `broker.url` (no retry: a replay
    /// that fails is run again).
    pub(super) async fn open(config: &Config, router: Arc<Router>, rate: Option<u32>) -> Result<Link> {
        let b = &config.broker;
        let metrics = Metrics::new(route_names(&config.routes));
        let nodes = BrokerNodes::default();
        let channel = nodes.connect(b, "outbox-relay replay", &metrics).await?;
        let (txns, rx) = mpsc::channel(1);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let publisher = Publisher::new(
            channel,
            router,
            // Each group waits for its confirms before the next.
            PublisherSettings { batch_confirms: false, ..PublisherSettings::from_config(b) },
            progress_tx,
            metrics,
        );
        let page = config.source.batch_size.max(1) as usize;
        Ok(Link {
            txns,
            progress,
            publisher: Some(tokio::spawn(publisher.run(rx))),
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
    pub(super) async fn send(
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
            let txn = Transaction { position, commit_time: PgTimestamp::now(), events: group, part: Part::WHOLE };
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
        match self.join().await {
            Some(Err(e)) => e,
            Some(Ok(())) => Error::new(ErrorKind::BrokerConnection, "the publisher stopped unexpectedly"),
            None => Error::new(ErrorKind::BrokerConnection, "the publisher stopped taking messages"),
        }
    }

    /// The publisher's result, waiting up to `shutdown_timeout`; None when it
    /// did not end in time (it is aborted) or was joined before.
    async fn join(&mut self) -> Option<Result<()>> {
        let mut task = self.publisher.take()?;
        match tokio::time::timeout(self.shutdown_timeout, &mut task).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(join)) => Some(Err(Error::with_source(ErrorKind::Panic, "the publisher task failed", join))),
            Err(_) => {
                task.abort();
                None
            }
        }
    }

    /// Ends the publisher: what is in flight gets until `shutdown_timeout`
    /// to be confirmed, and counts if it was.
    pub(super) async fn finish(mut self, report: &mut ReplayReport) -> Result<()> {
        // Replacing the sender closes the publisher's intake: it drains and ends.
        self.txns = mpsc::channel(1).0;
        let running = self.publisher.is_some();
        let result = match self.join().await {
            Some(r) => r,
            None if running => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "shutdown timeout: giving up on unconfirmed messages");
                Ok(())
            }
            None => Ok(()),
        };
        if let Some((position, n)) = self.pending {
            if self.progress.borrow().confirmed.is_some_and(|c| c >= position) {
                report.confirmed += n as u64;
            }
        }
        result
    }
}
