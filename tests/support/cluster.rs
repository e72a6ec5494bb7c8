//! Private PostgreSQL clusters and RabbitMQ nodes, one per test, for fault
//! injection: a test may restart, stop or crash its own instance without
//! disturbing the shared services (`scripts/services.sh`) or other tests
//! running in parallel.
//!
//! Everything lives in a temp dir (`$OUTBOX_TEST_TMPDIR`, default `/tmp`)
//! named `outbox-t-pg-*` / `outbox-t-rmq-*`, listens on 127.0.0.1 only, and
//! is stopped and deleted on drop. A test binary that is SIGKILLed cannot run
//! its drops: the next one sweeps instances whose owning process is gone (see
//! [`sweep_stale`]).
//!
//! Ports come from [`free_port`], which deliberately stays *below* the
//! kernel's ephemeral range: a server that is down for a while (the point of
//! these instances) must not have its port taken as the source port of some
//! outgoing connection, nor have a reconnecting client connect to itself.
//!
//! Every external command is bounded by a timeout and its output is appended
//! to `commands.log` in the instance's dir; failures panic with the tails of
//! that log and of the server's own log.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio_postgres::{Client, NoTls};

/// How long `pg_ctl` may take to start, stop or restart a cluster (its `-t`).
const PG_CTL_SECS: u64 = 60;
/// How long a RabbitMQ node may take to boot.
const RABBIT_BOOT: Duration = Duration::from_secs(120);
/// How long one `rabbitmqctl` invocation may take.
const RABBITMQCTL: Duration = Duration::from_secs(90);
/// Attempts at starting an instance when its freshly picked port turned out to be taken.
const PORT_ATTEMPTS: usize = 4;

// ---------------------------------------------------------------- shared helpers

/// Certificate and key for a TLS listener (PEM files). They are copied into
/// the instance's dir, so the originals may be deleted after `start`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Server certificate (chain), PEM.
    pub cert: PathBuf,
    /// Its private key, PEM, unencrypted.
    pub key: PathBuf,
    /// CA certificate(s) for verifying client certificates, PEM; optional.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// A certificate and key without a CA file.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles { cert: cert.into(), key: key.into(), ca: None }
    }
}

/// Where instance dirs are created: `$OUTBOX_TEST_TMPDIR`, else `/tmp` (not
/// `$TMPDIR`: the `postgres` user must be able to reach it, and unix socket
/// paths must stay short).
fn base_dir() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_TMPDIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Ports handed out by this process (never handed out twice).
static PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Ports other software on a test machine is known to use.
const PORT_DENYLIST: &[u16] = &[15672, 25672, 15692, 25692];

/// A TCP port that is free on 127.0.0.1 now and that this process has not
/// handed out before.
///
/// Picked at random *outside* the kernel's ephemeral port range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, usually 32768–60999), normally
/// from 10000 up to its start: ports in the ephemeral range may be taken at
/// any time as the source port of an outgoing connection, which would stop a
/// restarted server from binding again, and a client retrying against a
/// stopped server can even connect to itself there.
pub fn free_port() -> u16 {
    let (eph_lo, eph_hi) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    let (lo, hi) = if eph_lo >= 12000 { (10000, eph_lo - 1) } else { (eph_hi.saturating_add(1).max(1024), 65535) };
    let mut handed = PORTS.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..2000 {
        let p = fastrand::u16(lo..=hi);
        if PORT_DENYLIST.contains(&p) || handed.contains(&p) {
            continue;
        }
        if std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).is_ok() {
            handed.insert(p);
            return p;
        }
    }
    panic!("no free port in 127.0.0.1:{lo}-{hi}");
}

/// True when something accepts TCP connections on `addr` (1 s connect timeout).
pub async fn port_accepts(addr: SocketAddr) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Like [`pid_alive`], but a zombie (exited, not yet reaped) counts as gone.
fn pid_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("Z" | "X")),
        Err(_) => false,
    }
}

/// The last `n` lines of a file (or a note that it cannot be read).
fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Creates an instance dir and records the owning process in it (for [`sweep_stale`]).
fn instance_dir(prefix: &str) -> TempDir {
    let base = base_dir();
    fs::create_dir_all(&base).unwrap_or_else(|e| panic!("creating {}: {e}", base.display()));
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("temp dir in {}: {e}", base.display()));
    fs::write(dir.path().join("owner.pid"), std::process::id().to_string()).expect("write owner.pid");
    dir
}

/// An `std` command with a clean environment (so that `PG*`, `RABBITMQ_*`,
/// `ERL_*` variables of the test environment cannot leak in).
fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new(program);
    c.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").stdin(Stdio::null());
    c
}

/// Opens `log` for appending and writes a header naming the command.
fn log_header(log: &Path, what: &str, cmd: &std::process::Command) -> fs::File {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    let _ = writeln!(f, "\n=== {what}: {} {}", cmd.get_program().to_string_lossy(), args.join(" "));
    f
}

/// Runs `cmd` with stdout and stderr appended to `log`, killing it after
/// `timeout`. Output goes to a file, never a pipe: a daemon the command
/// leaves behind (`pg_ctl start`) would otherwise hold the pipe open.
pub(crate) async fn run(what: &str, cmd: std::process::Command, log: &Path, timeout: Duration) -> Result<(), String> {
    run_with_stdout(what, cmd, log, None, timeout).await
}

/// [`run`], with stdout going to `stdout` when given (stderr still to `log`).
async fn run_with_stdout(
    what: &str,
    cmd: std::process::Command,
    log: &Path,
    stdout: Option<fs::File>,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let f = log_header(log, what, &cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdout(stdout.unwrap_or_else(|| f.try_clone().expect("dup log"))).stderr(f).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("{what}: cannot spawn: {e}"))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{what}: {status} after {:?}", started.elapsed())),
        Ok(Err(e)) => Err(format!("{what}: wait: {e}")),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("{what}: timed out after {timeout:?}"))
        }
    }
}

/// [`run`] for `Drop`: blocking, polling the child until `timeout`.
fn run_blocking(what: &str, mut cmd: std::process::Command, log: &Path, timeout: Duration) -> Result<(), String> {
    let f = log_header(log, what, &cmd);
    cmd.stdout(f.try_clone().expect("dup log")).stderr(f);
    let mut child = cmd.spawn().map_err(|e| format!("{what}: cannot spawn: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what}: {status}")),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: timed out after {timeout:?}"));
            }
        }
    }
}

/// Sends `signal` (e.g. "KILL") to `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) {
    let _ = clean_command("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Once per process: stops and deletes instances left behind by test
/// processes that no longer exist (SIGKILLed, or aborted before their drops
/// ran). Only dirs named `outbox-t-pg-*` / `outbox-t-rmq-*` under the base
/// dir whose `owner.pid` names a dead process are touched, and only processes
/// that belong to such a dir (checked through `/proc`) are signalled.
pub fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(base_dir()) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_pg = name.starts_with("outbox-t-pg-");
            if !is_pg && !name.starts_with("outbox-t-rmq-") {
                continue;
            }
            let dir = e.path();
            let Some(owner) = fs::read_to_string(dir.join("owner.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok())
            else {
                continue;
            };
            if pid_alive(owner) {
                continue;
            }
            if is_pg {
                let data = dir.join("data");
                if data.join("postmaster.pid").exists() {
                    if let Some(bin) = pg_bin_dir() {
                        let mut c = pg_command(&bin, "pg_ctl");
                        c.arg("-D").arg(&data).args(["-m", "immediate", "-w", "-t", "30", "stop"]).current_dir(&dir);
                        let _ =
                            run_blocking("sweep: pg_ctl stop", c, &dir.join("commands.log"), Duration::from_secs(40));
                    }
                }
            } else {
                let mark = format!("RABBITMQ_MNESIA_BASE={}", dir.join("mnesia").display());
                for pidfile in ["rabbit.pid", "wrapper.pid"] {
                    if let Some(pid) =
                        fs::read_to_string(dir.join(pidfile)).ok().and_then(|s| s.trim().parse::<u32>().ok())
                    {
                        let env = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                        if env.split(|b| *b == 0).any(|v| v == mark.as_bytes()) {
                            send_signal(pid, "KILL");
                        }
                    }
                }
            }
            let _ = fs::remove_dir_all(&dir);
        }
    });
}

// ---------------------------------------------------------------- PostgreSQL

/// How TCP connections (`host`/`hostssl` lines, databases and replication)
/// authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PgAuth {
    /// `scram-sha-256` (the default).
    #[default]
    Scram,
    /// `md5`, with `password_encryption = 'md5'` so that stored passwords
    /// (the superuser's too) really are MD5 hashes and the server does not
    /// silently upgrade the exchange to SCRAM.
    Md5,
    /// `trust`: any password, or none, is accepted.
    Trust,
    /// `password`: the password travels in clear text.
    Password,
    /// `cert`: a client certificate whose CN is the user name (needs `ssl`
    /// with a CA and `require_ssl`).
    Cert,
}

impl PgAuth {
    fn hba_method(self) -> &'static str {
        match self {
            PgAuth::Scram => "scram-sha-256",
            PgAuth::Md5 => "md5",
            PgAuth::Trust => "trust",
            PgAuth::Password => "password",
            PgAuth::Cert => "cert",
        }
    }
}

/// What a [`PgCluster`] is started with.
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Authentication of TCP connections.
    pub host_auth: PgAuth,
    /// Serve TLS with these files (`ssl = on`).
    pub ssl: Option<TlsFiles>,
    /// Accept TCP connections over TLS only (`hostssl` lines instead of
    /// `host`). Needs `ssl`.
    pub require_ssl: bool,
    /// Extra `postgresql.conf` lines, appended last (so they win), e.g.
    /// `"max_slot_wal_keep_size = '64MB'"`.
    pub extra_conf: Vec<String>,
}

/// The PostgreSQL bin dir: `$OUTBOX_TEST_PG_BIN`, else the highest
/// `/usr/lib/postgresql/*/bin` with `initdb` and `pg_ctl`.
fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("OUTBOX_TEST_PG_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(b));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for e in fs::read_dir("/usr/lib/postgresql").ok()?.flatten() {
        let Ok(v) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let bin = e.path().join("bin");
        if bin.join("initdb").exists() && bin.join("pg_ctl").exists() && best.as_ref().is_none_or(|(b, _)| v > *b) {
            best = Some((v, bin));
        }
    }
    best.map(|(_, b)| b)
}

/// A command running PostgreSQL's `tool` as the `postgres` OS user when we
/// are root (postgres refuses to run as root), else as ourselves.
fn pg_command(bin: &Path, tool: &str) -> std::process::Command {
    let mut c = if is_root() {
        let mut c = clean_command("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        clean_command(bin.join(tool))
    };
    c.env("LC_ALL", "C");
    c
}

/// Gives `path` to the `postgres` user when we are root.
pub(crate) fn chown_postgres(path: &Path, recursive: bool) {
    if !is_root() {
        return;
    }
    let mut c = clean_command("chown");
    if recursive {
        c.arg("-R");
    }
    let st = c.arg("postgres:postgres").arg(path).status().expect("run chown");
    assert!(st.success(), "chown postgres {}: {st}", path.display());
}

/// A private PostgreSQL cluster (`wal_level = logical`) on its own loopback
/// port, superuser `postgres` with password `postgres`. Stopped
/// (immediate mode) and deleted on drop.
/// `support::failover` adds a hot standby of one, promotion, and slot loss.
pub struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    socket_dir: Option<PathBuf>,
}

impl PgCluster {
    /// Runs initdb and starts the cluster; panics (with the log tail) when
    /// that fails. About 1.5 s.
    pub async fn start(opts: PgOptions) -> PgCluster {
        assert!(!opts.require_ssl || opts.ssl.is_some(), "require_ssl needs ssl files");
        let t0 = Instant::now();
        let mut pg = PgCluster::new_instance();

        let pwfile = pg.dir.path().join("pwfile");
        fs::write(&pwfile, "postgres\n").expect("write pwfile");
        chown_postgres(&pwfile, false);
        let mut c = pg_command(&pg.bin, "initdb");
        c.arg("-D").arg(pg.data()).arg(format!("--pwfile={}", pwfile.display()));
        c.args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        c.current_dir(pg.dir.path());
        let r = run("initdb", c, &pg.commands_log(), Duration::from_secs(120)).await;
        let _ = fs::remove_file(&pwfile);
        if let Err(e) = r {
            panic!("{e}\n{}", pg.log_tail());
        }
        let t_init = t0.elapsed();
        pg.write_static_conf(&opts);
        pg.start_on_a_free_port().await;
        if opts.host_auth == PgAuth::Md5 {
            // initdb stored the superuser's password as SCRAM (its default
            // password_encryption); store it again as MD5.
            let c = pg.local_client("postgres").await;
            c.batch_execute("SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD 'postgres'")
                .await
                .unwrap_or_else(|e| panic!("re-hashing the superuser password as md5: {e}\n{}", pg.log_tail()));
        }
        println!(
            "[cluster] PostgreSQL on {} ({:?}) started in {:?} (initdb {t_init:?})",
            pg.addr(),
            opts.host_auth,
            t0.elapsed()
        );
        pg
    }

    /// An instance dir (owned by the `postgres` user) with no data dir yet
    /// and no port; sweeps stale instances first.
    pub(crate) fn new_instance() -> PgCluster {
        sweep_stale();
        let bin = pg_bin_dir().expect("no PostgreSQL: set OUTBOX_TEST_PG_BIN or install /usr/lib/postgresql/*/bin");
        let dir = instance_dir("outbox-t-pg-");
        chown_postgres(dir.path(), false);
        // Unix sockets (used by `local_client`) have a 107-byte path limit.
        let socket_dir = (dir.path().as_os_str().len() + 20 < 100).then(|| dir.path().to_path_buf());
        PgCluster { bin, port: 0, socket_dir, dir }
    }

    /// Picks a port, writes it and starts the server (`pg_ctl start -w`).
    /// The port is checked free when picked, but another process may take
    /// it before the postmaster binds: then it picks again.
    pub(crate) async fn start_on_a_free_port(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_port();
            self.write_port_conf();
            match self.pg_ctl("pg_ctl start", &["start"]).await {
                Ok(()) => return,
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && self.server_log_mentions(&["could not bind", "Address already in use"]) =>
                {
                    eprintln!("[cluster] PostgreSQL port {} was taken ({e}); retrying with another", self.port);
                }
                Err(e) => panic!("{e}\n{}", self.log_tail()),
            }
        }
    }

    /// `postgres://postgres:postgres@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres:postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// 127.0.0.1:port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The instance dir (data dir in `data/`, server log `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A superuser connection over the unix socket (`trust`), whatever
    /// `host_auth` and `require_ssl` say; the connection task is spawned.
    pub async fn local_client(&self, db: &str) -> Client {
        let sock =
            self.socket_dir.as_ref().expect("instance dir path too long for a unix socket (set OUTBOX_TEST_TMPDIR)");
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(sock)
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect(NoTls)
            .await
            .unwrap_or_else(|e| panic!("local connection to {}: {e}\n{}", self.addr(), self.log_tail()));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// `pg_ctl restart -m fast`: every connection (walsenders included) is
    /// terminated, then the server is back on the same port. Returns once it
    /// accepts connections.
    pub async fn restart_fast(&self) {
        let t0 = Instant::now();
        self.pg_ctl("pg_ctl restart", &["-m", "fast", "restart"])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
        println!("[cluster] PostgreSQL on {} restarted in {:?}", self.addr(), t0.elapsed());
    }

    /// `pg_ctl stop -m fast` (clean shutdown); returns once the postmaster is gone.
    pub async fn stop(&self) {
        self.pg_ctl("pg_ctl stop", &["-m", "fast", "stop"])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
    }

    /// `pg_ctl stop -m immediate`: like a crash (no shutdown checkpoint;
    /// the next start runs crash recovery).
    pub async fn stop_immediate(&self) {
        self.pg_ctl("pg_ctl stop immediate", &["-m", "immediate", "stop"])
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
    }

    /// Starts the cluster again after [`stop`](Self::stop) on the same port;
    /// returns once it accepts connections.
    pub async fn start_again(&self) {
        self.pg_ctl("pg_ctl start", &["start"]).await.unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
    }

    /// The last lines of the server log and of the commands run.
    pub fn log_tail(&self) -> String {
        format!(
            "---- {} ----\n{}\n---- {} ----\n{}",
            self.server_log().display(),
            tail(&self.server_log(), 40),
            self.commands_log().display(),
            tail(&self.commands_log(), 20)
        )
    }

    pub(crate) fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn server_log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub(crate) fn commands_log(&self) -> PathBuf {
        self.dir.path().join("commands.log")
    }

    fn server_log_mentions(&self, needles: &[&str]) -> bool {
        let log = fs::read_to_string(self.server_log()).unwrap_or_default();
        needles.iter().any(|n| log.contains(n))
    }

    /// A command running this installation's `tool` (e.g. `pg_basebackup`)
    /// as the `postgres` user, with a clean environment.
    pub(crate) fn tool(&self, tool: &str) -> std::process::Command {
        pg_command(&self.bin, tool)
    }

    /// `pg_ctl -D data -l log -w -t 60 ARGS` (the `-l` matters for restart
    /// too: without it the new postmaster would write to our stdout).
    pub(crate) async fn pg_ctl(&self, what: &str, args: &[&str]) -> Result<(), String> {
        let mut c = self.tool("pg_ctl");
        c.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.server_log())
            .args(["-w", "-t", &PG_CTL_SECS.to_string()])
            .args(args);
        c.current_dir(self.dir.path());
        run(what, c, &self.commands_log(), Duration::from_secs(PG_CTL_SECS + 15)).await
    }

    /// Writes `outbox-test.conf` (included from postgresql.conf), `pg_hba.conf` and TLS files.
    fn write_static_conf(&self, opts: &PgOptions) {
        let data = self.data();
        let mut conf = String::from("# written by tests/support/cluster.rs\n");
        conf.push_str("include_if_exists = 'outbox-port.conf'\n");
        let sock = self.socket_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let _ = write!(
            conf,
            "listen_addresses = '127.0.0.1'
unix_socket_directories = '{sock}'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
wal_sender_timeout = '30s'
# test speed only: no crash safety
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
"
        );
        if opts.host_auth == PgAuth::Md5 {
            conf.push_str("password_encryption = 'md5'\n");
        }
        if let Some(tls) = &opts.ssl {
            let copy = |from: &Path, name: &str| -> PathBuf {
                let to = data.join(name);
                fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
                chown_postgres(&to, false);
                to
            };
            let cert = copy(&tls.cert, "outbox-server.crt");
            let key = copy(&tls.key, "outbox-server.key");
            // the server refuses a key readable by group or others
            fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod key");
            let _ =
                write!(conf, "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n", cert.display(), key.display());
            if let Some(ca) = &tls.ca {
                let ca = copy(ca, "outbox-ca.crt");
                let _ = writeln!(conf, "ssl_ca_file = '{}'", ca.display());
            }
        }
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        fs::write(data.join("outbox-test.conf"), conf).expect("write outbox-test.conf");
        let mut main =
            fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("open postgresql.conf");
        writeln!(main, "\ninclude = 'outbox-test.conf'").expect("append include");

        let host = if opts.require_ssl { "hostssl" } else { "host   " };
        let m = opts.host_auth.hba_method();
        let hba = format!(
            "# written by tests/support/cluster.rs
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
{host} all          all   127.0.0.1/32   {m}
{host} replication  all   127.0.0.1/32   {m}
"
        );
        fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        for f in ["outbox-test.conf", "pg_hba.conf"] {
            chown_postgres(&data.join(f), false);
        }
    }

    fn write_port_conf(&self) {
        let f = self.data().join("outbox-port.conf");
        fs::write(&f, format!("port = {}\n", self.port)).expect("write outbox-port.conf");
        chown_postgres(&f, false);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let mut c = self.tool("pg_ctl");
            c.arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .current_dir(self.dir.path());
            if let Err(e) = run_blocking("drop: pg_ctl stop", c, &self.commands_log(), Duration::from_secs(40)) {
                eprintln!("[cluster] stopping PostgreSQL on {}: {e}", self.addr());
            }
        }
        // the TempDir removes the dir
    }
}

// ---------------------------------------------------------------- RabbitMQ

/// The RabbitMQ scripts dir: `$OUTBOX_TEST_RABBIT_BIN`, else `/usr/lib/rabbitmq/bin`
/// (not `/usr/sbin`, whose wrappers switch to the `rabbitmq` user).
fn rabbit_bin_dir() -> PathBuf {
    std::env::var_os("OUTBOX_TEST_RABBIT_BIN")
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/rabbitmq/bin"))
}

/// A private RabbitMQ node (no plugins, user guest/guest from loopback) on
/// its own loopback ports, with its own node name, Erlang cookie and
/// directories. It runs as a child of the test process (the
/// `rabbitmq-server` script, which runs the Erlang VM as its own child).
/// Stopped and deleted on drop.
///
/// Booting takes several seconds (see `start`); prefer one node per test
/// that needs to restart the broker, and the shared broker otherwise.
pub struct RabbitNode {
    dir: TempDir,
    bin: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    tls_port: Option<u16>,
    /// The Erlang cookie shared with other nodes (a cluster); None: a random one of its own.
    cookie: Option<String>,
    /// The `rabbitmq-server` script we spawned (None while the process is stopped).
    server: Mutex<Option<std::process::Child>>,
}

impl RabbitNode {
    /// Starts a node with a plain AMQP listener and waits until it has booted
    /// (`rabbitmqctl await_startup`) and accepts connections, at most 120 s.
    pub async fn start() -> RabbitNode {
        RabbitNode::start_inner(None, None).await
    }

    /// [`start`](Self::start) with the Erlang cookie `cookie`, so that nodes
    /// started with the same one can form a cluster (see `support::rabbit_cluster`).
    pub async fn start_with_cookie(cookie: &str) -> RabbitNode {
        RabbitNode::start_inner(None, Some(cookie.to_owned())).await
    }

    /// [`start`](Self::start) with an extra AMQPS listener (`listeners.ssl.default`)
    /// serving `tls` (no client certificates required); see [`amqps_url`](Self::amqps_url).
    pub async fn start_with_tls(tls: TlsFiles) -> RabbitNode {
        RabbitNode::start_inner(Some(tls), None).await
    }

    async fn start_inner(tls: Option<TlsFiles>, cookie: Option<String>) -> RabbitNode {
        sweep_stale();
        let t0 = Instant::now();
        let dir = instance_dir("outbox-t-rmq-");
        let mut node = RabbitNode {
            bin: rabbit_bin_dir(),
            node: format!("{}@localhost", super::random_name("outbox_t_")),
            port: 0,
            dist_port: 0,
            tls_port: None,
            cookie,
            server: Mutex::new(None),
            dir,
        };
        node.prepare(tls.as_ref());
        for attempt in 1..=PORT_ATTEMPTS {
            node.port = free_port();
            node.dist_port = free_port();
            node.tls_port = tls.as_ref().map(|_| free_port());
            node.write_conf(tls.as_ref());
            node.spawn();
            match node.wait_booted().await {
                Ok(()) => break,
                Err(e)
                    if attempt < PORT_ATTEMPTS
                        && node.logs_mention(&["eaddrinuse", "could not bind", "Address already in use"]) =>
                {
                    eprintln!("[cluster] RabbitMQ port taken ({e}); retrying with others");
                    node.kill_process().await;
                    let _ = fs::remove_dir_all(node.dir.path().join("mnesia"));
                    let _ = fs::remove_dir_all(node.dir.path().join("log"));
                    node.prepare(tls.as_ref());
                }
                Err(e) => panic!("{e}\n{}", node.log_tail()),
            }
        }
        println!("[cluster] RabbitMQ node {} on {} started in {:?}", node.node, node.addr(), t0.elapsed());
        node
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// 127.0.0.1 and the AMQP port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `amqps://guest:guest@127.0.0.1:TLS_PORT/%2f` when started with TLS.
    pub fn amqps_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("amqps://guest:guest@127.0.0.1:{p}/%2f"))
    }

    /// 127.0.0.1 and the AMQPS port when started with TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_port.map(|p| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)))
    }

    /// The Erlang node name, `outbox_t_…@localhost`.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The instance dir (`log/`, `mnesia/`, `rabbitmq.conf`, `commands.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Broker restart as `stop_app` + `start_app`: the RabbitMQ application
    /// stops (every client connection is closed with CONNECTION_FORCED, the
    /// listeners go away, non-durable queues are lost, durable ones kept)
    /// and starts again, while the Erlang VM — and so the OS process — keeps
    /// running. Returns once the AMQP port accepts connections again. For a
    /// restart of the process itself see [`restart_process`](Self::restart_process).
    pub async fn restart(&self) {
        self.timed("restarted (stop_app/start_app)", async {
            self.stop_app().await;
            self.start_app().await;
        })
        .await;
    }

    /// `rabbitmqctl stop_app`: connections are closed and the AMQP port is
    /// closed; the VM stays up. Returns once the port refuses connections.
    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
        self.wait_port(false, Duration::from_secs(30), "the AMQP port to close after stop_app").await;
    }

    /// `rabbitmqctl start_app`; returns once the AMQP port accepts connections.
    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
        self.wait_port(true, Duration::from_secs(60), "the AMQP port to accept after start_app").await;
    }

    /// Full broker restart: `rabbitmqctl stop` (graceful: clients get
    /// CONNECTION_FORCED), wait for the OS process to exit, start it again
    /// with the same node name, ports and data. Takes about as long as `start`.
    pub async fn restart_process(&self) {
        self.timed("restarted (process)", async {
            self.stop_process().await;
            self.start_process().await;
        })
        .await;
    }

    /// Broker crash: SIGKILL to the Erlang VM (clients see their TCP
    /// connections reset, without an AMQP close), then start it again with
    /// the same node name, ports and data.
    pub async fn kill_and_restart(&self) {
        self.timed("killed and restarted", async {
            self.kill_process().await;
            self.start_process().await;
        })
        .await;
    }

    /// Runs `steps` and prints how long they took.
    async fn timed(&self, what: &str, steps: impl std::future::Future<Output = ()>) {
        let t0 = Instant::now();
        steps.await;
        println!("[cluster] RabbitMQ node {} {what} in {:?}", self.node, t0.elapsed());
    }

    /// Waits until the AMQP port accepts connections (`accepting`) or refuses them.
    async fn wait_port(&self, accepting: bool, timeout: Duration, what: &str) {
        let addr = self.addr();
        super::wait_until(timeout, what, || async move { port_accepts(addr).await == accepting }).await;
    }

    /// Graceful stop of the whole node (`rabbitmqctl stop`); returns once the
    /// OS process has exited. See [`start_process`](Self::start_process).
    pub async fn stop_process(&self) {
        self.ctl(&["stop"]).await;
        if !self.wait_exited(Duration::from_secs(60)).await {
            panic!("RabbitMQ node {} did not exit after `rabbitmqctl stop`\n{}", self.node, self.log_tail());
        }
    }

    /// Starts the node's process again after [`stop_process`](Self::stop_process);
    /// returns once it has booted and accepts connections.
    pub async fn start_process(&self) {
        self.wait_port(false, Duration::from_secs(30), "the old node's AMQP port to close").await;
        self.spawn();
        if let Err(e) = self.wait_booted().await {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    /// Runs `rabbitmqctl -n NODE ARGS` (bounded); panics when it fails.
    /// Useful for `close_all_connections`, `list_queues`,
    /// `set_vm_memory_high_watermark` (to block publishers), …
    pub async fn ctl(&self, args: &[&str]) {
        if let Err(e) = self.try_ctl(args, RABBITMQCTL).await {
            panic!("{e}\n{}", self.log_tail());
        }
    }

    /// `rabbitmqctl -n NODE ARGS` (bounded), returning what it printed on
    /// stdout (e.g. with `--formatter json`), or why it failed. Stdout goes
    /// through a file, like everything [`run`] starts, and is copied to
    /// `commands.log` too.
    pub async fn try_ctl_stdout(&self, args: &[&str]) -> Result<String, String> {
        let what = format!("rabbitmqctl {}", args.join(" "));
        let out_path = self.dir.path().join(format!("{}.out", super::random_name("ctl-")));
        let out = fs::File::create(&out_path).unwrap_or_else(|e| panic!("create {}: {e}", out_path.display()));
        let log = self.dir.path().join("commands.log");
        let r = run_with_stdout(&what, self.ctl_command(args), &log, Some(out), RABBITMQCTL).await;
        let text = fs::read_to_string(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        if let Ok(mut f) = fs::OpenOptions::new().append(true).open(&log) {
            let _ = write!(f, "{text}");
        }
        r.map(|()| text)
    }

    /// Whether the node's process is running (started, and not stopped or exited since).
    pub fn is_running(&self) -> bool {
        self.server_running()
    }

    /// The last lines of the node's log, of its startup output and of the commands run.
    pub fn log_tail(&self) -> String {
        let node_log = self.dir.path().join("log").join(format!("{}.log", self.node));
        let mut s = String::new();
        for (p, n) in
            [(node_log, 40), (self.dir.path().join("startup.log"), 20), (self.dir.path().join("commands.log"), 20)]
        {
            let _ = write!(s, "---- {} ----\n{}\n", p.display(), tail(&p, n));
        }
        s
    }

    /// The environment of both the server and `rabbitmqctl`. HOME is the
    /// instance's own dir, so both read the same `.erlang.cookie` (and not
    /// root's, nor the system node's).
    fn env(&self) -> Vec<(&'static str, String)> {
        let d = self.dir.path();
        let p = |s: &str| d.join(s).display().to_string();
        vec![
            ("HOME", p("home")),
            ("LANG", "C.UTF-8".into()),
            ("LC_ALL", "C.UTF-8".into()),
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", p("mnesia")),
            ("RABBITMQ_LOG_BASE", p("log")),
            ("RABBITMQ_PID_FILE", p("rabbit.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins")),
            ("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", p("advanced.config")),
            // instead of /etc/rabbitmq/rabbitmq-env.conf, which names the system node
            ("RABBITMQ_CONF_ENV_FILE", p("rabbitmq-env.conf")),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("ERL_CRASH_DUMP", p("log/erl_crash.dump")),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
        ]
    }

    /// Creates the dirs, cookie, plugins file and env file.
    fn prepare(&self, tls: Option<&TlsFiles>) {
        let d = self.dir.path();
        for sub in ["home", "log", "mnesia", "tls"] {
            fs::create_dir_all(d.join(sub)).expect("create rabbit dirs");
        }
        let cookie = d.join("home/.erlang.cookie");
        if !cookie.exists() {
            let c = self.cookie.clone().unwrap_or_else(|| (0..32).map(|_| fastrand::uppercase()).collect());
            fs::write(&cookie, c).expect("write cookie");
            fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("chmod cookie");
        }
        // With a CA, client certificates can log in (SASL EXTERNAL, the CN as user name).
        let plugins = if tls.is_some_and(|t| t.ca.is_some()) { "[rabbitmq_auth_mechanism_ssl].\n" } else { "[].\n" };
        fs::write(d.join("enabled_plugins"), plugins).expect("write enabled_plugins");
        fs::write(
            d.join("rabbitmq-env.conf"),
            "# written by tests/support/cluster.rs: nothing (the system file is not read)\n",
        )
        .expect("write env conf");
        if let Some(tls) = tls {
            for (from, name) in
                [(Some(&tls.cert), "cert.pem"), (Some(&tls.key), "key.pem"), (tls.ca.as_ref(), "ca.pem")]
            {
                if let Some(from) = from {
                    fs::copy(from, d.join("tls").join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
                }
            }
        }
    }

    /// Writes `rabbitmq.conf` for the current ports.
    fn write_conf(&self, tls: Option<&TlsFiles>) {
        let d = self.dir.path();
        let mut conf = format!(
            "# written by tests/support/cluster.rs
listeners.tcp.default = 127.0.0.1:{}
log.file.level = info
log.console = false
",
            self.port
        );
        if let (Some(tls), Some(p)) = (tls, self.tls_port) {
            let t = |n: &str| d.join("tls").join(n).display().to_string();
            let _ = write!(
                conf,
                "listeners.ssl.default = 127.0.0.1:{p}
ssl_options.certfile = {}
ssl_options.keyfile = {}
ssl_options.fail_if_no_peer_cert = false
",
                t("cert.pem"),
                t("key.pem")
            );
            if tls.ca.is_none() {
                conf.push_str("ssl_options.verify = verify_none\n");
            }
            if tls.ca.is_some() {
                // Client certificates signed by the CA are checked when offered
                // (not required) and may log in with EXTERNAL as their CN.
                let _ = write!(
                    conf,
                    "ssl_options.cacertfile = {}\nssl_options.verify = verify_peer\nssl_cert_login_from = common_name\n\
                     auth_mechanisms.1 = PLAIN\nauth_mechanisms.2 = AMQPLAIN\nauth_mechanisms.3 = EXTERNAL\n",
                    t("ca.pem")
                );
            }
        }
        fs::write(d.join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
    }

    /// Spawns `rabbitmq-server` (not `-detached`: the script stays our
    /// child and runs the VM as its own child; it stops the VM on SIGTERM).
    fn spawn(&self) {
        let mut guard = self.server.lock().unwrap();
        assert!(guard.is_none(), "RabbitMQ node {} is already running", self.node);
        let _ = fs::remove_file(self.dir.path().join("rabbit.pid"));
        let out =
            log_header(&self.dir.path().join("startup.log"), "rabbitmq-server", &clean_command("rabbitmq-server"));
        let mut c = clean_command(self.bin.join("rabbitmq-server"));
        c.envs(self.env()).current_dir(self.dir.path()).stdout(out.try_clone().expect("dup log")).stderr(out);
        let child = c.spawn().unwrap_or_else(|e| panic!("spawn {}/rabbitmq-server: {e}", self.bin.display()));
        fs::write(self.dir.path().join("wrapper.pid"), child.id().to_string()).expect("write wrapper.pid");
        *guard = Some(child);
    }

    /// Whether our `rabbitmq-server` child is still running (reaps it if not).
    fn server_running(&self) -> bool {
        let mut guard = self.server.lock().unwrap();
        match guard.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                *guard = None;
                false
            }
            None => false,
        }
    }

    /// Waits until the server script has exited, at most `timeout`.
    async fn wait_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.server_running() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Waits until the node has booted: the AMQP port accepts (polled, cheap:
    /// the listener opens at the very end of boot), then `await_startup`
    /// confirms. Fails early if the process exits.
    ///
    /// `await_startup` is retried until the deadline: it fails at once while
    /// the node is not yet registered with epmd, and an accepting port alone
    /// proves little (the kernel completes handshakes on the listening
    /// socket of a VM that is being killed).
    async fn wait_booted(&self) -> Result<(), String> {
        let deadline = Instant::now() + RABBIT_BOOT;
        let mut last_err = String::from("the AMQP port never accepted");
        loop {
            if !self.server_running() {
                return Err(format!("RabbitMQ node {} exited during startup", self.node));
            }
            if port_accepts(self.addr()).await {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(10));
                match self
                    .try_ctl(
                        &["await_startup", "--timeout", &left.as_secs().to_string()],
                        left + Duration::from_secs(15),
                    )
                    .await
                {
                    Ok(()) => return Ok(()),
                    Err(e) => last_err = e,
                }
            }
            if Instant::now() > deadline {
                return Err(format!("RabbitMQ node {} did not boot within {RABBIT_BOOT:?}: {last_err}", self.node));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `rabbitmqctl -n NODE ARGS`, bounded by `timeout`. The CLI is an Erlang
    /// node too; it gets its own distribution port (by default all CLIs on
    /// the machine share 35672–35682).
    async fn try_ctl(&self, args: &[&str], timeout: Duration) -> Result<(), String> {
        let what = format!("rabbitmqctl {}", args.join(" "));
        run(&what, self.ctl_command(args), &self.dir.path().join("commands.log"), timeout).await
    }

    /// The `rabbitmqctl -n NODE ARGS` command, with its own distribution port.
    fn ctl_command(&self, args: &[&str]) -> std::process::Command {
        let cli_port = free_port().to_string();
        let mut c = clean_command(self.bin.join("rabbitmqctl"));
        c.envs(self.env())
            .env("RABBITMQ_CTL_DIST_PORT_MIN", &cli_port)
            .env("RABBITMQ_CTL_DIST_PORT_MAX", &cli_port)
            .current_dir(self.dir.path())
            .args(["-n", &self.node])
            .args(args);
        c
    }

    fn logs_mention(&self, needles: &[&str]) -> bool {
        let d = self.dir.path();
        let text = [d.join("log").join(format!("{}.log", self.node)), d.join("startup.log")]
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .collect::<String>();
        needles.iter().any(|n| text.contains(n))
    }

    /// PIDs of the VM and the server script that are still ours (their
    /// environment names our mnesia dir), for signalling.
    fn own_pids(&self) -> Vec<u32> {
        let mark = format!("RABBITMQ_MNESIA_BASE={}", self.dir.path().join("mnesia").display());
        ["rabbit.pid", "wrapper.pid"]
            .iter()
            .filter_map(|f| fs::read_to_string(self.dir.path().join(f)).ok()?.trim().parse::<u32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/environ"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|v| v == mark.as_bytes())
            })
            .collect()
    }

    /// SIGKILL to the VM and the script; returns once both are gone (the
    /// script, our child, reaped; the VM no longer running, so its sockets
    /// are closed).
    pub async fn kill_process(&self) {
        let pids = self.own_pids();
        for &pid in &pids {
            send_signal(pid, "KILL");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids.iter().any(|&p| pid_running(p)) || self.server_running() {
            if Instant::now() > deadline {
                if let Some(c) = self.server.lock().unwrap().as_mut() {
                    let _ = c.kill();
                }
                assert!(
                    self.wait_exited(Duration::from_secs(10)).await,
                    "RabbitMQ node {} survived SIGKILL",
                    self.node
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops `nodes` by PID, all at once, for an `atexit` handler (no runtime,
/// no CLI): SIGTERM to each VM (a graceful stop), at most `grace` for them
/// to exit, then SIGKILL to whatever is left, at most 10 s more; then their
/// dirs are deleted (a node held in a static is never dropped).
pub(crate) fn halt_blocking(nodes: &[&RabbitNode], grace: Duration) {
    let signal_all = |pids: &[u32], sig: i32| {
        for &pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) with a PID that own_pids checked is one of ours.
                unsafe { libc::kill(pid, sig) };
            }
        }
    };
    let pids: Vec<u32> = nodes.iter().flat_map(|n| n.own_pids()).collect();
    signal_all(&pids, libc::SIGTERM);
    let gone = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            // (the script, our child, counts as gone once it is a zombie)
            if !pids.iter().any(|&p| pid_running(p)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    if !gone(grace) {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| pid_running(p)).collect();
        eprintln!("[cluster] RabbitMQ processes {left:?} still running {grace:?} after SIGTERM; SIGKILL");
        signal_all(&left, libc::SIGKILL);
        if !gone(Duration::from_secs(10)) {
            eprintln!("[cluster] RabbitMQ processes {left:?} survived SIGKILL");
        }
    }
    for n in nodes {
        let _ = fs::remove_dir_all(n.dir());
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        if self.server_running() {
            if let Err(e) = run_blocking(
                "drop: rabbitmqctl stop",
                self.ctl_command(&["stop"]),
                &self.dir.path().join("commands.log"),
                Duration::from_secs(60),
            ) {
                eprintln!("[cluster] stopping RabbitMQ node {}: {e}", self.node);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.server_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // whatever is left (stop failed or timed out, or the VM outlived the script)
        let left = self.own_pids();
        if !left.is_empty() {
            for pid in &left {
                send_signal(*pid, "KILL");
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while left.iter().any(|p| pid_running(*p)) && Instant::now() < deadline {
                if let Some(c) = self.server.lock().unwrap().as_mut() {
                    let _ = c.try_wait();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Some(mut c) = self.server.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // the TempDir removes the dir
    }
}
