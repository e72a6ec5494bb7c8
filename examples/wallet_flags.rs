//! The demo wallet's fraud listener: consumes the anti-fraud service's
//! `FraudDetected` events and flags the account, after which the wallet
//! database refuses the account's transactions (a trigger on
//! `wallet_transactions`, see scripts/demo.sh).
//!
//! For each message, in ONE PostgreSQL transaction on the wallet database:
//! `INSERT INTO processed_events(message_id) ... ON CONFLICT DO NOTHING`
//! (the dedup record; no row means a duplicate delivery, ignored), then
//! `UPDATE accounts SET flagged = true WHERE name = <account>`; commit; THEN
//! acknowledge the message (manual ack). Effects happen once however often
//! the event is delivered.
//!
//! The queue `wallet.fraud` is durable and bound to the topic exchange
//! `antifraud.events` with `account.FraudDetected`; both are declared
//! (idempotently) at start, since the relay never declares anything.
//!
//! ```text
//! PG_URL=postgres://relay:...@127.0.0.1:54329/demo AMQP_URL=amqp://guest:...@127.0.0.1:56729/%2f \
//!     cargo run --example wallet_flags -- --ready-line
//! ```
//!
//! Exits after `--count` messages (duplicates included), after `--timeout`
//! seconds, or on SIGINT / SIGTERM (after finishing the message in hand).

use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicQosArguments, BasicRejectArguments, ExchangeDeclareArguments,
    QueueBindArguments, QueueDeclareArguments, QueuePurgeArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use clap::Parser;
use serde_json::Value;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
struct Args {
    /// The wallet database (accounts and processed_events live there).
    #[arg(long, env = "PG_URL", hide_env_values = true)]
    pg_url: String,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The anti-fraud service's exchange (topic), declared if missing.
    #[arg(long, default_value = "antifraud.events")]
    exchange: String,
    /// The durable queue this listener consumes.
    #[arg(long, default_value = "wallet.fraud")]
    queue: String,
    /// The binding key.
    #[arg(long, default_value = "account.FraudDetected")]
    binding: String,
    /// Exit after this many messages, duplicates included (0 = never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Exit after this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Discard what the queue holds before consuming (demo only: a clean slate).
    #[arg(long)]
    purge: bool,
    /// Print "ready" once the queue is bound and consumed (for scripts).
    #[arg(long)]
    ready_line: bool,
}

async fn amqp_connect(url: &str) -> Result<Connection, BoxError> {
    let u = url::Url::parse(url)?;
    let vhost = percent_encoding::percent_decode_str(u.path().trim_start_matches('/')).decode_utf8_lossy().into_owned();
    let user = percent_encoding::percent_decode_str(u.username()).decode_utf8_lossy().into_owned();
    let pass = percent_encoding::percent_decode_str(u.password().unwrap_or("guest")).decode_utf8_lossy().into_owned();
    let args = OpenConnectionArguments::new(
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672),
        if user.is_empty() { "guest" } else { &user },
        &pass,
    )
    .virtual_host(if vhost.is_empty() { "/" } else { &vhost })
    .finish();
    Ok(Connection::open(&args).await?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let (mut db, connection) = tokio_postgres::connect(&args.pg_url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("wallet_flags: PostgreSQL connection lost: {e}");
        }
    });

    let conn = amqp_connect(&args.amqp_url).await?;
    let ch = conn.open_channel(None).await?;
    ch.exchange_declare(ExchangeDeclareArguments::new(&args.exchange, "topic").durable(true).finish()).await?;
    ch.queue_declare(QueueDeclareArguments::durable_client_named(&args.queue)).await?;
    ch.queue_bind(QueueBindArguments::new(&args.queue, &args.exchange, &args.binding)).await?;
    if args.purge {
        let n = ch.queue_purge(QueuePurgeArguments::new(&args.queue)).await?.unwrap_or(0);
        println!("purged {n} message(s) left in {}", args.queue);
    }
    ch.basic_qos(BasicQosArguments::new(0, 16, false)).await?;
    let (_tag, mut rx) =
        ch.basic_consume_rx(BasicConsumeArguments::new(&args.queue, "wallet_flags").manual_ack(true).finish()).await?;
    println!("consuming {} ({} -> {})", args.queue, args.exchange, args.binding);
    if args.ready_line {
        println!("ready");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let deadline = (args.timeout > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.timeout));
    let mut handled = 0u64;
    let why = loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let m = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break "the broker closed the channel" },
            _ = term.recv() => break "SIGTERM",
            _ = tokio::signal::ctrl_c() => break "SIGINT",
            _ = until_deadline => break "timeout",
        };
        let tag = m.deliver.as_ref().map(|d| d.delivery_tag()).unwrap_or_default();
        let props = m.basic_properties.unwrap_or_default();
        let body = m.content.unwrap_or_default();
        let Some(id) = props.message_id().cloned().filter(|s| !s.is_empty()) else {
            println!("message without message_id rejected (cannot deduplicate it)");
            ch.basic_reject(BasicRejectArguments::new(tag, false)).await?;
            continue;
        };
        let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(account) = payload.get("account").and_then(Value::as_str).map(str::to_owned) else {
            println!("FraudDetected id={id} rejected: the body has no string field `account`");
            ch.basic_reject(BasicRejectArguments::new(tag, false)).await?;
            continue;
        };
        let reason = payload.get("reason").and_then(Value::as_str).unwrap_or("no reason given").to_owned();

        // ONE local transaction: the dedup record and the effect commit together.
        let tx = db.transaction().await?;
        let inserted =
            tx.execute("INSERT INTO processed_events (message_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&id]).await?;
        let updated = if inserted == 1 {
            Some(tx.execute("UPDATE accounts SET flagged = true WHERE name = $1", &[&account]).await?)
        } else {
            None
        };
        tx.commit().await?;
        // only now: a crash before this line redelivers, and the dedup record catches it
        ch.basic_ack(BasicAckArguments::new(tag, false)).await?;
        handled += 1;

        match updated {
            None => println!("duplicate FraudDetected id={id} ignored (already in processed_events)"),
            Some(0) => println!("FraudDetected id={id}: no account named {account}, nothing to flag"),
            Some(_) => println!("FraudDetected id={id}: account {account} flagged ({reason})"),
        }
        if args.count > 0 && handled >= args.count {
            break "count reached";
        }
    };
    println!("stopping ({why}) after {handled} message(s)");
    let _ = ch.close().await;
    let _ = conn.close().await;
    Ok(())
}
