//! Times the relay end to end, for `scripts/bench.sh`: consumes a queue
//! (auto-ack) until `--count` distinct `message_id`s have arrived or
//! `--timeout` seconds have passed, and prints the time from the first to
//! the last new message and, given `--start-unix-ns` (the wall clock when the
//! producer started writing), from that start to the first and to the last.
//!
//! With `--latency`, it also takes, for the first delivery of each id, the
//! time from the event's commit to its arrival here: the receive time (wall
//! clock) minus the `x-outbox-commit-time` header the relay sets (PostgreSQL's
//! commit timestamp, RFC 3339 with microseconds; same machine, same clock),
//! and prints its p50, p99 and maximum in milliseconds (`latency_*_ms`).
//!
//! Output: one line of `key=value` pairs starting with `bench_drain` (with
//! the smallest and largest body, `body_min` / `body_max`); exit
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
    /// Commit-to-consume latency from the `x-outbox-commit-time` header.
    #[arg(long)]
    latency: bool,
    /// Print the first delivery's routing key, properties and body on stderr
    /// (to compare the relay's message shape with bench_broker's).
    #[arg(long)]
    print_first: bool,
}

/// The header carrying the event's commit time.
const COMMIT_TIME_HEADER: &str = "x-outbox-commit-time";

/// Unix nanoseconds of an RFC 3339 time (`2026-12-06T10:11:12.123456Z` or
/// with a `+hh:mm` / `-hh:mm` offset), as `time` formats it; None if it is
/// not one.
fn parse_rfc3339_ns(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> { s.get(r)?.parse().ok() };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut nanos = 0u32;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &s[start..i];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
    }
    let offset_s: i32 = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let v = (num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60) as i32;
            if *sign == b'-' {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    let date = time::Date::from_calendar_date(year as i32, time::Month::try_from(month as u8).ok()?, day as u8).ok()?;
    let t = time::Time::from_hms_nano(hour as u8, minute as u8, second as u8, nanos).ok()?;
    let local = time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp_nanos();
    Some(local - i128::from(offset_s) * 1_000_000_000)
}

/// The commit time header of a delivery, in Unix nanoseconds.
fn commit_time_ns(props: Option<&amqprs::BasicProperties>) -> Option<i128> {
    let headers = props?.headers()?;
    let value = headers.as_ref().iter().find(|(k, _)| k.as_ref() == COMMIT_TIME_HEADER).map(|(_, v)| v)?;
    match value {
        amqprs::FieldValue::S(text) => parse_rfc3339_ns(text.as_ref()),
        _ => None,
    }
}

/// The `q` quantile (0..=1) of sorted `v`, nearest rank.
fn quantile(v: &[i64], q: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
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
    // commit-to-consume of each first delivery, nanoseconds (negative if the clocks disagree)
    let mut latencies: Vec<i64> = Vec::with_capacity(if args.latency { args.count } else { 0 });
    let mut without_commit_time = 0u64;
    let (mut body_min, mut body_max) = (usize::MAX, 0usize);
    while seen.len() < args.count {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await else { break };
        let now = SystemTime::now();
        deliveries += 1;
        first.get_or_insert(now);
        let body_len = m.content.as_ref().map_or(0, Vec::len);
        (body_min, body_max) = (body_min.min(body_len), body_max.max(body_len));
        if args.print_first && deliveries == 1 {
            eprintln!(
                "first delivery: routing_key={:?}\n  properties={:?}\n  body ({body_len} bytes)={}",
                m.deliver.as_ref().map(|d| d.routing_key()),
                m.basic_properties,
                String::from_utf8_lossy(m.content.as_deref().unwrap_or_default())
            );
        }
        match m.basic_properties.as_ref().and_then(|p| p.message_id()) {
            Some(id) => {
                if seen.insert(id.clone()) {
                    last = Some(now);
                    if args.latency {
                        match commit_time_ns(m.basic_properties.as_ref()) {
                            Some(c) => latencies.push((unix_ns(now) as i128 - c) as i64),
                            None => without_commit_time += 1,
                        }
                    }
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
    if deliveries > 0 {
        line += &format!(" body_min={body_min} body_max={body_max}");
    }
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
    if args.latency {
        latencies.sort_unstable();
        let ms = |ns: i64| ns as f64 / 1e6;
        line += &format!(" latency_count={} latency_without_commit_time={without_commit_time}", latencies.len());
        if !latencies.is_empty() {
            let mean = latencies.iter().map(|&n| n as f64).sum::<f64>() / latencies.len() as f64;
            line += &format!(
                " latency_min_ms={:.3} latency_p50_ms={:.3} latency_p90_ms={:.3} latency_p99_ms={:.3} latency_max_ms={:.3} latency_mean_ms={:.3}",
                ms(latencies[0]),
                ms(quantile(&latencies, 0.50)),
                ms(quantile(&latencies, 0.90)),
                ms(quantile(&latencies, 0.99)),
                ms(latencies[latencies.len() - 1]),
                mean / 1e6
            );
        }
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
