//! Starting the relay under test: in-process (through the library's `run`,
//! with a oneshot as its shutdown future) or as the real binary (for SIGKILL
//! and SIGTERM), always with a config file written per test from a
//! [`TestConfig`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::config::TestConfig;

/// The relay's health states, named here only (so a move in `src/` is fixed in one place).
pub use outbox_relay::health::{Health, State};

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
    pub async fn start(cfg: &TestConfig) -> InProcess {
        let relay = InProcess::start_any(cfg).await;
        // Rows committed before the slot exists are not in its stream: wait for it.
        super::wait_until(Duration::from_secs(30), "relay streaming", || {
            let s = relay.streaming();
            async move { s }
        })
        .await;
        relay
    }

    /// Starts the relay and waits only for its HTTP listener (it may end up
    /// streaming, standing by, or failing).
    pub async fn start_any(cfg: &TestConfig) -> InProcess {
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

    /// Waits (at most 30 s) for the relay to stop by itself with an error,
    /// and returns it; `why` says what should have stopped it.
    pub async fn stopped_with_error(self, why: &str) -> outbox_relay::Error {
        match tokio::time::timeout(Duration::from_secs(30), self.join()).await {
            Err(_) => panic!("the relay did not stop by itself on {why}"),
            Ok(Ok(())) => panic!("{why} must stop the relay with an error, not a clean stop"),
            Ok(Err(e)) => e,
        }
    }

    /// Whether it is streaming.
    pub fn streaming(&self) -> bool {
        self.handles.health.get() == State::Streaming
    }

    /// Whether it is a standby (another instance holds the slot or lock).
    pub fn standing_by(&self) -> bool {
        self.handles.health.get() == State::Standby
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
    pub fn spawn(cfg: &TestConfig) -> Process {
        Process::spawn_env(cfg, &[])
    }

    /// Spawns it with extra environment variables.
    pub fn spawn_env(cfg: &TestConfig, env: &[(&str, &str)]) -> Process {
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

    /// Waits (bounded) for the relay to exit by itself, and returns its status.
    pub async fn exited(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => (s.expect("wait"), self.log_text()),
            Err(_) => {
                let log = self.log_text();
                let _ = self.child.kill().await;
                panic!("relay did not exit by itself within {within:?}; log:\n{log}");
            }
        }
    }

    /// Peak resident memory of the relay process so far (VmHWM, bytes).
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
