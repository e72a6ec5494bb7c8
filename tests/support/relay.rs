//! Starting the relay under test: in-process (through the library's `run`,
//! with a oneshot as its shutdown future) or as the real binary (for SIGKILL
//! and SIGTERM), always with a config file written per test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Builds the TOML for a test relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// PostgreSQL URL.
    pub source_url: String,
    /// Slot name.
    pub slot: String,
    /// AMQP URL.
    pub broker_url: String,
    /// Target exchange.
    pub exchange: String,
    /// Extra `[source]` lines.
    pub source_extra: String,
    /// Extra `[broker]` lines.
    pub broker_extra: String,
    /// Extra `[[routes]]` lines.
    pub route_extra: String,
    /// Whole extra sections appended at the end.
    pub tail: String,
    /// `[http] listen`.
    pub http_listen: String,
}

impl RelayConfig {
    /// Defaults for a test database and exchange. Slot names are
    /// cluster-wide, so the slot is named after the (random) database.
    pub fn new(source_url: &str, exchange: &str) -> Self {
        let db = url::Url::parse(source_url).expect("url").path().trim_start_matches('/').to_owned();
        RelayConfig {
            slot: db,
            source_url: source_url.to_owned(),
            broker_url: super::amqp_url(),
            exchange: exchange.to_owned(),
            source_extra: String::new(),
            broker_extra: "confirm_timeout = \"10s\"\nshutdown_timeout = \"20s\"".into(),
            route_extra: String::new(),
            tail: String::new(),
            http_listen: "127.0.0.1:0".into(),
        }
    }

    /// The TOML text.
    pub fn toml(&self) -> String {
        format!(
            r#"[source]
url = "{}"
slot = "{}"
status_interval = "1s"
{}
[broker]
url = "{}"
{}
[[routes]]
table = "public.outbox"
exchange = "{}"
{}
[http]
listen = "{}"
{}
"#,
            self.source_url,
            self.slot,
            self.source_extra,
            self.broker_url,
            self.broker_extra,
            self.exchange,
            self.route_extra,
            self.http_listen,
            self.tail
        )
    }

    /// Writes the TOML to a fresh temp dir and returns its path.
    pub fn write(&self) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        (dir, path)
    }

    /// Gives the relay a fixed free loopback port for HTTP (for a binary
    /// whose port the test must know) and returns it.
    pub fn fixed_http_port(&mut self) -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        self.http_listen = addr.to_string();
        addr
    }

    /// Runs `outbox-relay setup` (publication and slot), so rows written
    /// from now on are in the slot's stream even before a relay runs.
    pub fn setup(&self) {
        let (_dir, path) = self.write();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
            .args(["setup", "--config"])
            .arg(&path)
            .output()
            .expect("run setup");
        assert!(out.status.success(), "setup failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Parses it with the library's own loader.
    pub fn load(&self) -> outbox_relay::Config {
        let (_dir, path) = self.write();
        outbox_relay::config::load(&path, &|_| None).unwrap_or_else(|e| panic!("test config invalid: {e}"))
    }
}

/// A relay running inside the test process.
pub struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<outbox_relay::Result<()>>,
    /// Bound HTTP address.
    pub http: std::net::SocketAddr,
    /// Metrics and health.
    pub handles: outbox_relay::session::Handles,
}

impl InProcess {
    /// Starts the relay and waits until it streams.
    pub async fn start(cfg: &RelayConfig) -> InProcess {
        let relay = InProcess::start_any(cfg).await;
        // Rows committed before the slot exists are not in its stream: wait for it.
        super::wait_until(Duration::from_secs(30), "relay streaming", || {
            let s = relay.streaming();
            async move { s }
        })
        .await;
        relay
    }

    /// Starts the relay from raw TOML text and waits until it streams.
    pub async fn start_toml(toml: &str) -> InProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).expect("write config");
        let config =
            outbox_relay::config::load(&path, &|_| None).unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let relay = InProcess::launch(config).await;
        super::wait_until(Duration::from_secs(30), "relay streaming", || {
            let s = relay.streaming();
            async move { s }
        })
        .await;
        relay
    }

    /// Starts the relay and waits only for its HTTP listener (it may end up
    /// streaming, standing by, or failing).
    pub async fn start_any(cfg: &RelayConfig) -> InProcess {
        InProcess::launch(cfg.load()).await
    }

    async fn launch(config: outbox_relay::Config) -> InProcess {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,amqprs=warn".into()),
            )
            .try_init();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(outbox_relay::run_with(
            config,
            async move {
                // Only an explicit stop counts: a dropped sender (join) waits forever.
                if stop_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            },
            move |r| {
                let _ = ready_tx.send((r.http_addr, r.handles.clone()));
            },
        ));
        let (http, handles) = tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("relay started")
            .expect("relay reported");
        InProcess { stop: Some(stop), task, http, handles }
    }

    /// Requests a graceful stop and returns the relay's result.
    pub async fn stop(mut self) -> outbox_relay::Result<()> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("relay stopped in time")
            .expect("relay task")
    }

    /// Waits for the relay to end by itself (an error that needs a person).
    pub async fn join(self) -> outbox_relay::Result<()> {
        self.task.await.expect("relay task")
    }

    /// Whether it is streaming.
    pub fn streaming(&self) -> bool {
        self.handles.health.get() == outbox_relay::health::State::Streaming
    }
}

/// The relay binary, run as a child process.
pub struct Process {
    child: Child,
    _dir: tempfile::TempDir,
    /// Where stderr goes.
    pub log: PathBuf,
}

impl Process {
    /// Spawns `outbox-relay run --config FILE`.
    pub fn spawn(cfg: &RelayConfig) -> Process {
        Process::spawn_env(cfg, &[])
    }

    /// Spawns it with extra environment variables.
    pub fn spawn_env(cfg: &RelayConfig, env: &[(&str, &str)]) -> Process {
        let (dir, path) = cfg.write();
        let log = dir.path().join("relay.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn relay binary");
        Process { child, _dir: dir, log }
    }

    /// SIGKILL and reap.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub async fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY-free: use the kill command to send SIGTERM.
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let _ = self.child.kill().await;
                panic!("relay did not exit within {timeout:?} of SIGTERM; log:\n{log}");
            }
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
