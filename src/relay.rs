//! The supervisor: builds the pipeline, runs it, and on failure tears it all
//! down and starts again from the slot's confirmed position (crash-only:
//! nothing in memory survives a failure). Decides retry versus stop by the
//! error's kind, with capped exponential backoff and jitter.
//!
//! One pipeline session:
//!
//! 1. SQL connection: check the routes' tables and columns, create the
//!    publication and slot when `create_slot`.
//! 2. Broker connection with a confirm-mode channel.
//! 3. Replication connection: IDENTIFY_SYSTEM, START_REPLICATION from the
//!    slot's own position, then read `confirmed_flush_lsn` (after the start,
//!    so no position can slip between reading and starting).
//! 4. Publisher task and reader loop until shutdown or failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::Progress;
use crate::config::{Config, SecretString, SourceMode, UrlTarget};
use crate::error::{Error, ErrorKind, Policy, Result};
use crate::event::Lsn;
use crate::http::{Health, State};
use crate::metrics::Metrics;
use crate::publish::channel::{BrokerChannel, BrokerTarget};
use crate::publish::{Publisher, PublisherSettings};
use crate::route::Router;
use crate::source::postgres::PgTarget;
use crate::source::replication::connection::ReplicationConnection;
use crate::source::replication::{self, slot, ReaderSettings};

/// Transactions buffered between the reader and the publisher.
const TXN_CHANNEL: usize = 64;
/// Backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a standby retries the slot.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
/// How often the slot's WAL retention is read.
const SLOT_HEALTH_INTERVAL: Duration = Duration::from_secs(10);
/// A session that ran this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Shared handles of a running relay.
#[derive(Debug, Clone)]
pub struct Handles {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
}

/// Runs until `stop` is cancelled (then drains and returns `Ok`) or until an
/// error whose policy is [`Policy::Stop`].
///
/// # Errors
///
/// Configuration and data errors, which need a person.
pub async fn supervise(config: &Config, handles: &Handles, stop: &CancellationToken) -> Result<()> {
    let mut failures: u32 = 0;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        // A standby stays "standby" (ready) while it retries the slot.
        if handles.health.get() != State::Standby {
            handles.health.set(State::Starting);
        }
        let started = Instant::now();
        let result = {
            let work = session(config, handles, stop);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r,
                _ = stop.cancelled() => {
                    if handles.health.get() == State::Streaming {
                        // Streaming: the session watches `stop` itself and drains.
                        work.await
                    } else {
                        // Still connecting or standing by: nothing is in flight, so
                        // dropping the attempt is safe and SIGTERM is not kept
                        // waiting for a connect timeout.
                        return Ok(());
                    }
                }
            }
        };
        if started.elapsed() > HEALTHY_SESSION {
            failures = 0;
        }
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        handles.metrics.set_active(false);
        if stop.is_cancelled() {
            tracing::info!(error = %err.chain(), "stopped while recovering from an error");
            return Ok(());
        }
        if err.kind().policy() == Policy::Stop {
            return Err(err);
        }
        let delay = if err.kind() == ErrorKind::SlotInUse {
            handles.health.set(State::Standby);
            tracing::info!(retry_in = ?STANDBY_RETRY, reason = %err.chain(), "standing by: another instance holds the slot");
            STANDBY_RETRY
        } else {
            handles.health.set(State::Starting);
            failures = failures.saturating_add(1);
            let d = backoff(failures);
            let target = if matches!(
                err.kind(),
                ErrorKind::BrokerConnection | ErrorKind::BrokerChannel | ErrorKind::ConfirmTimeout
            ) {
                "broker"
            } else {
                "source"
            };
            handles.metrics.reconnect(target);
            tracing::error!(error = %err.chain(), kind = err.kind().as_str(), hint = err.kind().hint(), retry_in = ?d, attempt = failures, "pipeline failed; restarting from the slot's confirmed position");
            d
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    let d = BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX);
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// One pipeline session, from connect to failure or graceful stop.
async fn session(config: &Config, handles: &Handles, stop: &CancellationToken) -> Result<()> {
    let src = &config.source;
    let target = PgTarget::parse(current_url(UrlTarget::Source, &config.source.url)?.expose())?;
    let broker =
        BrokerTarget::from_config(current_url(UrlTarget::Broker, &config.broker.url)?.expose(), &config.broker)?;

    // 1. Tables, templates, publication and slot.
    let sql = target.connect_sql(src.connect_timeout).await?;
    let mut router = Router::new(&config.routes);
    let mut problems = Vec::new();
    for (schema, table) in router.tables() {
        match slot::table_columns(&sql, &schema, &table).await? {
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
    if src.mode == SourceMode::Polling {
        return polling_session(sql, config, router, broker, handles, stop).await;
    }
    if src.create_slot {
        crate::setup::ensure(&sql, config, &router).await?;
    } else {
        if slot::slot_state(&sql, &src.slot).await?.is_none() {
            return Err(Error::new(
                ErrorKind::SlotMissing,
                format!("replication slot {:?} does not exist and source.create_slot = false", src.slot),
            ));
        }
        if slot::publication_state(&sql, &src.publication).await?.is_none() {
            return Err(Error::new(
                ErrorKind::SlotMissing,
                format!("publication {:?} does not exist and source.create_slot = false", src.publication),
            ));
        }
    }
    let router = Arc::new(router);
    // Another instance streaming? Stand by before touching the broker. (The
    // race-free check is START_REPLICATION itself, below.)
    if let Some(pid) = slot::slot_state(&sql, &src.slot).await?.and_then(|s| s.active_pid) {
        return Err(Error::new(
            ErrorKind::SlotInUse,
            format!("replication slot {:?} is active for PID {pid}", src.slot),
        ));
    }

    // 2. Broker.
    let channel =
        BrokerChannel::open(&broker, config.broker.heartbeat, config.broker.connect_timeout, "outbox-relay").await?;
    tracing::info!(broker = %broker.redacted, "connected to RabbitMQ (confirm mode)");

    // 3. Replication.
    let mut repl = ReplicationConnection::connect(&target, src.connect_timeout).await?;
    let ident = repl.identify_system().await?;
    repl.start_replication(&src.slot, &src.publication, Lsn::ZERO, router.wants_messages()).await?;
    let start = slot::slot_state(&sql, &src.slot).await?.and_then(|s| s.confirmed_flush).unwrap_or(Lsn::ZERO);
    let health = spawn_slot_health(sql, src.slot.clone(), handles.metrics.clone());
    tracing::info!(slot = %src.slot, publication = %src.publication, from = %start, server_wal = %ident.xlog_pos, "streaming");
    handles.metrics.set_active(true);
    handles.metrics.set_confirmed_lsn(start.0);
    handles.health.set(State::Streaming);

    // 4. Publisher and reader.
    let (tx, rx) = mpsc::channel(TXN_CHANNEL);
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let publisher = tokio::spawn(
        Publisher::new(channel, router, publisher_settings(config), progress_tx, handles.metrics.clone()).run(rx),
    );
    let reader =
        ReaderSettings { status_interval: src.status_interval, shutdown_timeout: config.broker.shutdown_timeout };
    let res = replication::stream(
        repl,
        start,
        tx,
        progress_rx,
        publisher,
        stop.clone(),
        reader,
        handles.metrics.clone(),
        handles.health.clone(),
    )
    .await;
    health.abort();
    if stop.is_cancelled() {
        handles.health.set(State::Stopping);
    }
    res
}

/// A polling session: lock, then poll-publish-delete until stop.
async fn polling_session(
    sql: tokio_postgres::Client,
    config: &Config,
    router: Router,
    broker: BrokerTarget,
    handles: &Handles,
    stop: &CancellationToken,
) -> Result<()> {
    use crate::source::polling;
    let src = &config.source;
    if router.wants_messages() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{}: message_prefix routes need source.mode = \"replication\"", config.path.display()),
        ));
    }
    polling::lock(&sql, &src.slot).await?;
    let mut tables = Vec::new();
    for (schema, table) in router.tables() {
        let columns = slot::table_columns(&sql, &schema, &table).await?.unwrap_or_default();
        let key = polling::primary_key(&sql, &schema, &table).await?;
        tables.push(polling::PolledTable { schema, table, columns: Arc::new(columns), key });
    }
    let channel =
        BrokerChannel::open(&broker, config.broker.heartbeat, config.broker.connect_timeout, "outbox-relay").await?;
    tracing::info!(broker = %broker.redacted, lock = %polling::lock_name(&src.slot), "polling (advisory lock held)");
    handles.metrics.set_active(true);
    handles.health.set(State::Streaming);
    let (tx, rx) = mpsc::channel(1);
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let publisher = tokio::spawn(
        Publisher::new(
            channel,
            Arc::new(router.without_lsn_headers()),
            publisher_settings(config),
            progress_tx,
            handles.metrics.clone(),
        )
        .run(rx),
    );
    let res = polling::run(sql, config, tables, tx, progress_rx, publisher, stop.clone(), handles.health.clone()).await;
    if stop.is_cancelled() {
        handles.health.set(State::Stopping);
    }
    res
}

fn publisher_settings(config: &Config) -> PublisherSettings {
    PublisherSettings {
        max_in_flight: config.broker.max_in_flight,
        confirm_timeout: config.broker.confirm_timeout,
        on_unroutable: config.broker.on_unroutable,
        dead_letter_exchange: config.broker.dead_letter_exchange.clone(),
    }
}

/// Reads the slot's health every [`SLOT_HEALTH_INTERVAL`] into the metrics,
/// on the session's ordinary connection. A failed read is logged, not fatal:
/// the replication stream is what matters.
fn spawn_slot_health(sql: tokio_postgres::Client, slot: String, metrics: Arc<Metrics>) -> tokio::task::JoinHandle<()> {
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

/// Route labels for metrics: the configured names.
pub fn route_names(config: &Config) -> Vec<String> {
    // Validation guarantees non-empty names (defaulting to the table or prefix).
    config.routes.iter().map(|r| if r.name.is_empty() { r.matcher.label() } else { r.name.clone() }).collect()
}

/// The URL to use for this attempt: the environment override (re-read, so a
/// rotated `_FILE` secret is picked up without a restart) or the file's.
///
/// # Errors
///
/// `Config` when the override is set twice, unreadable or malformed.
pub fn current_url(target: UrlTarget, configured: &SecretString) -> Result<SecretString> {
    match crate::config::resolve_url_override(target, &crate::config::process_env) {
        Ok(Some(url)) => Ok(url),
        Ok(None) => Ok(configured.clone()),
        Err(p) => Err(Error::new(ErrorKind::Config, format!("{}: {}", p.key, p.message))),
    }
}
