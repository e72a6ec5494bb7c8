//! Slot loss and failover on private PostgreSQL clusters (`support::cluster`):
//! a physical hot standby of a cluster that can be promoted, and a cluster
//! whose inactive slots lose their WAL quickly.
//!
//! A standby is a [`PgCluster`] like any other: its own instance dir
//! (`outbox-t-pg-*`, so the stale sweep covers it), its own loopback port,
//! the same superuser and password as its primary, stopped and deleted on
//! drop. PostgreSQL 15 neither copies logical slots into a base backup nor
//! replicates them to a standby: after a promotion the relay's slot is gone.

use std::fs;
use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::cluster::{chown_postgres, run, PgCluster, PgOptions};
use super::{lsn, wait_until_at, wal_insert_lsn};

/// How long `pg_basebackup` may take.
const BASEBACKUP: Duration = Duration::from_secs(120);
/// How long a standby may take to replay up to its primary's position.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long a promoted standby may take to leave recovery after `pg_ctl promote -w`.
const LEAVE_RECOVERY: Duration = Duration::from_secs(30);
/// How long [`PgCluster::generate_wal`] may take.
const GENERATE_WAL: Duration = Duration::from_secs(30);
/// WAL page size (`wal_block_size`, PostgreSQL's default).
const WAL_PAGE: u64 = 8192;
/// The longest WAL page header (the first page of a segment).
const WAL_PAGE_HEADER_MAX: u64 = 40;

impl PgOptions {
    /// `max_slot_wal_keep_size = size` (e.g. `"1MB"`), with `min_wal_size`
    /// and `max_wal_size` at their minimum (two 16 MB segments), so that an
    /// inactive slot behind by more than `size` is invalidated (its
    /// `wal_status` becomes `lost`) at the next checkpoint; see
    /// [`PgCluster::generate_wal`].
    pub fn slot_wal_limit(mut self, size: &str) -> PgOptions {
        self.extra_conf.extend([
            format!("max_slot_wal_keep_size = '{size}'"),
            "min_wal_size = '32MB'".to_owned(),
            "max_wal_size = '32MB'".to_owned(),
        ]);
        self
    }
}

impl PgCluster {
    /// A physical standby of this cluster: `pg_basebackup -R -X stream`
    /// over TCP (127.0.0.1, the superuser and its password; so not for
    /// `PgAuth::Cert` clusters) into a new instance dir, started on its own
    /// port as a hot standby streaming from this cluster. Returns once it
    /// accepts (read-only) connections; it has replayed at least up to the
    /// end of the base backup, see [`wait_caught_up`](Self::wait_caught_up)
    /// for later writes.
    ///
    /// # Panics
    ///
    /// When the base backup or the start fails or times out (120 s, 60 s),
    /// with the tails of both clusters' logs.
    #[track_caller]
    pub fn standby(&self) -> impl Future<Output = PgCluster> + '_ {
        let caller = Location::caller();
        async move {
            let t0 = Instant::now();
            let mut standby = PgCluster::new_instance();
            let conninfo = format!("host=127.0.0.1 port={} user=postgres password=postgres", self.port());
            let mut c = self.tool("pg_basebackup");
            c.arg("-D").arg(standby.data());
            c.args(["-d", &conninfo, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync", "--no-password"]);
            c.current_dir(standby.dir());
            if let Err(e) = run("pg_basebackup", c, &standby.commands_log(), BASEBACKUP).await {
                panic!("{e} (at {caller})\n{}\n---- primary ----\n{}", standby.log_tail(), self.log_tail());
            }
            standby.retarget_copied_conf(self);
            standby.start_on_a_free_port().await;
            println!(
                "[cluster] PostgreSQL standby on {} of {} started in {:?}",
                standby.addr(),
                self.addr(),
                t0.elapsed()
            );
            standby
        }
    }

    /// The base backup copied the primary's `outbox-test.conf`, which names
    /// the primary's dir (unix socket dir, TLS files): name this one's.
    fn retarget_copied_conf(&self, primary: &PgCluster) {
        let conf = self.data().join("outbox-test.conf");
        let text = fs::read_to_string(&conf).unwrap_or_else(|e| panic!("read {}: {e}", conf.display()));
        let mut text = text.replace(&primary.dir().display().to_string(), &self.dir().display().to_string());
        text.push_str("hot_standby = on\n");
        fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        chown_postgres(&conf, false);
    }

    /// Waits until this standby has replayed everything inserted into
    /// `primary`'s WAL so far (its `pg_current_wal_insert_lsn()`, read once
    /// at the call), so that every transaction committed on the primary
    /// before the call is visible here. Polls `pg_last_wal_replay_lsn()`
    /// every 50 ms for at most 30 s.
    ///
    /// # Panics
    ///
    /// On timeout, naming the caller's line, the target and the last position replayed.
    #[track_caller]
    pub fn wait_caught_up<'a>(&'a self, primary: &'a PgCluster) -> impl Future<Output = ()> + 'a {
        let caller = Location::caller();
        async move {
            let target = wal_insert_lsn(&primary.local_client("postgres").await).await;
            let client = self.local_client("postgres").await;
            let start = Instant::now();
            loop {
                let replayed: Option<String> = client
                    .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
                    .await
                    .unwrap_or_else(|e| panic!("read the replay position: {e} (at {caller})"))
                    .get(0);
                let replayed = replayed.map_or(0, |s| lsn(&s));
                if replay_reached(replayed, target) {
                    return;
                }
                if start.elapsed() > CATCH_UP {
                    panic!(
                        "timed out after {CATCH_UP:?} waiting for the standby on {} to replay up to {} \
                         (replayed: {}) (at {caller})\n{}\n---- primary ----\n{}",
                        self.addr(),
                        outbox_relay::event::Lsn(target),
                        outbox_relay::event::Lsn(replayed),
                        self.log_tail(),
                        primary.log_tail()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Promotes this standby (`pg_ctl promote -w`, at most 60 s), then
    /// waits until `pg_is_in_recovery()` is false (polled, at most 30 s):
    /// it then accepts writes.
    ///
    /// # Panics
    ///
    /// When `pg_ctl` fails or either wait times out, naming the caller's line.
    #[track_caller]
    pub fn promote(&self) -> impl Future<Output = ()> + '_ {
        let caller = Location::caller();
        async move {
            let t0 = Instant::now();
            if let Err(e) = self.pg_ctl("pg_ctl promote", &["promote"]).await {
                panic!("{e} (at {caller})\n{}", self.log_tail());
            }
            let client = self.local_client("postgres").await;
            wait_until_at(caller, LEAVE_RECOVERY, "the promoted standby to leave recovery", || {
                let client = &client;
                async move { !in_recovery(client).await }
            })
            .await;
            println!("[cluster] PostgreSQL on {} promoted in {:?}", self.addr(), t0.elapsed());
        }
    }

    /// `pg_is_in_recovery()`: true on a standby, false on a primary.
    pub async fn in_recovery(&self) -> bool {
        in_recovery(&self.local_client("postgres").await).await
    }

    /// Makes the server go through at least `megabytes` MB of WAL and
    /// recycle it: rounds of an insert of random text into a table `walfill`
    /// (created if missing, in `client`'s database), `pg_switch_wal()` (which
    /// moves to the next 16 MB segment) and `CHECKPOINT` (which removes old
    /// segments and invalidates slots past `max_slot_wal_keep_size`), until
    /// the WAL position has moved by `megabytes`; at least one round, at most
    /// 30 s. With [`PgOptions::slot_wal_limit`], an *inactive* slot (nobody
    /// streaming from it) is `lost` afterwards.
    ///
    /// # Panics
    ///
    /// When a statement fails or on timeout, naming the caller's line.
    #[track_caller]
    pub fn generate_wal<'a>(&'a self, client: &'a Client, megabytes: u64) -> impl Future<Output = ()> + 'a {
        let caller = Location::caller();
        async move {
            let exec = |sql: &'static str| async move {
                client
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("generate_wal: {sql}: {e} (at {caller})\n{}", self.log_tail()))
            };
            let t0 = Instant::now();
            exec("CREATE TABLE IF NOT EXISTS walfill (n int, filler text)").await;
            let from = wal_insert_lsn(client).await;
            let want = megabytes << 20;
            loop {
                exec("INSERT INTO walfill SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 1000) g")
                    .await;
                exec("SELECT pg_switch_wal()").await;
                exec("CHECKPOINT").await;
                let moved = wal_insert_lsn(client).await.saturating_sub(from);
                if moved >= want {
                    println!(
                        "[cluster] PostgreSQL on {}: {} MB of WAL generated in {:?}",
                        self.addr(),
                        moved >> 20,
                        t0.elapsed()
                    );
                    return;
                }
                if t0.elapsed() > GENERATE_WAL {
                    panic!(
                        "generate_wal: only {} of {megabytes} MB of WAL within {GENERATE_WAL:?} (at {caller})",
                        moved >> 20
                    );
                }
            }
        }
    }
}

/// Whether a standby that replayed up to `replayed` (the end of its last
/// record) has everything up to the primary's insert position `target`.
/// When the primary's last record ended exactly on a page boundary, its
/// insert position lies past the next page's header, where no record ends:
/// the standby is then caught up at the boundary.
fn replay_reached(replayed: u64, target: u64) -> bool {
    replayed >= target || (replayed.is_multiple_of(WAL_PAGE) && target - replayed <= WAL_PAGE_HEADER_MAX)
}

/// `pg_is_in_recovery()` on `client`'s server.
async fn in_recovery(client: &Client) -> bool {
    client.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("read pg_is_in_recovery()").get(0)
}

/// `wal_status` of `slot` in `pg_replication_slots` (`reserved`, `extended`,
/// `unreserved` or `lost`), if the slot exists.
pub async fn slot_wal_status(client: &Client, slot: &str) -> Option<String> {
    client
        .query_opt("SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .await
        .expect("read pg_replication_slots")
        .and_then(|r| r.get(0))
}

#[test]
fn a_standby_at_a_page_boundary_has_everything_before_the_next_page_header() {
    let page = 5 * WAL_PAGE;
    assert!(replay_reached(page + 24, page + 24));
    assert!(replay_reached(page, page + 24), "short page header");
    assert!(replay_reached(page, page + 40), "long page header (segment start)");
    assert!(!replay_reached(page, page + 48), "a record after the header");
    assert!(!replay_reached(page - 8, page + 24), "a record ending at the boundary not replayed yet");
}
