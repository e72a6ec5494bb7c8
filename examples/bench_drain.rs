//! Times the relay end to end, for `scripts/bench.sh`: consumes a queue
//! (auto-ack) until `--count` distinct `message_id`s have arrived or
//! `--timeout` seconds have passed, and prints the time from the first to
//! the last new message and, given `--start-unix-ns` (the wall clock when the
//! producer started writing), from that start to the first and to the last.
//!
//! Output: one line of `key=value` pairs starting with `bench_drain`; exit
//! status 0 when all `--count` ids arrived, 3 on timeout (the line is still
//! printed, with `complete=false`).
//!
//! ```text
//! cargo run --release --example bench_drain -- --url amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --queue bench.events --count 50000 --timeout 120 --start-unix-ns "$(date +%s%N)"
//! ```

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use amqprs::channel::{BasicConsumeArguments, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// The (existing, durable) queue to consume.
    #[arg(long, default_value = "bench.events")]
    queue: String,
    /// Stop after this many distinct message_ids.
    #[arg(long)]
    count: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Wall clock (Unix nanoseconds, `date +%s%N`) the measurement starts from.
    #[arg(long)]
    start_unix_ns: Option<u128>,
    /// Print "ready" on stdout once consuming (for scripts).
    #[arg(long)]
    ready_line: bool,
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn secs(ns: u128) -> f64 {
    ns as f64 / 1e9
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let u = url::Url::parse(&args.url)?;
    let vhost = percent_encoding::percent_decode_str(u.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    let open = OpenConnectionArguments::new(
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672),
        if u.username().is_empty() { "guest" } else { u.username() },
        u.password().unwrap_or("guest"),
    )
    .virtual_host(if vhost.is_empty() { "/" } else { &vhost })
    .connection_name("bench_drain")
    .finish();
    let conn =
        tokio::time::timeout_at(deadline, Connection::open(&open)).await.map_err(|_| "connecting timed out")??;
    let ch = conn.open_channel(None).await?;
    // passive: the queue must exist (bench_broker or the script declared it)
    let (_, depth_at_start, _) = ch
        .queue_declare(QueueDeclareArguments::new(&args.queue).passive(true).finish())
        .await?
        .ok_or("queue.declare-ok missing")?;
    let (_tag, mut rx) =
        ch.basic_consume_rx(BasicConsumeArguments::new(&args.queue, "bench_drain").manual_ack(false).finish()).await?;
    if args.ready_line {
        println!("ready");
    }

    let mut seen: HashSet<String> = HashSet::with_capacity(args.count);
    let mut deliveries = 0u64;
    let mut no_id = 0u64;
    let mut first: Option<SystemTime> = None;
    let mut last: Option<SystemTime> = None;
    while seen.len() < args.count {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
        let now = SystemTime::now();
        deliveries += 1;
        first.get_or_insert(now);
        match m.basic_properties.as_ref().and_then(|p| p.message_id()) {
            Some(id) => {
                if seen.insert(id.clone()) {
                    last = Some(now);
                }
            }
            None => no_id += 1,
        }
    }
    let complete = seen.len() >= args.count;
    let distinct = seen.len() as u64;
    let mut line = format!(
        "bench_drain queue={} count={} distinct={distinct} deliveries={deliveries} duplicates={} without_id={no_id} complete={complete} depth_at_start={depth_at_start}",
        args.queue,
        args.count,
        deliveries - distinct - no_id,
    );
    if let (Some(f), Some(l)) = (first, last) {
        let span = secs(unix_ns(l).saturating_sub(unix_ns(f)));
        line += &format!(" first_to_last_s={span:.3}");
        if span > 0.0 {
            line += &format!(" rate_first_to_last={:.0}", distinct as f64 / span);
        }
        if let Some(start) = args.start_unix_ns {
            let to_first = secs(unix_ns(f).saturating_sub(start));
            let to_last = secs(unix_ns(l).saturating_sub(start));
            line += &format!(" start_to_first_s={to_first:.3} start_to_last_s={to_last:.3}");
            if to_last > 0.0 {
                line += &format!(" rate_from_start={:.0}", distinct as f64 / to_last);
            }
        }
        line += &format!(" first_unix_ns={} last_unix_ns={}", unix_ns(f), unix_ns(l));
    }
    println!("{line}");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = ch.close().await;
        let _ = conn.close().await;
    })
    .await;
    if !complete {
        std::process::exit(3);
    }
    Ok(())
}
