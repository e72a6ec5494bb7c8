//! The command line: --version, setup, bad configs.

use std::process::Command;

use crate::support::config::TestConfig;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
}

#[test]
fn version_prints_the_crate_version() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("outbox-relay {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn an_invalid_config_exits_2_naming_file_and_key_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"postgres://relay:Very-Secret-7@127.0.0.1/app\"\nstatus_interval = \"ten seconds\"\n[broker]\nurl = \"amqp://guest:guest@127.0.0.1/%2f\"\nmax_in_flight = 0\n",
    )
    .unwrap();
    let out = bin().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("status_interval"), "{err}");
    assert!(err.contains("max_in_flight"), "{err}");
    assert!(err.contains("routes"), "every problem is reported at once: {err}");
    assert!(!err.contains("Very-Secret-7"), "{err}");
}

#[test]
fn setup_print_sql_shows_the_default_table_publication_and_slot() {
    let cfg = TestConfig::outbox("postgres://relay@127.0.0.1/app", "wallet.events")
        .slot("s1")
        .publication("p1")
        .broker_url("amqp://guest:guest@127.0.0.1/%2f");
    let out = cfg.run_binary(&["setup", "--print-sql"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(sql.contains("CREATE TABLE IF NOT EXISTS outbox"), "{sql}");
    assert!(sql.contains("CREATE INDEX IF NOT EXISTS outbox_created_at_id ON outbox (created_at, id);"), "{sql}");
    assert!(
        sql.contains("CREATE PUBLICATION \"p1\" FOR TABLE \"public\".\"outbox\" WITH (publish = 'insert', publish_via_partition_root = true)"),
        "{sql}"
    );
    assert!(sql.contains("pg_create_logical_replication_slot('s1', 'pgoutput')"), "{sql}");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out =
        bin().args(["setup", "--print-sql", "--config", path]).env_remove("OUTBOX_RELAY_SOURCE_URL").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
