//! The broker's own ceiling for the relay's publishing pattern, for
//! `scripts/bench.sh`: publishes `--count` persistent messages shaped like
//! the relay's, pipelined with a window of `--window` unconfirmed messages
//! (the relay's `broker.max_in_flight`, default 1000), to a durable topic
//! exchange bound to a durable queue, and prints msgs/s.
//!
//! The shape is what `src/publish/channel.rs` and `src/route/mod.rs` put on
//! a streamed event of the default outbox table: `mandatory`, persistent
//! (delivery mode 2), `message_id` (a UUID's 36 characters, like `{id}`),
//! `type` (`BenchEvent`, like `{event_type}`), `content_type`
//! `application/json`, `timestamp` (seconds), `app_id` `outbox-relay`, and
//! the headers `x-outbox-table`, `x-outbox-lsn` (`X/XXXXXXXX`) and
//! `x-outbox-commit-time` (RFC 3339 in UTC, microseconds as PostgreSQL
//! records them). The body is the JSON `scripts/bench.sh` inserts as the
//! row's payload, jsonb's text form: `--body-size N` pads it to exactly N
//! bytes, as the script's `bench_payload(seq, N)` does; without it, the
//! unpadded ~90-byte body of the old single-size benchmark.
//!
//! Confirms are tracked by delivery tag from the channel callback's
//! `publish_ack` / `publish_nack` (with `multiple`), the way
//! `src/publish/channel.rs` does it, but with amqprs directly: this example
//! depends on no private API of the crate.
//!
//! With `--consume`, a consumer on its own connection drains the queue
//! (auto-ack) while the messages are published, as `bench_drain` does while
//! the relay publishes: RabbitMQ may then confirm a persistent message once it
//! is delivered and acknowledged, without waiting for the disk, so this is the
//! ceiling to compare the relay's end-to-end figure with. The time is then
//! from the first publish until every message is both confirmed and consumed.
//! Without it, every message stays in the queue and is written to disk before
//! its confirm (the broker's ceiling for a backlog).
//!
//! It declares the exchange, the queue and the binding (idempotent) before
//! publishing, so `--count 0` only declares. The queue is a classic one
//! unless `--queue-type quorum` (`scripts/bench-cluster.sh`). `--purge` empties the queue
//! afterwards; `--delete` deletes the queue and the exchange at the end.
//!
//! Output: one line of `key=value` pairs starting with `bench_broker`,
//! e.g. `bench_broker count=50000 window=1000 ... msgs_per_s=21000`.
//!
//! ```text
//! cargo run --release --example bench_broker -- --url amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --exchange bench.events --queue bench.events --count 50000 --window 1000 --purge
//! ```

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicConsumeArguments, BasicPublishArguments, Channel, ConfirmSelectArguments, ExchangeDeclareArguments,
    ExchangeDeleteArguments, QueueBindArguments, QueueDeclareArguments, QueueDeleteArguments, QueuePurgeArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, FieldValue, Nack, Return};
use async_trait::async_trait;
use clap::Parser;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Durable topic exchange to declare and publish to.
    #[arg(long, default_value = "bench.events")]
    exchange: String,
    /// Durable queue to declare and bind to the exchange.
    #[arg(long, default_value = "bench.events")]
    queue: String,
    /// Binding key of the queue.
    #[arg(long, default_value = "#")]
    binding: String,
    /// Routing key of the messages (the relay's `{aggregate_type}.{event_type}`).
    #[arg(long, default_value = "bench.BenchEvent")]
    routing_key: String,
    /// Messages to publish (0: only declare, and purge or delete if asked).
    #[arg(long, default_value_t = 50_000)]
    count: u64,
    /// Unconfirmed publishes allowed at once (the relay's max_in_flight).
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Consume the queue (auto-ack, own connection) while publishing.
    #[arg(long)]
    consume: bool,
    /// Purge the queue after publishing.
    #[arg(long)]
    purge: bool,
    /// Delete the queue and the exchange at the end.
    #[arg(long)]
    delete: bool,
    /// Body size in bytes: the row payload `scripts/bench.sh` inserts for
    /// the same size (a `pad` field fills it up; 0: no padding).
    #[arg(long, default_value_t = 0)]
    body_size: usize,
    /// Message shape: `relay` (the relay's properties, the three
    /// `x-outbox-*` headers and `mandatory`), `no-headers` (the same without
    /// the headers) or `plain` (persistent with a message_id, nothing else,
    /// not mandatory): what each part costs the broker.
    #[arg(long, default_value = "relay", value_parser = ["relay", "no-headers", "plain"])]
    shape: String,
    /// Give up after this many seconds (the whole run).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Type of the queue to declare: `classic` (no arguments, as before) or
    /// `quorum` (`x-queue-type=quorum`, replicated on every node of a
    /// cluster; `scripts/bench-cluster.sh`). RabbitMQ refuses to declare an
    /// existing queue with another type.
    #[arg(long, default_value = "classic", value_parser = ["classic", "quorum"])]
    queue_type: String,
}

/// What the broker said on the publishing channel.
#[derive(Debug)]
enum Event {
    Ack { tag: u64, multiple: bool },
    Nack { tag: u64, multiple: bool },
    Return,
    Closed(String),
}

struct Callback {
    tx: mpsc::UnboundedSender<Event>,
}

#[async_trait]
impl ChannelCallback for Callback {
    async fn close(&mut self, _c: &Channel, close: CloseChannel) -> Result<(), amqprs::error::Error> {
        let _ = self.tx.send(Event::Closed(format!("{} {}", close.reply_code(), close.reply_text())));
        Ok(())
    }
    async fn cancel(&mut self, _c: &Channel, _cancel: Cancel) -> Result<(), amqprs::error::Error> {
        Ok(())
    }
    async fn flow(&mut self, _c: &Channel, _active: bool) -> Result<bool, amqprs::error::Error> {
        Ok(true)
    }
    async fn publish_ack(&mut self, _c: &Channel, ack: Ack) {
        let _ = self.tx.send(Event::Ack { tag: ack.delivery_tag(), multiple: ack.mutiple() });
    }
    async fn publish_nack(&mut self, _c: &Channel, nack: Nack) {
        let _ = self.tx.send(Event::Nack { tag: nack.delivery_tag(), multiple: nack.multiple() });
    }
    async fn publish_return(&mut self, _c: &Channel, _ret: Return, _props: BasicProperties, _content: Vec<u8>) {
        let _ = self.tx.send(Event::Return);
    }
}

/// Unconfirmed delivery tags and the tallies of the broker's verdicts.
#[derive(Default)]
struct Confirms {
    outstanding: BTreeSet<u64>,
    acked: u64,
    nacked: u64,
    returned: u64,
    ack_frames: u64,
}

impl Confirms {
    /// Removes `tag` (and every earlier tag when `multiple`); how many it removed.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if multiple {
            let rest = self.outstanding.split_off(&(tag + 1));
            let n = self.outstanding.len() as u64;
            self.outstanding = rest;
            n
        } else {
            u64::from(self.outstanding.remove(&tag))
        }
    }

    fn on(&mut self, ev: Event) -> Result<(), String> {
        match ev {
            Event::Ack { tag, multiple } => {
                self.ack_frames += 1;
                self.acked += self.settle(tag, multiple);
            }
            Event::Nack { tag, multiple } => self.nacked += self.settle(tag, multiple),
            Event::Return => self.returned += 1,
            Event::Closed(why) => return Err(format!("the broker closed the publishing channel: {why}")),
        }
        Ok(())
    }

    fn settled(&self) -> u64 {
        self.acked + self.nacked
    }
}

/// The body the relay sends for bench row `seq` of `size` bytes: jsonb's
/// text form of the object `bench_payload(seq, size)` in `scripts/bench.sh`
/// builds (keys by length, then bytewise; `pad` grows until the text is
/// `size` bytes, none when the rest is already that long).
fn body(seq: u64, size: usize) -> Vec<u8> {
    let text = |pad: usize| {
        format!(
            r#"{{"pad": "{}", "seq": {seq}, "note": "benchmark event", "account": "acct-{}", "amount_cents": {}}}"#,
            "x".repeat(pad),
            seq % 100,
            seq * 7 % 10_000
        )
    };
    if size == 0 {
        // the old benchmark's body, without the pad field
        return format!(
            r#"{{"seq": {seq}, "note": "benchmark event", "account": "acct-{}", "amount_cents": {}}}"#,
            seq % 100,
            seq * 7 % 10_000
        )
        .into_bytes();
    }
    text(size.saturating_sub(text(0).len())).into_bytes()
}

fn properties(seq: u64, now_secs: u64, commit_time: &str, shape: &str) -> BasicProperties {
    // a UUID-sized message_id, like the relay's `{id}`
    let id = format!("00000000-0000-4000-8000-{seq:012x}");
    if shape == "plain" {
        return BasicProperties::default().with_message_id(&id).with_persistence(true).finish();
    }
    let mut headers = FieldTable::new();
    let mut put = |k: &str, v: String| {
        if let Ok(name) = k.to_owned().try_into() {
            headers.insert(name, FieldValue::from(v.as_str()));
        }
    };
    put("x-outbox-table", "public.outbox".into());
    // the relay's `Lsn` display: `X/X`, upper-case hex, here 8 digits after the slash
    put("x-outbox-lsn", format!("0/{:08X}", 0x1000_0000 + seq * 1300));
    put("x-outbox-commit-time", commit_time.to_owned());
    if shape == "no-headers" {
        headers = FieldTable::new();
    }
    BasicProperties::default()
        .with_message_id(&id)
        .with_message_type("BenchEvent")
        .with_content_type("application/json")
        .with_timestamp(now_secs)
        .with_persistence(true)
        .with_app_id("outbox-relay")
        .with_headers(headers)
        .finish()
}

fn open_args(url: &str, name: &str) -> Result<OpenConnectionArguments, Box<dyn std::error::Error>> {
    let u = url::Url::parse(url)?;
    let vhost = percent_encoding::percent_decode_str(u.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    Ok(OpenConnectionArguments::new(
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672),
        if u.username().is_empty() { "guest" } else { u.username() },
        u.password().unwrap_or("guest"),
    )
    .virtual_host(if vhost.is_empty() { "/" } else { &vhost })
    .connection_name(name)
    .finish())
}

/// A consumer on its own connection: counts deliveries; the receiver sees
/// the count every 1000 messages, and the instant the last expected one came.
async fn spawn_consumer(
    args: &Args,
    deadline: tokio::time::Instant,
) -> Result<(Connection, tokio::sync::watch::Receiver<(u64, Option<Instant>)>), Box<dyn std::error::Error>> {
    let conn = tokio::time::timeout_at(deadline, Connection::open(&open_args(&args.url, "bench_broker consumer")?))
        .await
        .map_err(|_| "connecting the consumer timed out")??;
    let ch = conn.open_channel(None).await?;
    let (_tag, mut rx) =
        ch.basic_consume_rx(BasicConsumeArguments::new(&args.queue, "bench_broker").manual_ack(false).finish()).await?;
    let (tx, watch) = tokio::sync::watch::channel((0u64, None));
    let count = args.count;
    tokio::spawn(async move {
        let _ch = ch; // keep the channel open while consuming
        let (mut n, mut next_report) = (0u64, 1000u64);
        while let Ok(Some(_m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            n += 1;
            if n >= count {
                let _ = tx.send((n, Some(Instant::now())));
            } else if n >= next_report {
                next_report += 1000;
                let _ = tx.send((n, None));
            }
        }
    });
    Ok((conn, watch))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.window == 0 {
        return Err("--window must be at least 1".into());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let conn = tokio::time::timeout_at(deadline, Connection::open(&open_args(&args.url, "bench_broker")?))
        .await
        .map_err(|_| "connecting timed out")??;

    // Declarations on their own channel.
    let admin = conn.open_channel(None).await?;
    admin.exchange_declare(ExchangeDeclareArguments::new(&args.exchange, "topic").durable(true).finish()).await?;
    let mut declare = QueueDeclareArguments::durable_client_named(&args.queue);
    if args.queue_type != "classic" {
        let mut queue_args = FieldTable::new();
        queue_args.insert("x-queue-type".try_into()?, FieldValue::from(args.queue_type.as_str()));
        declare.arguments(queue_args);
    }
    let (_, depth_before, _) = admin.queue_declare(declare).await?.ok_or("queue.declare-ok missing")?;
    admin.queue_bind(QueueBindArguments::new(&args.queue, &args.exchange, &args.binding)).await?;

    let mut consumer = None;
    if args.count > 0 && args.consume {
        consumer = Some(spawn_consumer(&args, deadline).await?);
    }
    if args.count > 0 {
        let ch = conn.open_channel(None).await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        ch.register_callback(Callback { tx }).await?;
        ch.confirm_select(ConfirmSelectArguments::new(false)).await?;

        let now_secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        // PostgreSQL's commit time has microseconds; the relay prints what it has
        let now = time::OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(now.nanosecond() / 1000 * 1000)?;
        let commit_time = now.format(&time::format_description::well_known::Rfc3339)?;
        let body_bytes = body(args.count / 2, args.body_size).len();
        let publish_args =
            BasicPublishArguments::new(&args.exchange, &args.routing_key).mandatory(args.shape != "plain").finish();
        let mut c = Confirms::default();
        let mut next_tag = 1u64; // confirm mode numbers from 1
        let mut max_in_flight = 0usize;
        let start = Instant::now();
        while c.settled() < args.count {
            // Take whatever the broker already said, then fill the window.
            while let Ok(ev) = rx.try_recv() {
                c.on(ev)?;
            }
            while next_tag <= args.count && c.outstanding.len() < args.window {
                let seq = next_tag;
                let publish = ch.basic_publish(
                    properties(seq, now_secs, &commit_time, &args.shape),
                    body(seq, args.body_size),
                    publish_args.clone(),
                );
                tokio::time::timeout_at(deadline, publish).await.map_err(|_| "publishing timed out (--timeout)")??;
                c.outstanding.insert(next_tag);
                next_tag += 1;
                max_in_flight = max_in_flight.max(c.outstanding.len());
            }
            if c.settled() >= args.count {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ev)) => c.on(ev)?,
                Ok(None) => return Err("the channel's callback went away".into()),
                Err(_) => {
                    return Err(format!(
                        "timed out after {}s (--timeout) with {} of {} confirmed, {} unconfirmed",
                        args.timeout,
                        c.settled(),
                        args.count,
                        c.outstanding.len()
                    )
                    .into())
                }
            }
        }
        let confirmed_at = Instant::now();
        let mut consumed = String::new();
        let mut done_at = confirmed_at;
        if let Some((cconn, mut watch)) = consumer.take() {
            // all confirmed; now until the consumer has them all
            let got =
                tokio::time::timeout_at(deadline, watch.wait_for(|(_, at)| at.is_some())).await.map(|r| r.map(|v| *v));
            let (n, at) = match got {
                Ok(Ok(v)) => v,
                _ => *watch.borrow(),
            };
            let Some(at) = at else {
                return Err(format!("timed out (--timeout) with {n} of {} messages consumed", args.count).into());
            };
            done_at = done_at.max(at);
            consumed = format!(" consumed={n} consumed_s={:.3}", (at - start).as_secs_f64());
            let _ = tokio::time::timeout(Duration::from_secs(2), cconn.close()).await;
        }
        let elapsed = (done_at - start).as_secs_f64();
        println!(
            "bench_broker count={} window={} body_bytes={} consumer={} elapsed_s={:.3} msgs_per_s={:.0} confirmed_s={:.3}{consumed} acked={} nacked={} returned={} ack_frames={} max_in_flight={} queue_depth_before={}",
            args.count,
            args.window,
            body_bytes,
            args.consume,
            elapsed,
            args.count as f64 / elapsed,
            (confirmed_at - start).as_secs_f64(),
            c.acked,
            c.nacked,
            c.returned,
            c.ack_frames,
            max_in_flight,
            depth_before
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), ch.close()).await;
        if c.nacked > 0 || c.returned > 0 {
            eprintln!(
                "bench_broker: warning: {} nacked, {} returned (is the queue bound with {:?}?)",
                c.nacked, c.returned, args.binding
            );
        }
    }

    if args.purge {
        let n = tokio::time::timeout_at(deadline, admin.queue_purge(QueuePurgeArguments::new(&args.queue)))
            .await
            .map_err(|_| "purging timed out")??
            .unwrap_or(0);
        println!("bench_broker purged={n} queue={}", args.queue);
    }
    if args.delete {
        tokio::time::timeout_at(deadline, admin.queue_delete(QueueDeleteArguments::new(&args.queue)))
            .await
            .map_err(|_| "queue.delete timed out")??;
        tokio::time::timeout_at(deadline, admin.exchange_delete(ExchangeDeleteArguments::new(&args.exchange)))
            .await
            .map_err(|_| "exchange.delete timed out")??;
        println!("bench_broker deleted queue={} exchange={}", args.queue, args.exchange);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = admin.close().await;
        let _ = conn.close().await;
    })
    .await;
    Ok(())
}
