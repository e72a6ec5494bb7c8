//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (alive) and
//! `/readyz` (streaming, or a healthy standby; the body says which).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Metrics;

/// The streaming loop turns at least every 100 ms; this long without a turn
/// means it is wedged (`/healthz` fails, the systemd watchdog stops pinging).
pub const WEDGED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// What the relay is doing, for `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Connecting or reconnecting.
    Starting = 0,
    /// Connected to both ends and streaming.
    Streaming = 1,
    /// Another instance holds the slot; this one waits to take over.
    Standby = 2,
    /// Stopping.
    Stopping = 3,
}

/// Shared, lock-free health state: what the relay is doing, and when its
/// pipeline last showed it is turning (for the systemd watchdog).
#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
    /// Unix milliseconds of the last [`Health::beat`].
    beat: std::sync::atomic::AtomicU64,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Health {
    /// Sets the state.
    pub fn set(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
        self.beat();
    }

    /// Records that the streaming loop is turning.
    pub fn beat(&self) {
        self.beat.store(unix_ms(), Ordering::Relaxed);
    }

    /// Whether the process is not wedged: while streaming, the loop must have
    /// turned within `within`; other states are bounded by their own timeouts.
    pub fn alive(&self, within: std::time::Duration) -> bool {
        self.get() != State::Streaming
            || unix_ms().saturating_sub(self.beat.load(Ordering::Relaxed)) <= within.as_millis() as u64
    }

    /// The state.
    pub fn get(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Streaming,
            2 => State::Standby,
            3 => State::Stopping,
            _ => State::Starting,
        }
    }
}

/// Binds `addr` and serves until `stop` is cancelled. Returns the bound
/// address (useful with port 0).
///
/// # Errors
///
/// `Io` when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::with_source(ErrorKind::Io, format!("binding the HTTP listener on {addr} (http.listen)"), e)
    })?;
    let local =
        listener.local_addr().map_err(|e| Error::with_source(ErrorKind::Io, "reading the HTTP listener address", e))?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            };
            let metrics = metrics.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    let health = health.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &metrics, &health)) }
                });
                let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(local)
}

fn respond<B>(req: &Request<B>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.encode()),
        "/healthz" if health.alive(WEDGED_AFTER) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/healthz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "wedged: the streaming loop has not turned recently\n".to_owned(),
        ),
        "/readyz" => match health.get() {
            State::Streaming => (StatusCode::OK, "text/plain", "active: streaming\n".to_owned()),
            State::Standby => (StatusCode::OK, "text/plain", "standby: another instance holds the slot\n".to_owned()),
            State::Starting => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: connecting\n".to_owned()),
            State::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: stopping\n".to_owned()),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
