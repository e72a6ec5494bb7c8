//! The demo's anti-fraud service: consumes the wallet's `TransactionAdded`
//! events and, for a suspicious one, publishes `FraudDetected` through its
//! own transactional outbox (relayed by a second outbox-relay instance).
//!
//! For each message, in ONE PostgreSQL transaction on its own database:
//!
//! 1. `INSERT INTO processed_events(message_id) ... ON CONFLICT DO NOTHING`:
//!    the dedup record. No row inserted means the event was already handled
//!    (at-least-once delivery sends some events twice): nothing else happens.
//! 2. If the row was inserted and the transaction is suspicious, an outbox row
//!    `account` / `<account>` / `FraudDetected` with the reason and the
//!    original `message_id`.
//!
//! It commits, and only THEN acknowledges the message (manual ack). A crash
//! between the commit and the ack redelivers a message whose effect is already
//! committed: step 1 finds it and ignores it. A crash before the commit loses
//! nothing either: the message was not acknowledged. So effects happen once.
//!
//! The rule: a transaction is suspicious when its absolute amount is at least
//! `--threshold-cents` (default 100000, i.e. 1,000.00 in one go).
//!
//! The queue `antifraud.transactions` is durable and bound to the topic
//! exchange `wallet.events` with `wallet.TransactionAdded`; both are declared
//! (idempotently) at start, since the relay never declares anything.
//!
//! ```text
//! PG_URL=postgres://relay:...@127.0.0.1:54329/antifraud AMQP_URL=amqp://guest:...@127.0.0.1:56729/%2f \
//!     cargo run --example antifraud -- --ready-line
//! ```
//!
//! Exits after `--count` messages (duplicates included), after `--timeout`
//! seconds, or on SIGINT / SIGTERM (after finishing the message in hand).
//!
//! `--republish MESSAGE_ID --body JSON` does something else and exits: it
//! publishes one `TransactionAdded` with that `message_id` to `wallet.events`,
//! as a redelivery would (a relay crash between the broker's confirm and the
//! slot's acknowledgement replays events). The demo uses it to show that a
//! duplicate changes nothing.

use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, BasicRejectArguments, Channel,
    ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments, QueuePurgeArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use clap::Parser;
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
struct Args {
    /// The anti-fraud database (processed_events and the outbox live there).
    #[arg(long, env = "PG_URL", hide_env_values = true, required_unless_present = "republish")]
    pg_url: Option<String>,
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", hide_env_values = true, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// The wallet's exchange (topic), declared if missing.
    #[arg(long, default_value = "wallet.events")]
    exchange: String,
    /// The durable queue this service consumes.
    #[arg(long, default_value = "antifraud.transactions")]
    queue: String,
    /// The binding key.
    #[arg(long, default_value = "wallet.TransactionAdded")]
    binding: String,
    /// A transaction whose absolute amount is at least this is suspicious.
    #[arg(long, default_value_t = 100_000)]
    threshold_cents: i64,
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
    /// Instead of consuming: publish one TransactionAdded with this message_id and exit.
    #[arg(long, requires = "body")]
    republish: Option<String>,
    /// The body (JSON) for --republish.
    #[arg(long)]
    body: Option<String>,
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

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("antifraud: PostgreSQL connection lost: {e}");
        }
    });
    Ok(client)
}

async fn declare(ch: &Channel, args: &Args) -> Result<(), BoxError> {
    ch.exchange_declare(ExchangeDeclareArguments::new(&args.exchange, "topic").durable(true).finish()).await?;
    ch.queue_declare(QueueDeclareArguments::durable_client_named(&args.queue)).await?;
    ch.queue_bind(QueueBindArguments::new(&args.queue, &args.exchange, &args.binding)).await?;
    Ok(())
}

/// What a TransactionAdded carries that the rule needs.
struct Transaction {
    account: String,
    amount_cents: i64,
    transaction_id: Value,
}

fn parse(body: &[u8]) -> Result<Transaction, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let account = v.get("account").and_then(Value::as_str).ok_or("no string field `account`")?.to_owned();
    let amount_cents = v.get("amount_cents").and_then(Value::as_i64).ok_or("no integer field `amount_cents`")?;
    Ok(Transaction { account, amount_cents, transaction_id: v.get("transaction_id").cloned().unwrap_or(Value::Null) })
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.unsigned_abs() / 100, cents.unsigned_abs() % 100)
}

async fn republish(args: &Args, message_id: &str) -> Result<(), BoxError> {
    let body = args.body.clone().unwrap_or_default();
    let tx = parse(body.as_bytes())?;
    let conn = amqp_connect(&args.amqp_url).await?;
    let ch = conn.open_channel(None).await?;
    declare(&ch, args).await?;
    let mut headers = amqprs::FieldTable::new();
    headers.insert("aggregate_id".try_into().expect("a short string"), amqprs::FieldValue::from(tx.account.as_str()));
    let props = BasicProperties::default()
        .with_message_id(message_id)
        .with_message_type("TransactionAdded")
        .with_content_type("application/json")
        .with_delivery_mode(2)
        .with_app_id("demo-republish")
        .with_headers(headers)
        .finish();
    ch.basic_publish(props, body.into_bytes(), BasicPublishArguments::new(&args.exchange, &args.binding)).await?;
    // channel.close waits for close-ok, which the broker sends after handling the publish before it
    ch.close().await?;
    conn.close().await?;
    println!("republished TransactionAdded id={message_id} to {} with key {}", args.exchange, args.binding);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(id) = args.republish.clone() {
        return republish(&args, &id).await;
    }

    let mut db = pg_connect(args.pg_url.as_deref().unwrap_or_default()).await?;
    let conn = amqp_connect(&args.amqp_url).await?;
    let ch = conn.open_channel(None).await?;
    declare(&ch, &args).await?;
    if args.purge {
        let n = ch.queue_purge(QueuePurgeArguments::new(&args.queue)).await?.unwrap_or(0);
        println!("purged {n} message(s) left in {}", args.queue);
    }
    ch.basic_qos(BasicQosArguments::new(0, 16, false)).await?;
    let (_tag, mut rx) =
        ch.basic_consume_rx(BasicConsumeArguments::new(&args.queue, "antifraud").manual_ack(true).finish()).await?;
    println!(
        "consuming {} ({} -> {}), suspicious from {} in one transaction",
        args.queue,
        args.exchange,
        args.binding,
        money(args.threshold_cents)
    );
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
        let t = match parse(&body) {
            Ok(t) => t,
            Err(e) => {
                println!("TransactionAdded id={id} rejected: {e}");
                ch.basic_reject(BasicRejectArguments::new(tag, false)).await?;
                continue;
            }
        };

        // ONE local transaction: the dedup record and the outgoing event commit together.
        let tx = db.transaction().await?;
        let inserted =
            tx.execute("INSERT INTO processed_events (message_id) VALUES ($1) ON CONFLICT DO NOTHING", &[&id]).await?;
        let verdict = if inserted == 0 {
            None
        } else if t.amount_cents.abs() >= args.threshold_cents {
            let reason =
                format!("single transaction of {} (limit {})", money(t.amount_cents), money(args.threshold_cents));
            let payload = json!({
                "account": t.account,
                "reason": reason,
                "transaction_message_id": id,
                "transaction_id": t.transaction_id,
                "amount_cents": t.amount_cents,
            });
            tx.execute(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 VALUES ('account', $1, 'FraudDetected', $2::text::jsonb)",
                &[&t.account, &payload.to_string()],
            )
            .await?;
            Some(Some(reason))
        } else {
            Some(None)
        };
        tx.commit().await?;
        // only now: a crash before this line redelivers, and the dedup record catches it
        ch.basic_ack(BasicAckArguments::new(tag, false)).await?;
        handled += 1;

        match verdict {
            None => println!("duplicate TransactionAdded id={id} ignored (already in processed_events)"),
            Some(None) => {
                println!("TransactionAdded id={id} account={} amount={}: ok", t.account, money(t.amount_cents))
            }
            Some(Some(reason)) => {
                println!("TransactionAdded id={id} account={} amount={}: SUSPICIOUS, {reason} -> FraudDetected in the outbox", t.account, money(t.amount_cents))
            }
        }
        if args.count > 0 && handled >= args.count {
            break "count reached";
        }
    };
    println!("stopping ({why}) after {handled} message(s)");
    let _ = ch.close().await;
    let _ = conn.close().await;
    drop(db);
    Ok(())
}
