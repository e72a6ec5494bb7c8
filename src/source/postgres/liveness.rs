//! How a dead PostgreSQL connection is noticed below the protocol: every
//! bound derives from `source.receive_timeout` (`T`, default 60 s).
//!
//! | what | value | where |
//! | --- | --- | --- |
//! | TCP keepalive | first probe after `T/4` of silence, then every `T/12`, 3 probes | every socket: the replication connection ([`Liveness::apply_to_socket`]) and the SQL connections ([`Liveness::apply_to_config`]) |
//! | `TCP_USER_TIMEOUT` (Linux) | `T`: data written and not acknowledged this long aborts the connection | the same sockets |
//! | `statement_timeout` | `T`, sent in the startup packet's `options`, before the URL's own (which win) | SQL connections |
//!
//! Keepalive probes are answered by the peer's kernel, so they only find a
//! peer host or path that is gone; a silent but reachable server is found
//! by the replication reader's own receive timeout
//! ([`crate::source::replication`]) and, in polling mode, by the lock check
//! ([`crate::source::polling::lock_lost`]). The broker connection checks
//! AMQP heartbeats itself (`broker.heartbeat`, [`crate::publish::amqp`]),
//! and `confirm_timeout` covers a broker that stops confirming.

use std::time::Duration;

/// The default of `source.receive_timeout`.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// Keepalive probes sent before the kernel gives up on a silent peer.
const KEEPALIVE_RETRIES: u32 = 3;

/// The socket and session bounds derived from one receive timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// `source.receive_timeout`.
    pub receive_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { receive_timeout: DEFAULT_RECEIVE_TIMEOUT }
    }
}

impl Liveness {
    /// Idle time before the first keepalive probe: `T/4`, at least 1 s.
    pub fn keepalive_idle(&self) -> Duration {
        (self.receive_timeout / 4).max(Duration::from_secs(1))
    }

    /// Time between keepalive probes: `T/12`, at least 1 s.
    pub fn keepalive_interval(&self) -> Duration {
        (self.receive_timeout / 12).max(Duration::from_secs(1))
    }

    /// `TCP_USER_TIMEOUT`: `T`.
    pub fn user_timeout(&self) -> Duration {
        self.receive_timeout
    }

    /// `statement_timeout` on SQL connections: `T`, in milliseconds.
    pub fn statement_timeout_ms(&self) -> u128 {
        self.receive_timeout.as_millis().max(1)
    }

    /// Sets keepalive, `TCP_USER_TIMEOUT` and `statement_timeout` on a
    /// tokio-postgres config. The statement timeout goes first in `options`,
    /// so a `-c statement_timeout=...` in the URL's own options wins.
    pub fn apply_to_config(&self, cfg: &mut tokio_postgres::Config) {
        cfg.keepalives(true)
            .keepalives_idle(self.keepalive_idle())
            .keepalives_interval(self.keepalive_interval())
            .keepalives_retries(KEEPALIVE_RETRIES)
            .tcp_user_timeout(self.user_timeout());
        let ours = format!("-c statement_timeout={}", self.statement_timeout_ms());
        let options = match cfg.get_options().filter(|o| !o.trim().is_empty()) {
            Some(theirs) => format!("{ours} {theirs}"),
            None => ours,
        };
        cfg.options(options);
    }

    /// Sets keepalive and (on Linux) `TCP_USER_TIMEOUT` on a connected socket.
    ///
    /// # Errors
    ///
    /// The `setsockopt` failure.
    pub fn apply_to_socket(&self, tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
        let sock = socket2::SockRef::from(tcp);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(self.keepalive_idle())
            .with_interval(self.keepalive_interval())
            .with_retries(KEEPALIVE_RETRIES);
        sock.set_tcp_keepalive(&keepalive)?;
        #[cfg(target_os = "linux")]
        sock.set_tcp_user_timeout(Some(self.user_timeout()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn bounds_follow_the_receive_timeout() {
        let l = Liveness { receive_timeout: secs(60) };
        assert_eq!((l.keepalive_idle(), l.keepalive_interval(), l.user_timeout()), (secs(15), secs(5), secs(60)));
        assert_eq!(l.statement_timeout_ms(), 60_000);
        // Probes start after T/4 and give up after 3 more intervals: within T.
        assert!(l.keepalive_idle() + l.keepalive_interval() * KEEPALIVE_RETRIES <= l.receive_timeout);
    }

    #[test]
    fn short_timeouts_keep_whole_second_probes() {
        let l = Liveness { receive_timeout: secs(3) };
        assert_eq!((l.keepalive_idle(), l.keepalive_interval()), (secs(1), secs(1)));
    }

    #[test]
    fn the_statement_timeout_goes_before_the_urls_own_options() {
        let l = Liveness { receive_timeout: secs(5) };
        let mut cfg: tokio_postgres::Config = "host=h user=u options='-c search_path=app'".parse().unwrap();
        l.apply_to_config(&mut cfg);
        assert_eq!(cfg.get_options(), Some("-c statement_timeout=5000 -c search_path=app"));
        assert!(cfg.get_keepalives());
        assert_eq!(cfg.get_keepalives_idle(), Duration::from_millis(1250));
        assert_eq!(cfg.get_tcp_user_timeout(), Some(&secs(5)));

        let mut bare: tokio_postgres::Config = "host=h user=u".parse().unwrap();
        l.apply_to_config(&mut bare);
        assert_eq!(bare.get_options(), Some("-c statement_timeout=5000"));
    }

    #[tokio::test]
    async fn socket_options_are_set() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        Liveness { receive_timeout: secs(8) }.apply_to_socket(&tcp).unwrap();
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), secs(2));
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(secs(8)));
    }
}
