//! A demo consumer: declares a topic exchange and a private queue bound to
//! it, prints every message the relay publishes, deduplicating by
//! `message_id` the way a real consumer must (at-least-once delivery plus
//! dedup = exactly-once effects), and exits after `--count` distinct
//! messages or `--timeout` seconds.
//!
//! ```text
//! cargo run --example consume -- --url amqp://guest:guest@127.0.0.1:5672/%2f \
//!     --exchange wallet.events --binding '#' --count 5
//! ```

use std::collections::HashSet;
use std::time::Duration;

use amqprs::channel::{BasicConsumeArguments, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Topic exchange to declare and bind to.
    #[arg(long, default_value = "wallet.events")]
    exchange: String,
    /// Binding key.
    #[arg(long, default_value = "#")]
    binding: String,
    /// Exit after this many distinct messages (0 = never).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Exit after this many seconds (0 = never).
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Print "ready" on stdout once the queue is bound (for scripts).
    #[arg(long)]
    ready_line: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let u = url::Url::parse(&args.url)?;
    let vhost = percent_encoding::percent_decode_str(u.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    let conn = Connection::open(
        &OpenConnectionArguments::new(
            u.host_str().unwrap_or("127.0.0.1"),
            u.port().unwrap_or(5672),
            if u.username().is_empty() { "guest" } else { u.username() },
            u.password().unwrap_or("guest"),
        )
        .virtual_host(if vhost.is_empty() { "/" } else { &vhost })
        .finish(),
    )
    .await?;
    let ch = conn.open_channel(None).await?;
    ch.exchange_declare(ExchangeDeclareArguments::new(&args.exchange, "topic").durable(true).finish()).await?;
    let (queue, _, _) =
        ch.queue_declare(QueueDeclareArguments::default().exclusive(true).finish()).await?.expect("queue");
    ch.queue_bind(QueueBindArguments::new(&queue, &args.exchange, &args.binding)).await?;
    let (_tag, mut rx) = ch.basic_consume_rx(BasicConsumeArguments::new(&queue, "").manual_ack(false).finish()).await?;
    if args.ready_line {
        println!("ready");
    }
    let deadline =
        if args.timeout == 0 { None } else { Some(tokio::time::Instant::now() + Duration::from_secs(args.timeout)) };
    let mut seen = HashSet::new();
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
                None => rx.recv().await,
            }
        };
        let Some(m) = next.await else { break };
        let props = m.basic_properties.unwrap_or_default();
        let id = props.message_id().cloned().unwrap_or_default();
        let body = String::from_utf8_lossy(m.content.as_deref().unwrap_or_default()).into_owned();
        let key = m.deliver.map(|d| d.routing_key().clone()).unwrap_or_default();
        if seen.insert(id.clone()) {
            println!(
                "received {} id={id} key={key} body={body}",
                props.message_type().map(String::as_str).unwrap_or("-")
            );
        } else {
            println!("duplicate id={id} ignored (already processed)");
        }
        if args.count > 0 && seen.len() >= args.count {
            break;
        }
    }
    println!("{} distinct message(s) received", seen.len());
    let _ = conn.close().await;
    Ok(())
}
