//! CloudEvents routes, each message validated by the CloudEvents Python SDK;
//! W3C trace context carried unchanged and named in the relay's log lines.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use amqprs::FieldValue;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::config::{Route, TestConfig};
use crate::support::consumer::{Consumer, Received};
use crate::support::relay::{InProcess, Process};
use crate::support::{self, TestDb};

/// The SDK release the test validates with (it has the AMQP binding).
const SDK: &str = "cloudevents==2.2.0";

const TP1: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TP2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";

/// A bounded run of `cmd`; panics with its output unless it succeeds.
async fn run(cmd: &mut Command, what: &str, within: Duration) {
    let out = tokio::time::timeout(within, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {within:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Python with the pinned CloudEvents SDK: a venv under the target
/// directory, created (from PyPI) when missing. Fails the test when it cannot
/// be had: validation is never skipped.
async fn python_with_sdk() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("venv-{}", SDK.replace("==", "-")));
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if !ready.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv", Duration::from_secs(120)).await;
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", SDK])
            .env("PIP_DEFAULT_TIMEOUT", "30")
            .stdin(Stdio::null())
            .output();
        let what = format!("pip install {SDK} (PyPI must be reachable: the CloudEvents check is never skipped)");
        let out = tokio::time::timeout(Duration::from_secs(300), pip).await.expect(&what).expect(&what);
        assert!(out.status.success(), "{what}:\n{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(&ready, SDK).unwrap();
    }
    python
}

/// Every header of a delivery as JSON (strings as strings; the relay sends
/// no other type in these tests but booleans and numbers, kept as such).
fn headers_json(m: &Received) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    if let Some(h) = m.properties.headers() {
        for (k, v) in h.as_ref() {
            let v = match v {
                FieldValue::S(s) => json!(s.as_ref() as &str),
                FieldValue::t(b) => json!(b),
                FieldValue::l(n) => json!(n),
                other => json!(other.to_string()),
            };
            out.insert(k.as_ref().to_string(), v);
        }
    }
    out
}

/// Runs tests/cloudevents_check.py over `messages`: the SDK parses and
/// validates each; returns what it parsed, in order. Panics when the SDK
/// rejects any.
async fn sdk_parse(messages: &[Received]) -> Vec<Value> {
    let python = python_with_sdk().await;
    let input: Vec<Value> = messages
        .iter()
        .map(|m| {
            json!({
                "content_type": m.properties.content_type(),
                "headers": headers_json(m),
                "body_b64": base64_encode(&m.body),
            })
        })
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cloudevents_check.py");
    let mut child = Command::new(python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the CloudEvents check");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(serde_json::to_string(&input).unwrap().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the CloudEvents check answers within 60 s")
        .unwrap();
    assert!(
        out.status.success(),
        "the CloudEvents SDK rejected messages:\n{}\ninput: {input:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("the check's JSON");
    assert_eq!(parsed.len(), messages.len());
    parsed
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    out
}

/// Inserts one outbox row and returns its id.
async fn insert(client: &tokio_postgres::Client, aggregate_type: &str, headers: Option<&str>) -> String {
    let id = support::uuid();
    let headers = headers.map_or("NULL".to_owned(), |h| format!("'{h}'"));
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) \
             VALUES ('{id}', '{aggregate_type}', 'agg-{aggregate_type}', 'ThingHappened', '{{\"n\": 1}}', {headers})"
        ))
        .await
        .expect("insert");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_routes_in_binary_and_structured_mode_pass_the_sdks_validation() {
    // GIVEN three routes on the outbox: binary mode with a subject, structured
    // mode (JSON data), structured mode with a non-JSON content type (data_base64)
    let db = TestDb::new().await;
    let client = db.client().await;
    let consumer = Consumer::start("#").await;
    let database = db.name.clone();
    let cfg = TestConfig::new(&db.url)
        .route(
            Route::outbox(&consumer.exchange)
                .name("binary")
                .when("aggregate_type", "bin")
                .format("cloudevents")
                .ce_subject("{aggregate_id}"),
        )
        .route(
            Route::outbox(&consumer.exchange)
                .name("structured")
                .when("aggregate_type", "st")
                .format("cloudevents-structured")
                .ce_source("/shop/{aggregate_type}"),
        )
        .route(
            Route::outbox(&consumer.exchange)
                .name("base64")
                .when("aggregate_type", "b64")
                .format("cloudevents-structured")
                .content_type("text/plain"),
        );
    let relay = InProcess::start(&cfg).await;

    // WHEN events commit on each route, one binary one with a traceparent in its headers column
    let bin = insert(&client, "bin", None).await;
    let bin_traced = insert(&client, "bin", Some(&format!(r#"{{"traceparent": "{TP1}"}}"#))).await;
    let st = insert(&client, "st", None).await;
    let b64 = insert(&client, "b64", None).await;
    let ids = [bin.clone(), bin_traced.clone(), st.clone(), b64.clone()];
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    let got: Vec<Received> =
        ids.iter().map(|id| consumer.received().into_iter().find(|m| &m.message_id == id).unwrap()).collect();

    // THEN the CloudEvents SDK accepts every message, with the attributes the routes define
    let parsed = sdk_parse(&got).await;
    for (m, p) in got.iter().zip(&parsed) {
        let a = &p["attributes"];
        assert_eq!(a["specversion"], "1.0");
        assert_eq!(a["id"], m.message_id.as_str(), "id is the message id");
        assert_eq!(a["type"], "ThingHappened");
        let commit = m.header("x-outbox-commit-time").unwrap();
        let sdk_time = a["time"].as_str().unwrap();
        assert_eq!(
            sdk_time.trim_end_matches("+00:00").trim_end_matches('0').trim_end_matches('.'),
            commit.trim_end_matches('Z').trim_end_matches('0').trim_end_matches('.'),
            "time is the commit time"
        );
    }
    let (pb, pbt, ps, p64) = (&parsed[0], &parsed[1], &parsed[2], &parsed[3]);
    assert_eq!(pb["attributes"]["source"], format!("/outbox-relay/{database}/public.outbox"));
    assert_eq!(pb["attributes"]["subject"], "agg-bin");
    assert_eq!(pb["attributes"]["datacontenttype"], "application/json");
    assert_eq!(pb["data"], json!({"n": 1}));
    assert_eq!(got[0].header("cloudEvents:id").as_deref(), Some(bin.as_str()), "binary mode: cloudEvents: headers");
    assert_eq!(got[0].body, br#"{"n": 1}"#, "binary mode: the payload is the body");
    assert_eq!(pbt["attributes"]["traceparent"], TP1, "the distributed-tracing extension");
    assert_eq!(got[1].header("traceparent").as_deref(), Some(TP1), "and the plain header, unchanged");
    assert_eq!(ps["attributes"]["source"], "/shop/st");
    assert_eq!(ps["data"], json!({"n": 1}));
    assert_eq!(
        got[2].properties.content_type().map(|s| s.as_str()),
        Some("application/cloudevents+json; charset=utf-8")
    );
    assert_eq!(p64["attributes"]["datacontenttype"], "text/plain");
    assert_eq!(p64["data"], json!({"bytes_b64": base64_encode(br#"{"n": 1}"#)}), "non-JSON data as data_base64");
    println!("the CloudEvents SDK ({SDK}) accepted all {} messages", parsed.len());
    relay.stop().await.unwrap();
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_arrives_unchanged_and_the_relays_log_line_about_the_event_names_its_trace_id() {
    // GIVEN an outbox with traceparent/tracestate columns, and an exchange no queue is bound to yet (block)
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute("ALTER TABLE outbox ADD COLUMN traceparent text, ADD COLUMN tracestate text").await.unwrap();
    let exchange = support::random_name("x.");
    let consumer = Consumer::declare_only(&exchange).await;
    let relay = Process::spawn(&TestConfig::outbox(&db.url, &exchange));
    let slot = || async { db.confirmed_flush().await.is_some() };
    support::wait_until(Duration::from_secs(30), "the relay's slot exists", slot).await;

    // WHEN a row carries a traceparent column (with a tracestate) and another one in its headers column
    let by_column = support::uuid();
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, traceparent, tracestate) \
             VALUES ('{by_column}', 't', 'a', 'E', '{{}}', '{TP1}', 'vendor=1,other=2')"
        ))
        .await
        .unwrap();
    let by_headers = insert(&client, "t", Some(&format!(r#"{{"traceparent": "{TP2}"}}"#))).await;

    // THEN the relay's log line about the unroutable event carries its trace id
    let trace1 = &TP1[3..35];
    support::wait_until(Duration::from_secs(30), "the unroutable line with the trace id", || {
        let log = relay.log_text();
        async move { log.lines().any(|l| l.contains("unroutable") && l.contains("trace_id") && l.contains(trace1)) }
    })
    .await;

    // AND once a queue is bound both arrive with the same traceparent (and tracestate), unchanged
    let consumer = consumer.bind_queue("#").await;
    consumer.wait_for_ids(&[by_column.clone(), by_headers.clone()], Duration::from_secs(60)).await;
    let got = consumer.received();
    let of = |id: &str| got.iter().find(|m| m.message_id == id).unwrap();
    assert_eq!(of(&by_column).header("traceparent").as_deref(), Some(TP1));
    assert_eq!(of(&by_column).header("tracestate").as_deref(), Some("vendor=1,other=2"));
    assert_eq!(of(&by_headers).header("traceparent").as_deref(), Some(TP2));
    let log = relay.log_text();
    let status = relay.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{log}");
    db.drop_all().await;
}
