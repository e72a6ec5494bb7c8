//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (alive) and
//! `/readyz` (streaming, or a healthy standby; the body says which). It only
//! serves: the state it reports lives in [`crate::health`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::health::{Health, State, WEDGED_AFTER};
use crate::metrics::Metrics;

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
            State::SlotLost => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: slot lost: {}\n", health.lost_reason()),
            ),
        },
        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, health: &Health) -> (StatusCode, String) {
        let metrics = Metrics::new(vec!["r".into()]);
        let req = Request::builder().uri(path).body(()).expect("request");
        let resp = respond(&req, &metrics, health);
        let status = resp.status();
        let body = futures_body(resp);
        (status, body)
    }

    fn futures_body(resp: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(resp.into_body().collect())
            .expect("body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn readyz_answers_503_with_the_reason_while_the_slot_is_lost() {
        let health = Health::default();
        health.set(State::Streaming);
        assert_eq!(get("/readyz", &health).0, StatusCode::OK);
        health.slot_lost("replication slot \"s\" is lost: it does not exist");
        let (status, body) = get("/readyz", &health);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: slot lost: replication slot \"s\" is lost: it does not exist\n");
    }
}
