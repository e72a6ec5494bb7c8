//! TLS: PostgreSQL sslmodes on both connections, AMQPS.

use std::time::Duration;

use crate::support::cluster::{PgCluster, PgOptions, RabbitNode, TlsFiles};
use crate::support::config::TestConfig;
use crate::support::consumer::Consumer;
use crate::support::pki::Pki;
use crate::support::relay::InProcess;
use crate::support::{self, insert_events, relay_replication_connect as repl, relay_sql_connect as sql};

fn url(port: u16, host: &str, params: &str) -> String {
    format!("postgres://postgres:postgres@{host}:{port}/app?{params}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_verify_what_libpq_verifies_on_both_connections() {
    // GIVEN a cluster that accepts TLS only, with a certificate for "localhost" signed by our CA
    let pki = Pki::new(&["localhost"], "relay");
    let pg = PgCluster::start(PgOptions {
        ssl: Some(TlsFiles::new(&pki.server_cert, &pki.server_key)),
        require_ssl: true,
        ..PgOptions::default()
    })
    .await;
    pg.local_client("postgres").await.batch_execute("CREATE DATABASE app").await.unwrap();
    let port = pg.port();
    let ca = pki.ca.display().to_string();
    let other = pki.other_ca.display().to_string();

    // THEN verify-full with the right CA and host name succeeds on both connections
    // (SCRAM-SHA-256-PLUS: the server offers it over TLS and we bind the channel)
    let good = url(port, "localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    repl(&good).await.expect("replication connection, verify-full");
    let c = sql(&good).await.expect("sql connection, verify-full");
    let ssl: bool = c.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap().get(0);
    assert!(ssl, "the session is encrypted");

    // AND a wrong CA fails with a clear error, on both connections
    let wrong_ca = url(port, "localhost", &format!("sslmode=verify-full&sslrootcert={other}"));
    let e = repl(&wrong_ca).await.expect_err("wrong CA must fail");
    assert!(e.chain().contains("TLS handshake") && e.chain().to_lowercase().contains("issuer"), "{}", e.chain());
    assert!(sql(&wrong_ca).await.is_err());

    // AND a host name the certificate does not name fails under verify-full, passes under verify-ca
    let wrong_host = url(port, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let e = repl(&wrong_host).await.expect_err("wrong host name must fail");
    assert!(e.chain().to_lowercase().contains("not valid for"), "{}", e.chain());
    assert!(sql(&wrong_host).await.is_err());
    repl(&url(port, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")))
        .await
        .expect("verify-ca ignores the name");

    // AND require without a CA encrypts without verifying
    repl(&url(port, "127.0.0.1", "sslmode=require")).await.expect("require without CA");
    sql(&url(port, "127.0.0.1", "sslmode=require")).await.expect("require without CA (sql)");

    // AND sslmode=disable is refused by a TLS-only server, with the server's words
    let e = repl(&url(port, "127.0.0.1", "sslmode=disable")).await.expect_err("plain text refused");
    assert!(e.chain().contains("no encryption") || e.chain().contains("pg_hba"), "{}", e.chain());

    // AND verify-full without sslrootcert is a configuration error, not a silent downgrade
    let e = repl(&url(port, "localhost", "sslmode=verify-full")).await.expect_err("needs a CA");
    assert_eq!(e.kind(), outbox_relay::ErrorKind::Config);

    // AND the relay streams through verify-full end to end
    pg.local_client("app").await.batch_execute(outbox_relay::setup::DEFAULT_OUTBOX_TABLE).await.unwrap();
    let consumer = Consumer::start("#").await;
    let relay = InProcess::start(&TestConfig::outbox(&good, &consumer.exchange).slot("tls_slot")).await;
    let ids = insert_events(&pg.local_client("app").await, "wallet", &["a".into()], "OverTls").await;
    consumer.wait_for_ids(&ids, Duration::from_secs(20)).await;
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_verifies_the_broker_and_a_client_certificate_logs_in_with_external() {
    // GIVEN a RabbitMQ node with a TLS listener whose certificate names "localhost"
    let pki = Pki::new(&["localhost"], "relay");
    let rabbit = RabbitNode::start_with_tls(TlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        ca: Some(pki.ca.clone()),
    })
    .await;
    let tls_port = rabbit.tls_addr().expect("TLS listener").port();
    let (exchange, queue) = Consumer::declare_durable(&rabbit.amqp_url(), "#").await;
    let db = support::TestDb::new().await;

    // WHEN the relay publishes over amqps with our CA (file key), host name verified
    let cfg = TestConfig::outbox(&db.url, &exchange)
        .broker_url(&format!("amqps://guest:guest@localhost:{tls_port}/%2f"))
        .tls_ca_file(&pki.ca);
    let relay = InProcess::start(&cfg).await;
    let ids = insert_events(&db.client().await, "wallet", &["a".into()], "OverAmqps").await;
    let consumer = Consumer::consume_existing(&rabbit.amqp_url(), &exchange, &queue).await;
    // THEN the event arrives
    consumer.wait_for_ids(&ids, Duration::from_secs(30)).await;
    relay.stop().await.unwrap();

    // AND a client certificate without a user in the URL logs in with EXTERNAL (its CN, "relay")
    rabbit.ctl(&["add_user", "relay", &support::random_name("unused-")]).await;
    rabbit.ctl(&["set_permissions", "-p", "/", "relay", ".*", ".*", ".*"]).await;
    let external = format!(
        "amqps://localhost:{tls_port}/%2f?cacertfile={}&certfile={}&keyfile={}",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let target = outbox_relay::publish::channel::BrokerTarget::parse(&external).unwrap();
    outbox_relay::publish::channel::BrokerChannel::open(&target, Duration::from_secs(10), Duration::from_secs(10), "t")
        .await
        .expect("EXTERNAL login with a client certificate")
        .close()
        .await;

    // AND a wrong CA, or a host name the certificate does not name, is refused (as check reports it)
    for (url, what) in [
        (format!("amqps://guest:guest@localhost:{tls_port}/%2f?cacertfile={}", pki.other_ca.display()), "wrong CA"),
        (format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f?cacertfile={}", pki.ca.display()), "wrong host name"),
    ] {
        let target = outbox_relay::publish::channel::BrokerTarget::parse(&url).unwrap();
        let r = outbox_relay::publish::channel::BrokerChannel::open(
            &target,
            Duration::from_secs(10),
            Duration::from_secs(5),
            "t",
        )
        .await;
        assert!(r.is_err(), "{what} must be refused");
    }
    db.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_logs_in_where_the_server_requires_one() {
    use crate::support::cluster::PgAuth;
    // GIVEN a cluster that authenticates by client certificate (CN = user name)
    let pki = Pki::new(&["localhost"], "relay");
    let pg = PgCluster::start(PgOptions {
        ssl: Some(TlsFiles { cert: pki.server_cert.clone(), key: pki.server_key.clone(), ca: Some(pki.ca.clone()) }),
        require_ssl: true,
        host_auth: PgAuth::Cert,
        ..PgOptions::default()
    })
    .await;
    let admin = pg.local_client("postgres").await;
    admin.batch_execute("CREATE ROLE relay LOGIN REPLICATION").await.unwrap();
    admin.batch_execute("CREATE DATABASE app OWNER relay").await.unwrap();
    let port = pg.port();
    let base = format!("postgres://relay@localhost:{port}/app?sslmode=verify-full&sslrootcert={}", pki.ca.display());
    // THEN with sslcert/sslkey both connections log in, without a password
    let with_cert = format!("{base}&sslcert={}&sslkey={}", pki.client_cert.display(), pki.client_key.display());
    repl(&with_cert).await.expect("replication connection with a client certificate");
    sql(&with_cert).await.expect("sql connection with a client certificate");
    // AND without one the server refuses, and says so
    let e = repl(&base).await.expect_err("no certificate, no login");
    assert!(!e.chain().is_empty());
}
