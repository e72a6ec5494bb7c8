//! Reading the relay's HTTP endpoint: `/metrics` values and probe statuses.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path`; returns (status code, body), or (0, "") when nothing listens.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("GET {path} on {addr}: {e}");
            return (0, String::new());
        }
    };
    let mut out = String::new();
    if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.is_err()
        || s.read_to_string(&mut out).await.is_err()
    {
        return (0, String::new());
    }
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The text of /metrics.
pub async fn scrape(addr: SocketAddr) -> String {
    get(addr, "/metrics").await.1
}

/// The value of the first sample of `name` whose line contains `label`
/// (use "" for an unlabelled metric).
pub fn metric(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
