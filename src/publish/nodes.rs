//! The RabbitMQ nodes of `broker.url` at run time: which one the relay is on,
//! which one it tries next, and connecting to the first usable one.
//!
//! One [`BrokerNodes`] lives as long as the relay process (in
//! [`crate::session::Handles`]), so the choice survives sessions:
//!
//! - [`BrokerNodes::connect`] tries the nodes in `broker.node_order`, starting
//!   at the one to try next, and stays on the first that opens a confirm-mode
//!   channel. Each node that fails is logged with its reason; when all fail,
//!   one error names every node and why.
//! - After a session lost its broker mid-stream, [`BrokerNodes::after_failure`]
//!   moves on to the following node and tells the supervisor to go on at
//!   once, until every node has failed in a row: a full round. Between full
//!   rounds the supervisor's backoff applies, as it did for one node.
//! - The URLs are read again for every connect (`current_url`), so a rotated
//!   `OUTBOX_RELAY_BROKER_URL_FILE` takes effect at the next connection, as
//!   it did for one URL. TLS settings apply per URL: an `amqps://` URL takes
//!   its own query parameters, and the `broker.tls_*` keys fill in the rest.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{brokers, current_url, BrokerConfig, UrlTarget};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Metrics;

use super::channel::{BrokerChannel, BrokerTarget};

/// A session that stayed on its node this long starts a new round: its
/// failure counts as the first of a row again.
const HEALTHY_CONNECTION: Duration = Duration::from_secs(60);
/// While backing off after a failed round: how often the nodes that refused
/// connections are tried again (a TCP connect, nothing more).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one TCP probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The nodes' cursor; see the module doc.
#[derive(Debug, Default)]
pub struct BrokerNodes {
    cursor: Mutex<Cursor>,
}

#[derive(Debug, Default)]
struct Cursor {
    /// Index, in the configured order, of the node to try first.
    next: usize,
    /// Nodes in the list at the last connect.
    len: usize,
    /// Failures in a row since the last full round or healthy connection.
    streak: usize,
    /// The last connect tried every node and none was usable.
    exhausted: bool,
    /// When the current connection opened.
    since: Option<Instant>,
}

impl BrokerNodes {
    /// The nodes of `cfg`, in the order they are tried, with the URLs read
    /// again from the environment.
    ///
    /// # Errors
    ///
    /// `Config` when the override is unreadable or a URL cannot be used.
    pub fn targets(cfg: &BrokerConfig) -> Result<Vec<BrokerTarget>> {
        let urls = brokers::urls(&current_url(UrlTarget::Broker, &cfg.url)?);
        let order = cfg.node_order.order(urls.len());
        order.into_iter().map(|i| BrokerTarget::from_config(urls[i].expose(), cfg)).collect()
    }

    /// Connects to the first usable node, starting at the one to try next;
    /// `name` is the connection name RabbitMQ shows. Sets
    /// `outbox_relay_broker_node` and logs the node.
    ///
    /// # Errors
    ///
    /// With one node, its error. With several, one error naming each node and
    /// why it failed; its kind is theirs when they all agree (a `Config`
    /// problem everywhere stops the relay), `BrokerConnection` otherwise.
    pub async fn connect(&self, cfg: &BrokerConfig, name: &str, metrics: &Metrics) -> Result<BrokerChannel> {
        let targets = Self::targets(cfg)?;
        let n = targets.len();
        let start = {
            let mut c = self.lock();
            c.len = n;
            c.next % n.max(1)
        };
        let endpoints: Vec<String> = targets.iter().map(BrokerTarget::endpoint).collect();
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let target = &targets[i];
            match BrokerChannel::open(target, cfg.heartbeat, cfg.connect_timeout, name).await {
                Ok(channel) => {
                    {
                        let mut c = self.lock();
                        (c.next, c.exhausted, c.since) = (i, false, Some(Instant::now()));
                    }
                    metrics.set_broker_node(&endpoints, Some(&endpoints[i]));
                    let node = &endpoints[i];
                    tracing::info!(broker = %target.redacted, %node, nodes = n, "connected to RabbitMQ (confirm mode)");
                    return Ok(channel);
                }
                Err(e) => {
                    if k + 1 < n {
                        let next = &endpoints[(i + 1) % n];
                        tracing::warn!(node = %endpoints[i], error = %e.chain(), %next, "RabbitMQ node unusable; trying the next node");
                    }
                    failures.push((i, e));
                }
            }
        }
        self.lock().exhausted = true;
        Err(none_usable(failures, &endpoints))
    }

    /// Called by the supervisor after a session failed at the broker's end.
    /// Returns true when the next session should go on at once to the
    /// following node, false when a full round has failed and the backoff
    /// applies.
    pub fn after_failure(&self) -> bool {
        let mut c = self.lock();
        if c.since.take().is_some_and(|t| t.elapsed() >= HEALTHY_CONNECTION) {
            c.streak = 0;
        }
        if c.exhausted || c.len < 2 {
            c.streak = 0;
            return false;
        }
        c.next = (c.next + 1) % c.len;
        c.streak += 1;
        if c.streak < c.len {
            true
        } else {
            c.streak = 0;
            false
        }
    }

    /// The supervisor's backoff after a failed round, cut short when a node
    /// that refused TCP connections (or did not answer) as the wait began
    /// accepts them: a cluster that comes back is used within about a
    /// second, not at the end of a backoff grown to 30 s during the outage.
    /// A node that accepts connections but fails later (a refused login, a
    /// stopped app on a live VM) never cuts the wait, so this cannot turn
    /// into a tight loop.
    pub async fn backoff(cfg: &BrokerConfig, delay: Duration) {
        let deadline = tokio::time::Instant::now() + delay;
        let targets = Self::targets(cfg).unwrap_or_default();
        let mut down = Vec::new();
        for t in &targets {
            if !accepts(t).await {
                down.push(t);
            }
        }
        if down.is_empty() {
            tokio::time::sleep_until(deadline).await;
            return;
        }
        loop {
            let next = (tokio::time::Instant::now() + PROBE_EVERY).min(deadline);
            tokio::time::sleep_until(next).await;
            if next >= deadline {
                return;
            }
            for t in &down {
                if accepts(t).await {
                    tracing::info!(node = %t.endpoint(), "RabbitMQ node accepts connections again; reconnecting before the backoff ends");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `target` accepts a TCP connection now (closed again at once).
async fn accepts(target: &BrokerTarget) -> bool {
    let (host, port) = target.host_port();
    matches!(tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await, Ok(Ok(_)))
}

/// The error of a round in which no node was usable.
fn none_usable(mut failures: Vec<(usize, Error)>, endpoints: &[String]) -> Error {
    if failures.len() == 1 {
        return failures.pop().map(|(_, e)| e).unwrap_or_else(|| Error::new(ErrorKind::Config, "broker.url is empty"));
    }
    let kind = match failures.first() {
        Some((_, first)) if failures.iter().all(|(_, e)| e.kind() == first.kind()) => first.kind(),
        _ => ErrorKind::BrokerConnection,
    };
    let each: Vec<String> = failures.iter().map(|(i, e)| format!("{}: {}", endpoints[*i], e.chain())).collect();
    Error::new(kind, format!("no RabbitMQ node of {} is usable ({})", failures.len(), each.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(len: usize, next: usize) -> BrokerNodes {
        let nodes = BrokerNodes::default();
        {
            let mut c = nodes.lock();
            (c.len, c.next, c.since) = (len, next, Some(Instant::now()));
        }
        nodes
    }

    #[test]
    fn a_failure_moves_on_at_once_until_a_full_round_has_failed() {
        let n = nodes(3, 0);
        assert!(n.after_failure(), "node 1 failed: on to node 2 at once");
        assert_eq!(n.lock().next, 1);
        assert!(n.after_failure(), "node 2 failed: on to node 3 at once");
        assert!(!n.after_failure(), "node 3 failed too: a full round, back off");
        assert_eq!(n.lock().next, 0, "and start the next round at node 1");
        assert!(n.after_failure(), "a new round moves on at once again");
    }

    #[test]
    fn one_node_always_backs_off() {
        let n = nodes(1, 0);
        assert!(!n.after_failure());
        assert!(!n.after_failure());
    }

    #[test]
    fn a_connect_that_found_no_node_backs_off() {
        let n = nodes(3, 1);
        n.lock().exhausted = true;
        assert!(!n.after_failure());
        assert_eq!(n.lock().next, 1, "the next round starts where this one did");
    }

    #[test]
    fn a_healthy_connection_starts_a_new_round() {
        let n = nodes(2, 0);
        assert!(n.after_failure());
        n.lock().since = Some(Instant::now() - HEALTHY_CONNECTION);
        assert!(n.after_failure(), "the streak restarted: node 2 had been healthy for a minute");
    }

    fn broker_config(url: &str) -> BrokerConfig {
        let text =
            format!("[source]\nurl = \"postgres://db/app\"\n[broker]\nurl = \"{url}\"\n[[routes]]\nexchange = \"x\"\n");
        crate::config::from_str(&text, std::path::Path::new("t.toml"), &|_| None).expect("a valid config").broker
    }

    #[tokio::test]
    async fn the_backoff_ends_soon_after_a_refusing_node_accepts_again() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let cfg = broker_config(&format!("amqp://u:p@{addr}/%2f"));
        let t0 = Instant::now();
        let reopen = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::net::TcpListener::bind(addr).await.expect("the port again")
        };
        let ((), _listener) = tokio::join!(BrokerNodes::backoff(&cfg, Duration::from_secs(20)), reopen);
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(3), "waited {waited:?} of a 20 s backoff");
    }

    #[tokio::test]
    async fn a_node_that_accepted_all_along_does_not_cut_the_backoff() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let cfg = broker_config(&format!("amqp://u:p@{}/%2f", listener.local_addr().unwrap()));
        let t0 = Instant::now();
        BrokerNodes::backoff(&cfg, Duration::from_millis(1500)).await;
        assert!(t0.elapsed() >= Duration::from_millis(1500), "a node that fails after accepting must not loop fast");
    }

    #[test]
    fn every_node_is_named_when_none_is_usable() {
        let endpoints = vec!["a:5672".to_owned(), "b:5672".to_owned()];
        let failures = vec![
            (0, Error::new(ErrorKind::BrokerConnection, "refused")),
            (1, Error::new(ErrorKind::Config, "bad TLS file")),
        ];
        let e = none_usable(failures, &endpoints);
        assert_eq!(e.kind(), ErrorKind::BrokerConnection);
        let text = e.chain();
        assert!(text.contains("a:5672: refused") && text.contains("b:5672: bad TLS file"), "{text}");
        let both_config = vec![(0, Error::new(ErrorKind::Config, "x")), (1, Error::new(ErrorKind::Config, "y"))];
        assert_eq!(none_usable(both_config, &endpoints).kind(), ErrorKind::Config);
    }
}
