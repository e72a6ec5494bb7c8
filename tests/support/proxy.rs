//! An in-process TCP proxy in front of PostgreSQL or RabbitMQ, for fault
//! injection: pass traffic, black-hole it (hold every byte, no RST), or cut
//! every open connection. Counts connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How traffic is treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Hold all bytes in both directions (connections stay open, silent).
    Blackhole,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    cut: Arc<std::sync::Mutex<CancellationToken>>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (cut2, conns2, stop2) = (cut.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = stop2.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                let token = cut2.lock().unwrap().clone();
                let mode_rx = mode_rx.clone();
                let stop = stop2.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = stop.cancelled() => {}
                        _ = pump(cr, sw, mode_rx.clone()) => {}
                        _ = pump(sr, cw, mode_rx) => {}
                    }
                    // Dropping both halves closes both sockets.
                });
            }
        });
        Proxy { addr, mode, cut, connections, stop }
    }

    /// Changes how traffic is treated.
    pub fn set_mode(&self, m: Mode) {
        self.mode.send_replace(m);
    }

    /// Closes every open connection (new ones are accepted).
    pub fn cut(&self) {
        let mut t = self.cut.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Hold while black-holed: neither read nor write.
        while *mode.borrow() == Mode::Blackhole {
            if mode.changed().await.is_err() {
                return;
            }
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while *mode.borrow() == Mode::Blackhole {
            if mode.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
