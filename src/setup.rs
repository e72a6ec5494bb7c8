//! `outbox-relay setup`: create the publication and the slot if missing
//! (idempotent), or print the SQL that would, and the line the command
//! prints. The relay runs the same [`ensure`] at start when
//! `source.create_slot = true`. Also the default outbox table's DDL, whose one
//! copy is `deploy/sql/outbox.sql` (docker-compose.yml mounts the same file,
//! `scripts/demo.sh` reads it from `setup --print-sql`).

use std::fmt;

use tokio_postgres::Client;

use crate::config::{Config, UrlTarget};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Lsn;
use crate::route::Router;
use crate::source::postgres::PgTarget;
use crate::source::replication::record::{self, Place};
use crate::source::replication::slot;

/// The default outbox table from SPEC.md and the index that serves the
/// polling order: `deploy/sql/outbox.sql`, one block without blank lines or
/// a final newline.
pub const DEFAULT_OUTBOX_TABLE: &str = include_str!("../deploy/sql/outbox.sql").trim_ascii_end();

/// The SQL `setup` runs, for `--print-sql`.
pub fn print_sql(config: &Config) -> String {
    let router = Router::new(&config.routes);
    let s = &config.source;
    let tables = router.tables();
    let place = Place::new(&tables, &s.slot);
    format!(
        "-- The default outbox table (skip it if you route your own table):\n{DEFAULT_OUTBOX_TABLE}\n\n\
         -- The publication (needs ownership of the tables):\n{};\n\n\
         -- The relay's record of its progress (needs CREATE on the schema once, then\n\
         -- SELECT, INSERT and UPDATE on the table; never add it to the publication):\n{}\n\n\
         -- The logical replication slot (needs the REPLICATION privilege):\n\
         {};\n\
         INSERT INTO {}.{} (slot_name, database, confirmed_lsn, replay_from)\n\
         \x20 SELECT slot_name, database, confirmed_flush_lsn, now() FROM pg_replication_slots WHERE slot_name = '{}';\n",
        slot::create_publication_sql(&s.publication, &tables),
        record::create_sql(&place.schema),
        slot::create_slot_sql(s.failover_slot).replace("$1", &format!("'{}'", s.slot.replace('\'', "''"))),
        crate::source::postgres::quote_ident(&place.schema),
        crate::source::postgres::quote_ident(record::TABLE),
        s.slot.replace('\'', "''"),
    )
}

/// What `ensure` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// The publication was created.
    pub created_publication: bool,
    /// Tables added to an existing publication.
    pub added_tables: Vec<String>,
    /// The slot was created.
    pub created_slot: bool,
}

/// What `outbox-relay setup` did, named: its [`Display`](fmt::Display) is the
/// line the command prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupSummary {
    /// `source.publication`.
    pub publication: String,
    /// `source.slot`.
    pub slot: String,
    /// What [`ensure`] did.
    pub report: SetupReport,
}

impl fmt::Display for SetupSummary {
    /// `publication "p": created|exists|added s.t, ...; slot "s": created|exists`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        write!(f, "publication {:?}: ", self.publication)?;
        if r.created_publication {
            f.write_str("created")?;
        } else if r.added_tables.is_empty() {
            f.write_str("exists")?;
        } else {
            write!(f, "added {}", r.added_tables.join(", "))?;
        }
        write!(f, "; slot {:?}: {}", self.slot, if r.created_slot { "created" } else { "exists" })
    }
}

/// `outbox-relay setup`: connects to the source as configured and runs
/// [`ensure`] with the configured routes.
///
/// # Errors
///
/// As connecting (`Config` for an unreadable URL file, `SourceConnection`,
/// `SourceAuth`) and as [`ensure`].
pub async fn run(config: &Config) -> Result<SetupSummary> {
    let url = crate::config::current_url(UrlTarget::Source, &config.source.url)?;
    let target = PgTarget::parse(url.expose())?;
    let sql = target.connect_sql(config.source.connect_timeout).await?;
    let router = Router::new(&config.routes);
    let report = ensure(&sql, config, &router).await?;
    Ok(SetupSummary { publication: config.source.publication.clone(), slot: config.source.slot.clone(), report })
}

/// Creates what is missing: the publication (or the tables it lacks) and the
/// slot. Idempotent.
///
/// # Errors
///
/// `SourceQuery` with the server's words (ownership, privileges).
pub async fn ensure(client: &Client, config: &Config, router: &Router) -> Result<SetupReport> {
    let s = &config.source;
    let tables = router.tables();
    let mut report = SetupReport::default();
    match slot::publication_state(client, &s.publication).await? {
        None => {
            slot::create_publication(client, &s.publication, &tables).await?;
            report.created_publication = true;
            tracing::info!(publication = %s.publication, "publication created");
        }
        Some(p) => {
            // A partitioned parent is covered by its own membership even when
            // the publication lists its partitions instead (never ADD it twice).
            let coverage = slot::coverage(client, &s.publication, &p, &tables).await?;
            if !coverage.by_partition.is_empty() {
                let (what, fix) = slot::by_partition_problem(&s.publication, &coverage.by_partition);
                return Err(Error::new(ErrorKind::Config, format!("{what}: run `{fix}`")));
            }
            if !coverage.missing.is_empty() {
                slot::add_tables(client, &s.publication, &coverage.missing).await?;
                report.added_tables = coverage.missing.iter().map(|(sc, t)| format!("{sc}.{t}")).collect();
                tracing::info!(publication = %s.publication, tables = ?report.added_tables, "tables added to publication");
            }
        }
    }
    let target_db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| crate::error::from_pg(ErrorKind::SourceQuery, "reading the current database", e))?
        .get(0);
    // The record says whether the relay has streamed from this slot: only
    // a slot it never streamed from may be created here.
    let place = Place::new(&tables, &s.slot);
    let recording = place.ensure_table(client).await?;
    let record = if recording { place.read(client).await? } else { None };
    match slot::slot_state(client, &s.slot).await? {
        None => {
            if let Some(record) = &record {
                return Err(place.lost(record, "it does not exist", &config.path));
            }
            let lsn = slot::create_slot(client, &s.slot, s.failover_slot).await?;
            if recording {
                place.created(client, lsn, false).await?;
            }
            report.created_slot = true;
            tracing::info!(slot = %s.slot, %lsn, "replication slot created");
        }
        Some(st) if st.database.as_deref() != Some(target_db.as_str()) => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "replication slot {:?} belongs to database {:?}, not {target_db:?} (slot names are cluster-wide: choose another source.slot)",
                    s.slot,
                    st.database.unwrap_or_default()
                ),
            ))
        }
        Some(st) if st.plugin != "pgoutput" => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("replication slot {:?} uses plugin {:?}; outbox-relay needs pgoutput (choose another source.slot or drop that slot)", s.slot, st.plugin),
            ))
        }
        Some(st) => {
            if recording && record.is_none() {
                // A slot made before the relay kept a record (or by hand):
                // adopt it, from its own position.
                place.created(client, st.confirmed_flush.unwrap_or(Lsn::ZERO), false).await?;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(created_publication: bool, added_tables: &[&str], created_slot: bool) -> String {
        SetupSummary {
            publication: "outbox_relay".into(),
            slot: "outbox_relay".into(),
            report: SetupReport {
                created_publication,
                added_tables: added_tables.iter().map(|t| (*t).to_owned()).collect(),
                created_slot,
            },
        }
        .to_string()
    }

    #[test]
    fn the_summary_line_says_what_was_created_or_added() {
        assert_eq!(summary(true, &[], true), r#"publication "outbox_relay": created; slot "outbox_relay": created"#);
        assert_eq!(summary(false, &[], false), r#"publication "outbox_relay": exists; slot "outbox_relay": exists"#);
        assert_eq!(
            summary(false, &["public.a", "public.b"], false),
            r#"publication "outbox_relay": added public.a, public.b; slot "outbox_relay": exists"#
        );
    }

    #[test]
    fn the_default_table_is_the_table_then_its_index_in_one_block() {
        assert!(DEFAULT_OUTBOX_TABLE.starts_with("CREATE TABLE IF NOT EXISTS outbox (\n"), "{DEFAULT_OUTBOX_TABLE}");
        assert!(
            DEFAULT_OUTBOX_TABLE
                .ends_with("\nCREATE INDEX IF NOT EXISTS outbox_created_at_id ON outbox (created_at, id);"),
            "{DEFAULT_OUTBOX_TABLE}"
        );
        assert_eq!(DEFAULT_OUTBOX_TABLE.matches(';').count(), 2);
        // The demo and the benchmark take the block up to its first blank line.
        assert!(!DEFAULT_OUTBOX_TABLE.contains("\n\n"), "{DEFAULT_OUTBOX_TABLE}");
    }
}
