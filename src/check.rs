//! `outbox-relay check`: a preflight that does what the relay does at start,
//! against the real systems, and reports every problem at once with its fix.
//! Exit 0 only when the relay can run (warnings allowed).
//!
//! It reuses the relay's own pieces (`slot.rs`, `Router::check_table`,
//! `BrokerChannel`), so it cannot drift from what `run` needs. Every finding
//! carries a [`Key`]; `json.rs` renders the report for `check --json`.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::Client;

use crate::config::{current_url, Config, UrlTarget};
use crate::exit::Failure;
use crate::publish::channel::BrokerChannel;
use crate::publish::nodes::BrokerNodes;
use crate::route::Router;
use crate::source::postgres::{quote_ident, PgTarget};
use crate::source::replication::record::Place;
use crate::source::replication::slot;

mod json;

pub use json::{config_error_json, exit_meaning, failure_json, Key, JSON_VERSION};

/// Each end gets at most this long to answer, so `check` finishes in about ten seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// Retained WAL above this is worth a warning for an inactive slot.
const RETAINED_WARN_BYTES: i64 = 1 << 30;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Fine.
    Ok,
    /// The relay runs, but look at this.
    Warn,
    /// The relay cannot run until this is fixed.
    Problem,
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// What it is about.
    pub key: Key,
    /// What was found.
    pub what: String,
    /// How to fix it (problems and warnings).
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl Report {
    fn ok(&mut self, key: Key, what: impl Into<String>) {
        self.findings.push(Finding { level: Level::Ok, key, what: what.into(), fix: None });
    }
    fn warn(&mut self, key: Key, what: impl Into<String>, fix: impl Into<String>) {
        self.findings.push(Finding { level: Level::Warn, key, what: what.into(), fix: Some(fix.into()) });
    }
    fn problem(&mut self, key: Key, what: impl Into<String>, fix: impl Into<String>) {
        self.findings.push(Finding { level: Level::Problem, key, what: what.into(), fix: Some(fix.into()) });
    }

    /// What the command's exit code says: `Ok` (0) when the relay can run, warnings allowed.
    pub fn result(&self) -> Result<(), Failure> {
        if self.problems() == 0 {
            Ok(())
        } else {
            Err(Failure::Failed)
        }
    }

    /// Number of problems.
    pub fn problems(&self) -> usize {
        self.findings.iter().filter(|f| f.level == Level::Problem).count()
    }

    /// Number of warnings.
    pub fn warnings(&self) -> usize {
        self.findings.iter().filter(|f| f.level == Level::Warn).count()
    }

    /// The text printed by the command.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let tag = match f.level {
                Level::Ok => "ok     ",
                Level::Warn => "warn   ",
                Level::Problem => "PROBLEM",
            };
            let _ = writeln!(out, "{tag} {}", f.what);
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "        fix: {fix}");
            }
        }
        let _ = writeln!(
            out,
            "{} problem(s), {} warning(s): {}",
            self.problems(),
            self.warnings(),
            if self.problems() == 0 { "the relay can run" } else { "the relay cannot run" }
        );
        out
    }
}

/// Runs every check.
pub async fn run(config: &Config) -> Report {
    let mut r = Report::default();
    r.ok(Key::Config, format!("configuration {} is valid ({} route(s))", config.path.display(), config.routes.len()));
    let (pg, broker) = tokio::join!(check_source(config), check_broker(config));
    r.findings.extend(pg.findings);
    r.findings.extend(broker.findings);
    r
}

async fn check_source(config: &Config) -> Report {
    let mut r = Report::default();
    let src = &config.source;
    let target = match current_url(UrlTarget::Source, &src.url).and_then(|u| PgTarget::parse(u.expose())) {
        Ok(t) => t,
        Err(e) => {
            r.problem(Key::SourceUrl, e.chain(), "fix source.url or OUTBOX_RELAY_SOURCE_URL[_FILE]");
            return r;
        }
    };
    let client = match target.connect_sql(CONNECT_TIMEOUT).await {
        Ok(c) => c,
        Err(e) => {
            r.problem(Key::PostgresConnection, format!("PostgreSQL: {}", e.chain()), e.kind().hint());
            return r;
        }
    };
    let user = target.config.get_user().unwrap_or("?").to_owned();
    r.ok(
        Key::PostgresConnection,
        format!("PostgreSQL {} reachable as {user:?}, database {:?}", target.endpoint(), target.dbname()),
    );
    if let Err(e) = source_details(&client, config, &user, &mut r).await {
        r.problem(Key::PostgresConnection, format!("PostgreSQL: {}", e.chain()), e.kind().hint());
    }
    r
}

async fn one_text(client: &Client, sql: &str) -> crate::Result<String> {
    client
        .query_one(sql, &[])
        .await
        .map(|row| row.get::<_, String>(0))
        .map_err(|e| crate::error::from_pg(crate::ErrorKind::SourceQuery, format!("running `{sql}`"), e))
}

async fn source_details(client: &Client, config: &Config, user: &str, r: &mut Report) -> crate::Result<()> {
    let src = &config.source;
    let polling = src.mode == crate::config::SourceMode::Polling;
    let slot_state = if polling { None } else { replication_prereqs(client, config, user, r).await? };
    // Routes: tables, privileges, template columns.
    let mut router = Router::new(&config.routes);
    for (schema, table) in router.tables() {
        let name = format!("{schema}.{table}");
        match slot::table_columns(client, &schema, &table).await? {
            None => r.problem(
                Key::Table,
                format!("table {name} named by a route does not exist"),
                "create it (`outbox-relay setup --print-sql` shows the default outbox table) or fix the route's table",
            ),
            Some(cols) => {
                let select: bool = client
                    .query_one(
                        "SELECT has_table_privilege(format('%I.%I', $1::text, $2::text), 'SELECT')",
                        &[&schema, &table],
                    )
                    .await
                    .map_err(|e| {
                        crate::error::from_pg(
                            crate::ErrorKind::SourceQuery,
                            format!("checking privileges on {name}"),
                            e,
                        )
                    })?
                    .get(0);
                if !select {
                    r.problem(
                        Key::TablePrivilege,
                        format!("role {user:?} cannot SELECT from {name}"),
                        format!(
                            "GRANT SELECT ON {}.{} TO {};",
                            quote_ident(&schema),
                            quote_ident(&table),
                            quote_ident(user)
                        ),
                    );
                }
                let problems = router.check_table(&schema, &table, &cols);
                if problems.is_empty() {
                    r.ok(Key::RouteColumns, format!("table {name}: every route template names an existing column"));
                }
                for p in problems {
                    r.problem(
                        Key::RouteColumns,
                        format!("{}: {p}", config.path.display()),
                        "fix the route, or add the column",
                    );
                }
            }
        }
    }

    if polling {
        return polling_tables(client, config, user, r).await;
    }
    // Publication.
    let wanted = router.tables();
    match slot::publication_state(client, &src.publication).await? {
        None if src.create_slot => r.ok(
            Key::Publication,
            format!(
                "publication {:?} does not exist yet: will be created at start (create_slot = true)",
                src.publication
            ),
        ),
        None => r.problem(
            Key::Publication,
            format!("publication {:?} does not exist", src.publication),
            "run `outbox-relay setup --config FILE`, or set source.create_slot = true",
        ),
        Some(p) => {
            let coverage = slot::coverage(client, &src.publication, &p, &wanted).await?;
            let missing: Vec<String> = coverage.missing.iter().map(|(s, t)| format!("{s}.{t}")).collect();
            if !coverage.by_partition.is_empty() {
                let (what, fix) = slot::by_partition_problem(&src.publication, &coverage.by_partition);
                r.problem(Key::Publication, what, fix);
            }
            if !p.publishes_insert {
                r.problem(
                    Key::Publication,
                    format!("publication {:?} does not publish inserts", src.publication),
                    format!("ALTER PUBLICATION {} SET (publish = 'insert');", quote_ident(&src.publication)),
                );
            }
            if missing.is_empty() {
                r.ok(Key::Publication, format!("publication {:?} covers every route's table", src.publication));
            } else if src.create_slot {
                r.ok(
                    Key::Publication,
                    format!(
                        "publication {:?} lacks {}: will be added at start (create_slot = true)",
                        src.publication,
                        missing.join(", ")
                    ),
                );
            } else {
                r.problem(
                    Key::Publication,
                    format!("publication {:?} does not cover {}", src.publication, missing.join(", ")),
                    "run `outbox-relay setup --config FILE` (or ALTER PUBLICATION ... ADD TABLE ...)",
                );
            }
        }
    }

    // Slot, read against the relay's record of it.
    let db: String = one_text(client, "SELECT current_database()::text").await?;
    let place = Place::new(&router.tables(), &src.slot);
    let record = if polling { None } else { place.read(client).await? };
    if let Some(record) = &record {
        let lost = match &slot_state {
            None => Some("it does not exist, although the relay streamed from it"),
            Some(s) if s.wal_status.as_deref() == Some("lost") => Some("it is invalidated (wal_status = lost)"),
            Some(_) if record.recovering => Some("a recovery created it and has not finished re-publishing"),
            Some(_) => None,
        };
        if let Some(what) = lost {
            r.problem(Key::SlotLost,
                format!(
                    "slot {:?} is lost: {what}; the broker confirmed everything up to {} (last commit {}), and later events may never have been published",
                    src.slot,
                    record.confirmed_lsn,
                    record.confirmed_commit_time.as_deref().unwrap_or("unknown")
                ),
                "run `outbox-relay recover --config FILE` (a new slot, then the rows that may not have been confirmed re-published from the outbox table), or set source.on_slot_lost = \"recover\"",
            );
            return Ok(());
        }
    }
    if !polling {
        if !place.exists(client).await? {
            let may_create: bool = client
                .query_one("SELECT has_schema_privilege($1, 'CREATE')", &[&place.schema])
                .await
                .map_err(|e| crate::error::from_pg(crate::ErrorKind::SourceQuery, "reading schema privileges", e))?
                .get(0);
            if !may_create {
                r.warn(Key::StateTable,
                    format!("the relay's state table {}.outbox_relay_state does not exist and this role may not create it: a lost slot would not be detected", place.schema),
                    "run `outbox-relay setup` as the owner of the outbox table (it creates the table), then GRANT SELECT, INSERT, UPDATE on it to this role",
                );
            }
        }
        warn_unrecoverable(client, &router.tables(), r).await?;
    }
    match slot_state {
        None if src.create_slot => r.ok(Key::Slot, format!("slot {:?} does not exist yet: will be created at start (create_slot = true); events committed before that are not relayed", src.slot)),
        None => r.problem(Key::Slot, format!("slot {:?} does not exist", src.slot), "run `outbox-relay setup --config FILE`, or set source.create_slot = true"),
        Some(s) => {
            if s.database.as_deref() != Some(db.as_str()) {
                r.problem(Key::Slot, format!("slot {:?} belongs to database {:?}, not {db:?}", src.slot, s.database.unwrap_or_default()), "slot names are cluster-wide: choose another source.slot");
            } else if s.plugin != "pgoutput" {
                r.problem(Key::Slot, format!("slot {:?} uses plugin {:?}", src.slot, s.plugin), "choose another source.slot, or drop this slot if nothing else uses it");
            } else {
                let retained = s.retained_bytes.unwrap_or(0);
                match s.active_pid {
                    Some(pid) => r.warn(Key::Slot, format!("slot {:?} is active (walsender PID {pid}): another relay instance streams from it", src.slot), "fine for a hot standby: this instance will wait and take over; otherwise stop the other consumer"),
                    None if retained > RETAINED_WARN_BYTES => r.warn(Key::Slot,
                        format!("slot {:?} is inactive and retains {} MiB of WAL", src.slot, retained >> 20),
                        "start the relay soon (it catches up from the slot), or drop the slot if it is abandoned",
                    ),
                    None => r.ok(Key::Slot, format!("slot {:?} exists (pgoutput), inactive, confirmed up to {}", src.slot, s.confirmed_flush.map(|l| l.to_string()).unwrap_or_default())),
                }
            }
        }
    }
    Ok(())
}

/// A lost slot is recovered from the outbox table: rows already deleted
/// (by the writer in the same transaction, or a clean-up job) cannot be.
/// An empty table that has seen inserts and as many deletes is that shape.
async fn warn_unrecoverable(client: &Client, tables: &[(String, String)], r: &mut Report) -> crate::Result<()> {
    for (schema, table) in tables {
        let row = client
            .query_opt(
                "SELECT n_tup_ins, n_tup_del, n_live_tup FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
                &[schema, table],
            )
            .await
            .map_err(|e| crate::error::from_pg(crate::ErrorKind::SourceQuery, "reading table statistics", e))?;
        let Some(row) = row else { continue };
        let (inserted, deleted): (i64, i64) = (row.get(0), row.get(1));
        if inserted > 0 && deleted * 10 >= inserted * 9 {
            r.warn(Key::TableRetention,
                format!("{schema}.{table}: {deleted} of {inserted} inserted rows are deleted; after a lost slot, `outbox-relay recover` re-publishes from the table and cannot bring back deleted rows"),
                "keep outbox rows for longer than a recovery may need (delete them later, by age), or accept that a lost slot loses the events deleted before it was noticed",
            );
        }
    }
    Ok(())
}

/// What logical replication needs of the server and the role.
async fn replication_prereqs(
    client: &Client,
    config: &Config,
    user: &str,
    r: &mut Report,
) -> crate::Result<Option<slot::SlotState>> {
    let src = &config.source;
    let wal_level = one_text(client, "SHOW wal_level").await?;
    if wal_level == "logical" {
        r.ok(Key::PostgresWalLevel, "wal_level = logical");
    } else {
        r.problem(
            Key::PostgresWalLevel,
            format!("wal_level = {wal_level}; logical replication needs logical"),
            "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL",
        );
    }
    let row = client
        .query_one("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map_err(|e| crate::error::from_pg(crate::ErrorKind::SourceQuery, "reading the role", e))?;
    if row.get::<_, bool>(0) {
        r.ok(Key::PostgresReplication, format!("role {user:?} has REPLICATION"));
    } else {
        r.problem(
            Key::PostgresReplication,
            format!("role {user:?} lacks the REPLICATION privilege"),
            format!("ALTER ROLE {} REPLICATION;", quote_ident(user)),
        );
    }
    let slot_state = slot::slot_state(client, &src.slot).await?;
    let limits = client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)::int, \
                    current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)::int, \
                    current_setting('max_slot_wal_keep_size')",
            &[],
        )
        .await
        .map_err(|e| crate::error::from_pg(crate::ErrorKind::SourceQuery, "reading replication limits", e))?;
    let (max_slots, used_slots, max_senders, used_senders, keep): (i32, i32, i32, i32, String) =
        (limits.get(0), limits.get(1), limits.get(2), limits.get(3), limits.get(4));
    if slot_state.is_none() && used_slots >= max_slots {
        r.problem(
            Key::PostgresSlots,
            format!("all {max_slots} replication slots are in use (max_replication_slots)"),
            "raise max_replication_slots (restart needed) or drop an unused slot",
        );
    }
    if used_senders >= max_senders {
        r.problem(
            Key::PostgresWalSenders,
            format!("all {max_senders} WAL senders are in use (max_wal_senders)"),
            "raise max_wal_senders (restart needed)",
        );
    }
    if keep == "-1" {
        r.warn(
            Key::PostgresWalKeep,
            "max_slot_wal_keep_size = -1: a stuck slot can fill the disk with WAL",
            "set max_slot_wal_keep_size to a bound you can afford, and alert on outbox_relay_replication_lag_bytes",
        );
    }
    Ok(slot_state)
}

/// What polling needs: a single-column primary key to delete or mark by,
/// the privilege to do it, and the mark column.
async fn polling_tables(client: &Client, config: &Config, user: &str, r: &mut Report) -> crate::Result<()> {
    let src = &config.source;
    let mark = src.after_publish == crate::config::AfterPublish::Mark;
    let privilege = if mark { "UPDATE" } else { "DELETE" };
    for (schema, table) in Router::new(&config.routes).tables() {
        let name = format!("{schema}.{table}");
        let Some(cols) = slot::table_columns(client, &schema, &table).await? else { continue };
        match crate::source::polling::primary_key(client, &schema, &table).await {
            Ok(key) => r.ok(
                Key::TablePrimaryKey,
                format!("table {name}: polled rows are identified by its primary key {key:?}"),
            ),
            Err(e) => r.problem(
                Key::TablePrimaryKey,
                e.to_string(),
                "add a single-column primary key (the default outbox table has one: id)",
            ),
        }
        let allowed: bool = client
            .query_one(
                "SELECT has_table_privilege(format('%I.%I', $1::text, $2::text), $3)",
                &[&schema, &table, &privilege],
            )
            .await
            .map_err(|e| {
                crate::error::from_pg(crate::ErrorKind::SourceQuery, format!("checking privileges on {name}"), e)
            })?
            .get(0);
        if !allowed {
            r.problem(
                Key::TablePrivilege,
                format!(
                    "role {user:?} cannot {privilege} rows of {name} (after_publish = {:?})",
                    src.after_publish.as_str()
                ),
                format!(
                    "GRANT {privilege} ON {}.{} TO {};",
                    quote_ident(&schema),
                    quote_ident(&table),
                    quote_ident(user)
                ),
            );
        }
        declined_rows(client, config, &schema, &table, r).await?;
        if let (true, Some(m)) = (mark, &src.mark_column) {
            if !cols.iter().any(|c| &c.name == m) {
                r.problem(
                    Key::TableMarkColumn,
                    format!("mark_column {m:?} does not exist in {name}"),
                    format!(
                        "ALTER TABLE {}.{} ADD COLUMN {} timestamptz;",
                        quote_ident(&schema),
                        quote_ident(&table),
                        quote_ident(m)
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Rows counted at most, so that `check` stays quick on a large table.
const DECLINED_COUNT_CAP: i64 = 10_000;

/// Polling publishes, then deletes or marks, only the rows a route matches:
/// when every route of the table has `when` filters, the rows they all
/// decline stay in the table. Counts those (up to a cap) among the rows not
/// yet marked.
async fn declined_rows(
    client: &Client,
    config: &Config,
    schema: &str,
    table: &str,
    r: &mut Report,
) -> crate::Result<()> {
    let filters: Vec<&Vec<(String, String)>> = config
        .routes
        .iter()
        .filter(|rt| matches!(&rt.matcher, crate::config::RouteMatch::Table { schema: s, table: t } if s == schema && t == table))
        .map(|rt| &rt.when)
        .collect();
    if filters.iter().any(|w| w.is_empty()) {
        return Ok(()); // a route without `when` takes every row
    }
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
    let mut alternatives = Vec::new();
    for when in &filters {
        let mut terms = Vec::new();
        for (col, value) in when.iter() {
            params.push(value);
            terms.push(format!("{}::text = ${}", quote_ident(col), params.len()));
        }
        alternatives.push(format!("({})", terms.join(" AND ")));
    }
    let mut filter = format!("NOT coalesce({}, false)", alternatives.join(" OR "));
    if let (crate::config::AfterPublish::Mark, Some(m)) = (config.source.after_publish, &config.source.mark_column) {
        filter.push_str(&format!(" AND {} IS NULL", quote_ident(m)));
    }
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM {}.{} WHERE {filter} LIMIT {}) d",
        quote_ident(schema),
        quote_ident(table),
        DECLINED_COUNT_CAP + 1
    );
    let name = format!("{schema}.{table}");
    let count: i64 = match client.query_one(&sql, &params).await {
        Ok(row) => row.get(0),
        // A `when` column the table lacks is already reported with the routes.
        Err(e) if e.as_db_error().is_some() => return Ok(()),
        Err(e) => {
            return Err(crate::error::from_pg(crate::ErrorKind::SourceQuery, format!("counting rows of {name}"), e))
        }
    };
    let rule = "polling publishes, then deletes or marks, only the rows a route matches; the others stay in the table";
    if count == 0 {
        r.ok(
            Key::TableUnmatchedRows,
            format!("table {name}: every unpublished row matches a route's `when` filter ({rule})"),
        );
    } else {
        let shown =
            if count > DECLINED_COUNT_CAP { format!("more than {DECLINED_COUNT_CAP}") } else { count.to_string() };
        r.warn(Key::TableUnmatchedRows,
            format!("table {name}: {shown} unpublished row(s) match no route's `when` filter and stay in the table ({rule})"),
            "add a route (or a `when` value) for them, or delete them if nobody needs them",
        );
    }
    Ok(())
}

/// Every node of `broker.url`: each one reachable with confirms is reported;
/// a node that is not is a problem when none is usable, else a warning (the
/// relay moves to the others). The exchanges are checked on the first
/// usable node: a cluster shares them.
async fn check_broker(config: &Config) -> Report {
    let mut r = Report::default();
    let targets = match BrokerNodes::targets(&config.broker) {
        Ok(t) => t,
        Err(e) => {
            r.problem(Key::BrokerUrl, e.chain(), "fix broker.url or OUTBOX_RELAY_BROKER_URL[_FILE]");
            return r;
        }
    };
    let heartbeat = config.broker.heartbeat;
    let mut usable = None;
    let mut failed = Vec::new();
    for t in &targets {
        match BrokerChannel::open(t, heartbeat, CONNECT_TIMEOUT, "outbox-relay check").await {
            Ok(ch) => {
                r.ok(Key::BrokerConnection, format!("RabbitMQ {} reachable, publisher confirms enabled", t.endpoint()));
                ch.close().await;
                usable.get_or_insert(t);
            }
            Err(e) => failed.push((t.endpoint(), e)),
        }
    }
    let n = targets.len();
    for (node, e) in failed {
        if usable.is_some() {
            r.warn(
                Key::BrokerNode,
                format!("RabbitMQ node {node} of broker.url ({n} nodes) is not usable: {}", e.chain()),
                format!(
                    "the relay uses the other nodes meanwhile; {}, or remove the node from broker.url",
                    e.kind().hint()
                ),
            );
        } else {
            r.problem(Key::BrokerConnection, format!("RabbitMQ: {}", e.chain()), e.kind().hint());
        }
    }
    if let Some(target) = usable {
        let mut exchanges: Vec<&str> = config.routes.iter().map(|rt| rt.exchange.as_str()).collect();
        for rt in &config.routes {
            if rt.on_unroutable == crate::config::OnUnroutable::DeadLetter {
                exchanges.push(&rt.dead_letter_exchange);
            }
        }
        exchanges.sort_unstable();
        exchanges.dedup();
        for ex in exchanges {
            if ex.is_empty() {
                continue; // the default exchange always exists
            }
            // A failed passive declare closes the channel: one connection per exchange.
            match BrokerChannel::open(target, heartbeat, CONNECT_TIMEOUT, "outbox-relay check").await {
                Err(e) => r.problem(Key::BrokerConnection, format!("RabbitMQ: {}", e.chain()), e.kind().hint()),
                Ok(mut ch) => {
                    match ch.exchange_exists(ex).await {
                            Ok(()) => r.ok(Key::Exchange, format!("exchange {ex:?} exists")),
                            Err(_) => r.problem(Key::Exchange, format!("exchange {ex:?} does not exist"), format!("declare it (e.g. rabbitmqadmin declare exchange name={ex} type=topic durable=true); the relay never declares exchanges")),
                        }
                    ch.close().await;
                }
            }
        }
    }
    r
}
