//! `outbox-relay setup`: create the publication and the slot if missing
//! (idempotent), or print the SQL that would. The relay runs the same code at
//! start when `source.create_slot = true`.

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::route::Router;
use crate::source::replication::slot;

/// The default outbox table from SPEC.md.
pub const DEFAULT_OUTBOX_TABLE: &str = "CREATE TABLE IF NOT EXISTS outbox (
  id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  aggregate_type text        NOT NULL,
  aggregate_id   text        NOT NULL,
  event_type     text        NOT NULL,
  payload        jsonb       NOT NULL,
  headers        jsonb,
  created_at     timestamptz NOT NULL DEFAULT now()
);";

/// The SQL `setup` runs, for `--print-sql`.
pub fn print_sql(config: &Config) -> String {
    let router = Router::new(&config.routes);
    let s = &config.source;
    format!(
        "-- The default outbox table (skip it if you route your own table):\n{DEFAULT_OUTBOX_TABLE}\n\n\
         -- The publication (needs ownership of the tables):\n{};\n\n\
         -- The logical replication slot (needs the REPLICATION privilege):\n\
         SELECT pg_create_logical_replication_slot('{}', 'pgoutput');\n",
        slot::create_publication_sql(&s.publication, &router.tables()),
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
        Some(p) if !p.all_tables => {
            let missing: Vec<(String, String)> =
                tables.iter().filter(|(sc, t)| !p.tables.contains(&format!("{sc}.{t}"))).cloned().collect();
            if !missing.is_empty() {
                slot::add_tables(client, &s.publication, &missing).await?;
                report.added_tables = missing.iter().map(|(sc, t)| format!("{sc}.{t}")).collect();
                tracing::info!(publication = %s.publication, tables = ?report.added_tables, "tables added to publication");
            }
        }
        Some(_) => {}
    }
    let target_db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| crate::error::from_pg(ErrorKind::SourceQuery, "reading the current database", e))?
        .get(0);
    match slot::slot_state(client, &s.slot).await? {
        None => {
            let lsn = slot::create_slot(client, &s.slot).await?;
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
        Some(_) => {}
    }
    Ok(report)
}
