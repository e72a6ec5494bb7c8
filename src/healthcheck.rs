//! `outbox-relay healthcheck`: a blocking probe of a running relay's
//! `/healthz` or `/readyz` over a plain socket (the runtime image has no curl).

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting and reading may each take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The path probed: `/readyz` when `ready`, else `/healthz`.
pub fn path(ready: bool) -> &'static str {
    if ready {
        "/readyz"
    } else {
        "/healthz"
    }
}

/// A probe that did not get HTTP 200.
#[derive(Debug)]
pub struct ProbeError {
    addr: SocketAddr,
    path: String,
    reason: String,
}

impl fmt::Display for ProbeError {
    /// `{addr}{path}: {the status line, or why there was none}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}: {}", self.addr, self.path, self.reason)
    }
}

impl std::error::Error for ProbeError {}

/// GETs `path` on `addr`; on HTTP 200, returns the body trimmed (`ok` if the
/// answer had none).
///
/// # Errors
///
/// Any other status, or no answer within the timeout.
pub fn probe(addr: SocketAddr, path: &str) -> Result<String, ProbeError> {
    let fail = |reason: String| ProbeError { addr, path: path.to_owned(), reason };
    let text = get(addr, path).map_err(|e| fail(e.to_string()))?;
    if text.starts_with("HTTP/1.1 200") {
        Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.trim()).unwrap_or("ok").to_owned())
    } else {
        Err(fail(text.lines().next().unwrap_or("no answer").to_owned()))
    }
}

/// The whole answer (at most 64 KiB) to a `Connection: close` GET.
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.take(64 * 1024).read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Answers one connection with `answer`.
    fn serve_once(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(answer.as_bytes()).unwrap();
        });
        addr
    }

    #[test]
    fn a_200_gives_the_body() {
        let addr = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nstreaming\n");
        assert_eq!(probe(addr, path(true)).unwrap(), "streaming");
    }

    #[test]
    fn another_status_gives_the_status_line() {
        let addr = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
        let e = probe(addr, path(false)).unwrap_err();
        assert_eq!(e.to_string(), format!("{addr}/healthz: HTTP/1.1 503 Service Unavailable"));
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: closed
        let e = probe(addr, "/healthz").unwrap_err();
        assert!(e.to_string().starts_with(&format!("{addr}/healthz: ")), "{e}");
    }
}
