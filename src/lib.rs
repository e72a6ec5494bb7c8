//! outbox-relay: the transactional outbox, relayed from PostgreSQL logical
//! replication to RabbitMQ with publisher confirms.
//!
//! A service writes its domain change and an event row in one transaction.
//! The relay streams committed rows out of the write-ahead log (pgoutput),
//! publishes each as a persistent AMQP message, and tells PostgreSQL it is
//! done with a position only after the broker confirmed everything up to it.
//!
//! ```text
//!            PostgreSQL                     outbox-relay                          RabbitMQ
//!  +-------------------------+   XLogData   +--------+  Transaction  +-----------+  publish   +----------+
//!  | outbox table  -> WAL -> |------------->| reader |-------------->| publisher |----------->| exchange |
//!  |  slot confirmed_flush   |<-------------|        |<--------------|  tracker  |<-----------|          |
//!  +-------------------------+ status update+--------+   Progress    +-----------+  ack/return+----------+
//! ```
//!
//! Layout:
//! - [`config`]: the TOML file and environment overrides, validated.
//! - [`event`]: LSN newtypes and the decoded event.
//! - [`source`]: the replication connection, pgoutput decoder, slot SQL.
//! - [`route`]: first-match routing and `{column}` templates.
//! - [`publish`]: the broker channel, confirm correlation, publisher task.
//! - [`ack`]: the in-flight tracker and the monotonic flush position.
//! - [`session`]: one pipeline run: connects both ends, runs the source
//!   beside the publisher task, drains on stop.
//! - [`relay`]: the supervisor (retry, backoff, standby).
//! - [`health`]: readiness state and the streaming loop's heartbeat.
//! - [`metrics`], [`http`]: Prometheus metrics and `/metrics`, `/healthz`, `/readyz`.
//! - [`setup`]: publication and slot creation.
//! - [`recover`]: after a lost slot, a new slot and the re-publishing of what
//!   may not have been confirmed.
//! - [`error`]: the error type, its kinds and their retry policy.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod ack;
pub mod check;
pub mod config;
pub mod error;
pub mod event;
pub mod exit;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod publish;
pub mod recover;
pub mod relay;
pub mod replay;
pub mod route;
pub mod session;
pub mod setup;
pub mod source;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};

/// A relay started in the background, for tests and embedding.
#[derive(Debug)]
pub struct Running {
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    /// Metrics and health.
    pub handles: session::Handles,
}

/// Runs the relay until `shutdown` resolves, then drains in-flight confirms,
/// acknowledges the last confirmed position and returns `Ok`.
///
/// # Errors
///
/// Errors that need a person (invalid configuration, a row that cannot be
/// rendered); everything else is retried.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// Like [`run`], calling `started` once the HTTP listener is bound.
///
/// # Errors
///
/// As [`run`].
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()>,
    started: impl FnOnce(&Running),
) -> Result<()> {
    let stop = CancellationToken::new();
    let handles = session::Handles::new(&config);
    let http_stop = CancellationToken::new();
    let http_addr =
        http::serve(config.http.listen, handles.metrics.clone(), handles.health.clone(), http_stop.clone()).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), http = %http_addr, config = %config.path.display(), "outbox-relay starting");
    notify::spawn(handles.health.clone(), http_stop.clone());
    started(&Running { http_addr, handles: handles.clone() });
    let work = relay::supervise(&config, &handles, &stop);
    tokio::pin!(work);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut work => r,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested");
            stop.cancel();
            work.await
        }
    };
    http_stop.cancel();
    result
}
