//! `outbox-relay check --json`: the report as one JSON document, and the
//! stable `key` vocabulary of its entries. The shape is documented in the
//! README ("Preflight") and in `deploy/check.schema.json`, which the tests
//! validate every document against.

use std::path::Path;

use serde_json::{json, Value};

use super::{Level, Report};
use crate::config::ConfigError;
use crate::exit::{self, Failure};

/// Version of the `check --json` document; raised only if a field changes meaning or goes away.
pub const JSON_VERSION: u32 = 1;

/// What a finding is about: the stable, machine-readable `key` of
/// `check --json`. A configuration that does not load is reported under
/// its config keys instead (`source.slot`, `routes[1].routing_key`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The configuration file: loaded, or unreadable.
    Config,
    /// `source.url` (or its environment override) cannot be used.
    SourceUrl,
    /// Reaching, logging in to, or querying PostgreSQL.
    PostgresConnection,
    /// The server's `wal_level`.
    PostgresWalLevel,
    /// The role's `REPLICATION` privilege.
    PostgresReplication,
    /// `max_replication_slots` exhausted.
    PostgresSlots,
    /// `max_wal_senders` exhausted.
    PostgresWalSenders,
    /// `max_slot_wal_keep_size`.
    PostgresWalKeep,
    /// A route's table exists.
    Table,
    /// The role's privileges on a route's table (`SELECT`; `DELETE` or `UPDATE` when polling).
    TablePrivilege,
    /// Polling: the table's single-column primary key.
    TablePrimaryKey,
    /// Polling: `source.mark_column` exists.
    TableMarkColumn,
    /// Polling: rows no route's `when` filter matches.
    TableUnmatchedRows,
    /// Outbox rows deleted so soon that `recover` could not bring them back.
    TableRetention,
    /// Every route template names an existing column.
    RouteColumns,
    /// The publication: exists, publishes inserts, covers the routes' tables.
    Publication,
    /// The replication slot: exists, its database and plugin, active elsewhere, retained WAL.
    Slot,
    /// The slot the relay streamed from is lost (`outbox-relay recover`).
    SlotLost,
    /// The relay's state table `outbox_relay_state`.
    StateTable,
    /// `broker.url` (or its environment override) cannot be used.
    BrokerUrl,
    /// Reaching and logging in to RabbitMQ, with publisher confirms.
    BrokerConnection,
    /// One node of several in `broker.url` is not usable (a warning: the relay uses the others).
    BrokerNode,
    /// An exchange a route publishes to (or dead-letters to) exists.
    Exchange,
    /// `check` itself could not run (JSON output only).
    Internal,
}

impl Key {
    /// Every key, in the README's order.
    pub const ALL: [Key; 24] = [
        Key::Config,
        Key::SourceUrl,
        Key::PostgresConnection,
        Key::PostgresWalLevel,
        Key::PostgresReplication,
        Key::PostgresSlots,
        Key::PostgresWalSenders,
        Key::PostgresWalKeep,
        Key::Table,
        Key::TablePrivilege,
        Key::TablePrimaryKey,
        Key::TableMarkColumn,
        Key::TableUnmatchedRows,
        Key::TableRetention,
        Key::RouteColumns,
        Key::Publication,
        Key::Slot,
        Key::SlotLost,
        Key::StateTable,
        Key::BrokerUrl,
        Key::BrokerConnection,
        Key::BrokerNode,
        Key::Exchange,
        Key::Internal,
    ];

    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::Config => "config",
            Key::SourceUrl => "source.url",
            Key::PostgresConnection => "postgres.connection",
            Key::PostgresWalLevel => "postgres.wal_level",
            Key::PostgresReplication => "postgres.replication",
            Key::PostgresSlots => "postgres.max_replication_slots",
            Key::PostgresWalSenders => "postgres.max_wal_senders",
            Key::PostgresWalKeep => "postgres.max_slot_wal_keep_size",
            Key::Table => "table",
            Key::TablePrivilege => "table.privilege",
            Key::TablePrimaryKey => "table.primary_key",
            Key::TableMarkColumn => "table.mark_column",
            Key::TableUnmatchedRows => "table.unmatched_rows",
            Key::TableRetention => "table.retention",
            Key::RouteColumns => "route.columns",
            Key::Publication => "publication",
            Key::Slot => "slot",
            Key::SlotLost => "slot.lost",
            Key::StateTable => "state_table",
            Key::BrokerUrl => "broker.url",
            Key::BrokerConnection => "broker.connection",
            Key::BrokerNode => "broker.node",
            Key::Exchange => "exchange",
            Key::Internal => "internal",
        }
    }
}

impl Report {
    /// The document printed by `check --json`: problems and warnings with
    /// their fix, the checks that passed, in the order checked.
    pub fn to_json(&self, config: &Path) -> Value {
        let entries = |level: Level| -> Vec<Value> {
            self.findings
                .iter()
                .filter(|f| f.level == level)
                .map(|f| match &f.fix {
                    Some(fix) => json!({"key": f.key.as_str(), "message": f.what, "fix": fix}),
                    None => json!({"key": f.key.as_str(), "message": f.what}),
                })
                .collect()
        };
        document(config, &self.result(), entries(Level::Problem), entries(Level::Warn), entries(Level::Ok))
    }
}

/// What `check`'s exit code means, in the JSON output.
pub fn exit_meaning(code: u8) -> &'static str {
    match code {
        0 => "the relay can run",
        1 => "the relay cannot run: fix the problems",
        2 => "invalid configuration: fix the keys named",
        _ => "check could not run",
    }
}

/// The document of `check --json` for a configuration that did not load
/// (exit 2): one problem per config key. [`ConfigError`] messages never
/// quote a URL or a secret.
pub fn config_error_json(config: &Path, e: &ConfigError) -> Value {
    let problems = match e {
        ConfigError::Io { source, .. } => vec![json!({
            "key": Key::Config.as_str(),
            "message": format!("cannot read the config file: {source}"),
            "fix": "check the --config path (or OUTBOX_RELAY_CONFIG) and that the file is readable UTF-8 text",
        })],
        ConfigError::Invalid { problems, .. } => problems
            .iter()
            .map(|p| {
                let fix = match p.key.strip_prefix("env ") {
                    Some(var) => format!("fix the environment variable {var}"),
                    None => format!("fix {} in {}", p.key, config.display()),
                };
                json!({"key": p.key, "message": p.message, "fix": fix})
            })
            .collect(),
    };
    document(config, &Err(Failure::Invalid), problems, Vec::new(), Vec::new())
}

/// The document of `check --json` when `check` itself could not run (no runtime): exit 1.
pub fn failure_json(config: &Path, message: &str) -> Value {
    let problem = json!({"key": Key::Internal.as_str(), "message": message, "fix": "see the message; run check again"});
    document(config, &Err(Failure::Failed), vec![problem], Vec::new(), Vec::new())
}

fn document(
    config: &Path,
    result: &Result<(), Failure>,
    problems: Vec<Value>,
    warnings: Vec<Value>,
    checks: Vec<Value>,
) -> Value {
    let code = exit::code(result);
    json!({
        "version": JSON_VERSION,
        "ok": result.is_ok(),
        "exit_code": code,
        "exit_meaning": exit_meaning(code),
        "config": config.display().to_string(),
        "problems": problems,
        "warnings": warnings,
        "checks": checks,
    })
}

#[cfg(test)]
#[path = "../../tests/support/schema.rs"]
mod schema;

#[cfg(test)]
mod tests {
    use super::schema::assert_valid_check_document;
    use super::*;

    fn sample() -> Report {
        let mut r = Report::default();
        r.ok(Key::Config, "configuration relay.toml is valid (1 route(s))");
        r.warn(Key::PostgresWalKeep, "max_slot_wal_keep_size = -1", "set it");
        r.ok(Key::Slot, "slot \"s\" exists");
        r
    }

    #[test]
    fn a_report_without_problems_is_ok_with_exit_0_and_its_warnings_and_checks() {
        let doc = sample().to_json(Path::new("relay.toml"));
        assert_valid_check_document(&doc);
        assert_eq!(doc["ok"], true);
        assert_eq!(doc["exit_code"], 0);
        assert_eq!(doc["exit_meaning"], "the relay can run");
        assert_eq!(doc["config"], "relay.toml");
        assert_eq!(doc["version"], JSON_VERSION);
        assert_eq!(doc["problems"], json!([]));
        assert_eq!(
            doc["warnings"],
            json!([{"key": "postgres.max_slot_wal_keep_size", "message": "max_slot_wal_keep_size = -1", "fix": "set it"}])
        );
        let checks: Vec<&str> = doc["checks"].as_array().unwrap().iter().map(|c| c["key"].as_str().unwrap()).collect();
        assert_eq!(checks, ["config", "slot"], "in the order checked");
        assert!(doc["checks"][0].get("fix").is_none(), "a check has no fix");
    }

    #[test]
    fn one_problem_makes_it_not_ok_with_exit_1_and_the_text_is_unchanged() {
        let mut r = sample();
        r.problem(Key::Exchange, "exchange \"x\" does not exist", "declare it");
        let doc = r.to_json(Path::new("relay.toml"));
        assert_valid_check_document(&doc);
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["exit_code"], 1);
        assert_eq!(doc["exit_meaning"], "the relay cannot run: fix the problems");
        assert_eq!(
            doc["problems"],
            json!([{"key": "exchange", "message": "exchange \"x\" does not exist", "fix": "declare it"}])
        );
        assert_eq!(r.result(), Err(Failure::Failed));
        // The text output knows nothing of keys.
        assert_eq!(
            r.render(),
            "ok      configuration relay.toml is valid (1 route(s))\n\
             warn    max_slot_wal_keep_size = -1\n        fix: set it\n\
             ok      slot \"s\" exists\n\
             PROBLEM exchange \"x\" does not exist\n        fix: declare it\n\
             1 problem(s), 1 warning(s): the relay cannot run\n"
        );
    }

    #[test]
    fn an_invalid_config_is_exit_2_with_one_problem_per_config_key_and_no_secret() {
        let text = "[source]\nurl = \"postgres://relay:Very-Secret-7@127.0.0.1/app\"\nslot = \"Bad Slot\"\n";
        let path = Path::new("/etc/relay.toml");
        let e = crate::config::from_str(text, path, &|_| None).unwrap_err();
        let doc = config_error_json(path, &e);
        assert_valid_check_document(&doc);
        assert_eq!(doc["ok"], false);
        assert_eq!(doc["exit_code"], 2);
        assert_eq!(doc["exit_meaning"], "invalid configuration: fix the keys named");
        let keys: Vec<&str> = doc["problems"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap()).collect();
        assert!(keys.contains(&"source.slot") && keys.contains(&"broker.url") && keys.contains(&"routes"), "{keys:?}");
        assert_eq!(doc["problems"][0]["fix"], "fix source.slot in /etc/relay.toml");
        assert_eq!(doc["checks"], json!([]));
        let out = doc.to_string();
        assert!(!out.contains("Very-Secret-7") && !out.contains("postgres://"), "{out}");
    }

    #[test]
    fn an_environment_override_is_fixed_in_the_environment_and_an_unreadable_file_is_key_config() {
        let env = |name: &str| (name == "OUTBOX_RELAY_BROKER_URL_FILE").then(|| "/no/such/file".to_owned());
        let text = "[source]\nurl = \"postgres://relay@127.0.0.1/app\"\n[[routes]]\ntable = \"public.outbox\"\nexchange = \"x\"\n";
        let e = crate::config::from_str(text, Path::new("r.toml"), &env).unwrap_err();
        let doc = config_error_json(Path::new("r.toml"), &e);
        assert_valid_check_document(&doc);
        let env_problem =
            doc["problems"].as_array().unwrap().iter().find(|p| p["key"].as_str().unwrap().starts_with("env "));
        let env_problem = env_problem.unwrap_or_else(|| panic!("no env key in {doc:#}"));
        assert_eq!(env_problem["fix"], "fix the environment variable OUTBOX_RELAY_BROKER_URL_FILE");

        let io = ConfigError::Io { path: "/nope.toml".into(), source: std::io::ErrorKind::NotFound.into() };
        let doc = config_error_json(Path::new("/nope.toml"), &io);
        assert_valid_check_document(&doc);
        assert_eq!(doc["exit_code"], 2);
        assert_eq!(doc["problems"][0]["key"], "config");
    }

    #[test]
    fn a_failure_to_run_is_exit_1_under_key_internal() {
        let doc = failure_json(Path::new("r.toml"), "no runtime");
        assert_valid_check_document(&doc);
        assert_eq!((doc["exit_code"].as_u64(), doc["problems"][0]["key"].as_str()), (Some(1), Some("internal")));
    }

    #[test]
    fn keys_are_unique_and_each_is_documented_in_the_readme() {
        let readme = include_str!("../../README.md");
        let mut seen = std::collections::HashSet::new();
        for key in Key::ALL {
            assert!(seen.insert(key.as_str()), "{key:?} twice");
            assert!(
                readme.contains(&format!("| `{}` |", key.as_str())),
                "README does not document key {:?}",
                key.as_str()
            );
        }
    }

    #[test]
    fn the_readme_example_validates() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("**`check --json`**").expect("the README's check --json section")..];
        let start = section.find("```json\n").expect("an example") + "```json\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let doc: Value = serde_json::from_str(example).unwrap_or_else(|e| panic!("{e}: {example}"));
        assert_valid_check_document(&doc);
    }

    #[test]
    fn the_schema_rejects_what_it_should() {
        let good = sample().to_json(Path::new("r.toml"));
        let mut missing_fix = good.clone();
        missing_fix["warnings"][0].as_object_mut().unwrap().remove("fix");
        let mut bad_code = good.clone();
        bad_code["exit_code"] = json!(7);
        let mut extra = good.clone();
        extra["surprise"] = json!(true);
        let mut wrong_type = good;
        wrong_type["ok"] = json!("yes");
        for doc in [missing_fix, bad_code, extra, wrong_type] {
            assert!(!super::schema::check_schema_errors(&doc).is_empty(), "accepted {doc:#}");
        }
    }
}
