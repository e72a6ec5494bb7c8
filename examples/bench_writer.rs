//! A steady writer for `scripts/bench.sh`: `--writers` connections insert
//! into the default outbox table together at `--rate` events/s in total, for
//! `--seconds`, one event per transaction (autocommit), the way the services
//! the relay is for write (the wallet commits one event per transaction).
//!
//! Each writer is paced on its own tokio interval of `writers / rate`
//! seconds, the writers offset from each other by a fraction of that
//! period so that the inserts are spread evenly; a late tick is made up at
//! once (`MissedTickBehavior::Burst`), so each writer commits exactly its
//! share and the total is `rate * seconds`. Every row's payload is
//! `bench_payload(seq, --size)`, the function `scripts/bench.sh` creates in
//! the database (a JSON object whose text is `--size` bytes).
//!
//! The session sets `synchronous_commit` (default `on`, what a real service
//! has): a commit returns once its WAL is flushed, and a logical walsender
//! sends only flushed WAL, so with `off` an event would wait for the WAL
//! writer (up to `wal_writer_delay`) before the relay could see it.
//!
//! Output on stdout: `started unix_ns=N` when the first insert is due (all
//! connections open and statements prepared), then one line of `key=value`
//! pairs starting with `bench_writer` (committed, elapsed, achieved rate,
//! the insert round trip's p50/p99/max and how late the latest insert was
//! against its schedule). Exit status 1 on an error or timeout.
//!
//! ```text
//! cargo run --release --example bench_writer -- --url postgres://relay:relay@127.0.0.1:54329/bench \
//!     --writers 4 --rate 1000 --seconds 20 --size 1024
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_postgres::NoTls;

#[derive(Parser, Debug)]
struct Args {
    /// PostgreSQL URL of the bench database.
    #[arg(long)]
    url: String,
    /// Connections writing at once.
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Events per second, all writers together.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long to write.
    #[arg(long, default_value_t = 20)]
    seconds: u32,
    /// Payload size in bytes (the JSON text of `bench_payload`).
    #[arg(long, default_value_t = 1024)]
    size: i32,
    /// `synchronous_commit` of the writers' sessions.
    #[arg(long, default_value = "on")]
    synchronous_commit: String,
    /// Give up after this many seconds (connecting and writing).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

const INSERT: &str = "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                      VALUES ('bench', $1, 'BenchEvent', bench_payload($2, $3))";

/// What one writer did.
#[derive(Default)]
struct Tally {
    committed: u64,
    /// Round trip of each insert (its commit included), nanoseconds.
    rtt_ns: Vec<u64>,
    /// Largest delay of an insert's start behind its tick, nanoseconds.
    max_late_ns: u64,
}

fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.writers == 0 || args.rate == 0 {
        return Err("--writers and --rate must be at least 1".into());
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let total = u64::from(args.rate) * u64::from(args.seconds);
    let period = Duration::from_secs_f64(f64::from(args.writers) / f64::from(args.rate));

    let mut clients = Vec::new();
    for w in 0..args.writers {
        let (client, connection) = tokio::time::timeout_at(deadline, tokio_postgres::connect(&args.url, NoTls))
            .await
            .map_err(|_| "connecting timed out")??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("bench_writer: connection {w}: {e}");
            }
        });
        client.batch_execute(&format!("SET synchronous_commit = {}", args.synchronous_commit)).await?;
        let stmt = client.prepare(INSERT).await?;
        clients.push((client, stmt));
    }

    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for (w, (client, stmt)) in clients.into_iter().enumerate() {
        let w = w as u64;
        let writers = u64::from(args.writers);
        // this writer's share: rows w, w + writers, w + 2 * writers, ... below total
        let share = total / writers + u64::from(w < total % writers);
        let offset = period.mul_f64(w as f64 / writers as f64);
        let size = args.size;
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally { rtt_ns: Vec::with_capacity(share as usize), ..Tally::default() };
            let mut tick = tokio::time::interval_at(start + offset, period);
            tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
            for k in 0..share {
                let due = tick.tick().await;
                let began = Instant::now();
                tally.max_late_ns = tally.max_late_ns.max((began - due).as_nanos() as u64);
                let seq = (w + k * writers + 1) as i64;
                let account = format!("acct-{}", seq % 100);
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&account, &seq, &size];
                match tokio::time::timeout_at(deadline, client.execute(&stmt, &params)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("writer {w}: insert {k}: {e}")),
                    Err(_) => return Err(format!("writer {w}: timed out (--timeout) after {k} of {share} inserts")),
                }
                tally.rtt_ns.push(began.elapsed().as_nanos() as u64);
                tally.committed += 1;
            }
            Ok(tally)
        }));
    }
    tokio::time::sleep_until(start).await;
    println!("started unix_ns={}", unix_ns());
    let t0 = Instant::now();

    let mut all = Tally::default();
    let mut failure = None;
    for t in tasks {
        match t.await? {
            Ok(tally) => {
                all.committed += tally.committed;
                all.rtt_ns.extend(tally.rtt_ns);
                all.max_late_ns = all.max_late_ns.max(tally.max_late_ns);
            }
            Err(e) => failure = Some(e),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    all.rtt_ns.sort_unstable();
    println!(
        "bench_writer writers={} rate={} seconds={} size={} synchronous_commit={} expected={total} committed={} elapsed_s={elapsed:.3} achieved_rate={:.0} insert_p50_ms={:.3} insert_p99_ms={:.3} insert_max_ms={:.3} max_late_ms={:.3} end_unix_ns={}",
        args.writers,
        args.rate,
        args.seconds,
        args.size,
        args.synchronous_commit,
        all.committed,
        all.committed as f64 / elapsed.max(1e-9),
        quantile_ms(&all.rtt_ns, 0.50),
        quantile_ms(&all.rtt_ns, 0.99),
        quantile_ms(&all.rtt_ns, 1.0),
        all.max_late_ns as f64 / 1e6,
        unix_ns()
    );
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
