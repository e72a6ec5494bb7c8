//! One pipeline run (a session): from connecting to a requested stop or the
//! first failure. The supervisor ([`crate::relay`]) starts sessions; a
//! session owns everything that lives for one run.
//!
//! ```text
//!  open:   SQL connection -> routes checked against their tables
//!          -> source prepared (replication: slot and publication, standby
//!             check; polling: advisory lock, table keys)
//!          -> broker channel (confirm mode)
//!          -> source started (replication: START_REPLICATION)
//!  run:    publisher task  <--Transaction--  source  (one SourceLink)
//!                          --Progress----->
//!  stop:   the source drops its sender and keeps reporting progress; the
//!          session waits for the publisher until `shutdown_timeout`, once
//! ```
//!
//! The session alone holds the publisher's `JoinHandle`: it is the one place
//! that turns "the publisher ended" (an error, an unexpected clean end, a
//! panic) into the session's result. It returns what happened; it never asks
//! the readiness state what to do next.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ack::{Progress, Reported};
use crate::config::{current_url, Config, SourceMode, UrlTarget};
use crate::error::{End, Error, ErrorKind, Result};
use crate::health::{Health, State};
use crate::metrics::Metrics;
use crate::publish::channel::BrokerChannel;
use crate::publish::nodes::BrokerNodes;
use crate::publish::{Publisher, PublisherSettings};
use crate::route::Router;
use crate::source::postgres::{Liveness, PgTarget};
use crate::source::replication::{self, slot, StartContext};
use crate::source::{polling, SourceLink};

/// Transactions (or parts of large ones) buffered between the replication
/// reader and the publisher. On the one-thread runtime the reader fills it
/// and the publisher empties it in one turn, so a few suffice; each holds
/// up to a part's worth of rows (see `transaction::PART_BYTES`), so fewer
/// keep the peak memory of a backlog of big transactions down (measured
/// with 64: 16 MiB peak RSS catching up 1 KiB events, 50 per transaction).
const TXN_CHANNEL: usize = 16;
/// How long a source that saw the publisher go waits for its result, and how
/// long a stopping source may take for its final report once the publisher
/// ended.
const TASK_EXIT: Duration = Duration::from_secs(5);

/// Shared handles of a running relay: what the outside world reads.
#[derive(Debug, Clone)]
pub struct Handles {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness and watchdog heartbeat.
    pub health: Arc<Health>,
    /// The last position reported to the slot, kept across sessions so a
    /// restart resumes there (see [`crate::source::replication::start`]).
    pub reported: Arc<Reported>,
    /// Which RabbitMQ node of `broker.url` the relay is on and tries next,
    /// kept across sessions.
    pub brokers: Arc<BrokerNodes>,
}

impl Handles {
    /// Fresh handles for a relay run with `config`: its routes' and broker
    /// nodes' series exist (at 0) from the start.
    pub fn new(config: &Config) -> Handles {
        let metrics = Metrics::new(crate::route::route_names(&config.routes));
        let nodes: Vec<String> = BrokerNodes::targets(&config.broker)
            .map(|targets| targets.iter().map(|t| t.endpoint()).collect())
            .unwrap_or_default();
        metrics.set_broker_node(&nodes, None);
        Handles {
            metrics,
            health: Arc::new(Health::default()),
            reported: Arc::new(Reported::default()),
            brokers: Arc::default(),
        }
    }
}

/// A source checked before the broker is touched (slot or lock).
enum PreparedSource {
    Replication(replication::Prepared),
    Polling(Vec<polling::PolledTable>),
}

/// A source connected and positioned, not yet streaming.
enum ReadySource {
    Replication(Box<replication::Ready>),
    Polling(polling::Ready),
}

/// Runs one session until `stop` (then drains and returns `Ok`) or the first
/// failure (returned; the supervisor decides between retry, standby and stop).
///
/// A stop while still connecting or standing by returns at once: nothing is
/// in flight, so dropping the attempt is safe, and SIGTERM is not kept
/// waiting for a connect timeout.
///
/// # Errors
///
/// Whatever failed first: connecting, the source, or the publisher.
pub async fn run(config: &Config, handles: &Handles, stop: &CancellationToken) -> Result<()> {
    let (source, channel, router) = tokio::select! {
        opened = open(config, handles) => opened?,
        _ = stop.cancelled() => return Ok(()),
    };
    handles.metrics.set_active(true);
    handles.health.set(State::Streaming);

    let capacity = match source {
        ReadySource::Replication(_) => TXN_CHANNEL,
        // One batch at a time: a batch is deleted only once it is confirmed.
        ReadySource::Polling(_) => 1,
    };
    let (txns, rx) = mpsc::channel(capacity);
    let (progress_tx, progress) = watch::channel(Progress::default());
    let publisher = Publisher::new(
        channel,
        Arc::new(router),
        PublisherSettings {
            // Polling waits for each batch's confirms before the next batch.
            batch_confirms: matches!(source, ReadySource::Replication(_)),
            ..PublisherSettings::from_config(&config.broker)
        },
        progress_tx,
        handles.metrics.clone(),
    );
    let publisher = tokio::spawn(publisher.run(rx));
    let link = SourceLink { txns, progress, stop: stop.clone(), health: handles.health.clone() };
    let source = async {
        match source {
            ReadySource::Replication(ready) => {
                let timing = replication::Timing {
                    status_interval: config.source.status_interval,
                    receive_timeout: config.source.receive_timeout,
                };
                replication::stream(*ready, link, timing, handles.metrics.clone()).await
            }
            ReadySource::Polling(ready) => {
                let lock = polling::lock_lost(ready.lock_connection(), config.source.receive_timeout);
                tokio::select! {
                    r = polling::run(ready, config, link) => r,
                    e = lock => Err(e),
                }
            }
        }
    };
    let result = drive(source, publisher, stop, config.broker.shutdown_timeout).await;
    if stop.is_cancelled() {
        handles.health.set(State::Stopping);
    }
    result
}

/// Connects both ends and prepares the source, in the order that keeps a
/// standby off the broker: the slot (or lock) is checked before the broker
/// is touched, and replication starts only once the broker is there.
async fn open(config: &Config, handles: &Handles) -> Result<(ReadySource, BrokerChannel, Router)> {
    let src = &config.source;
    let mut target = PgTarget::parse(current_url(UrlTarget::Source, &src.url)?.expose())?;
    target.liveness = Liveness { receive_timeout: src.receive_timeout };
    // Every broker URL is checked before anything is connected.
    BrokerNodes::targets(&config.broker)?;
    let sql = target.connect_sql(src.connect_timeout).await?;
    let router = checked_router(&sql, config, &target).await?;
    let prepared = match src.mode {
        SourceMode::Replication => PreparedSource::Replication(replication::prepare(&sql, config, &router).await?),
        SourceMode::Polling => PreparedSource::Polling(polling::prepare(&sql, config, &router).await?),
    };
    let channel = handles.brokers.connect(&config.broker, "outbox-relay", &handles.metrics).await?;
    let source = match prepared {
        PreparedSource::Replication(prepared) => {
            let ctx = StartContext {
                messages: router.wants_messages(),
                metrics: handles.metrics.clone(),
                reported: handles.reported.clone(),
            };
            ReadySource::Replication(Box::new(replication::start(&target, sql, config, prepared, ctx).await?))
        }
        PreparedSource::Polling(tables) => ReadySource::Polling(polling::Ready::new(sql, tables, &src.slot)),
    };
    Ok((source, channel, router))
}

/// The routes, with every table they name checked: it exists, and every
/// column a template names is one of its columns. Shared with
/// [`crate::replay`].
pub(crate) async fn checked_router(sql: &tokio_postgres::Client, config: &Config, target: &PgTarget) -> Result<Router> {
    let mut router = Router::new(&config.routes);
    let mut problems = Vec::new();
    for (schema, table) in router.tables() {
        match slot::table_columns(sql, &schema, &table).await? {
            Some(cols) => problems.extend(router.check_table(&schema, &table, &cols)),
            None => {
                return Err(Error::new(
                    ErrorKind::SourceQuery,
                    format!("table {schema}.{table} named by a route does not exist in database {:?} (create it, or fix the route's table)", target.dbname()),
                ))
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::new(ErrorKind::Config, format!("{}: {}", config.path.display(), problems.join("; "))));
    }
    Ok(router)
}

/// Runs the source beside the publisher task until one fails or a stop has
/// drained them both.
///
/// On a stop, the drain runs here, once: the source stops intake on its own
/// (it holds the stop token) and keeps reporting progress; the publisher
/// gets until `shutdown_timeout` to have everything confirmed, then is
/// aborted (what it had not confirmed is replayed by the next start).
async fn drive(
    source: impl Future<Output = Result<()>>,
    mut publisher: JoinHandle<Result<()>>,
    stop: &CancellationToken,
    shutdown_timeout: Duration,
) -> Result<()> {
    tokio::pin!(source);
    let mut source_result = tokio::select! {
        r = &mut source => match r {
            Err(e) if !stop.is_cancelled() => return Err(after_source_failure(e, publisher).await),
            r => Some(r),
        },
        _ = stop.cancelled() => None,
    };
    let deadline = Instant::now() + shutdown_timeout;
    let mut publisher_result = None;
    while source_result.is_none() || publisher_result.is_none() {
        tokio::select! {
            r = &mut source, if source_result.is_none() => source_result = Some(r),
            r = &mut publisher, if publisher_result.is_none() => publisher_result = Some(publisher_outcome(r)),
            _ = tokio::time::sleep_until(deadline), if publisher_result.is_none() => {
                tracing::warn!(timeout = ?shutdown_timeout, "shutdown timeout: giving up on unconfirmed messages (they will be republished on the next start)");
                publisher.abort();
                publisher_result = Some(Ok(()));
            }
            _ = tokio::time::sleep_until(deadline + TASK_EXIT), if publisher_result.is_some() => {
                tracing::warn!("the source did not finish its final report in time; stopping without it");
                source_result = Some(Ok(()));
            }
        }
    }
    let (publisher_result, source_result) = (publisher_result.unwrap_or(Ok(())), source_result.unwrap_or(Ok(())));
    publisher_result.and(source_result)
}

/// The source failed while streaming. If it failed because the publisher
/// ended (a broker-side error can only come from there), the publisher's
/// own result says why; otherwise the publisher is stopped.
async fn after_source_failure(err: Error, mut publisher: JoinHandle<Result<()>>) -> Error {
    if err.kind().end() != Some(End::Broker) {
        publisher.abort();
        return err;
    }
    match tokio::time::timeout(TASK_EXIT, &mut publisher).await {
        Ok(joined) => match publisher_outcome(joined) {
            Err(e) => e,
            Ok(()) => Error::new(ErrorKind::BrokerConnection, "publisher stopped unexpectedly"),
        },
        Err(_) => {
            publisher.abort();
            err
        }
    }
}

/// The publisher task's end, as the session's result: a panic is a bug of
/// its own kind, not a broker failure.
fn publisher_outcome(joined: Result<Result<()>, JoinError>) -> Result<()> {
    match joined {
        Ok(r) => r,
        Err(join) if join.is_panic() => Err(Error::with_source(ErrorKind::Panic, "publisher task panicked", join)),
        Err(join) => Err(Error::with_source(ErrorKind::Panic, "publisher task was cancelled", join)),
    }
}
