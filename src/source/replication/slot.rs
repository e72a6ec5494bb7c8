//! Slot and publication management on an ordinary (non-replication) SQL
//! connection: create them, inspect `confirmed_flush_lsn` and `active_pid`,
//! and read the columns of a route's table. Metadata queries stay here, off
//! the replication connection, because some servers refuse them there.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::{Column, Lsn};
use crate::source::postgres::quote_ident;

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    /// The output plugin (must be pgoutput).
    pub plugin: String,
    /// The position the next session resumes after.
    pub confirmed_flush: Option<Lsn>,
    /// PID of the walsender streaming from it, if any.
    pub active_pid: Option<i32>,
    /// The database the slot belongs to (slot names are cluster-wide).
    pub database: Option<String>,
    /// Bytes of WAL the slot keeps (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (invalidated).
    pub wal_status: Option<String>,
}

/// Reads the slot, if it exists.
///
/// # Errors
///
/// `SourceQuery` when the catalog query fails.
pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>> {
    let row = client
        .query_opt(
            "SELECT plugin::text, confirmed_flush_lsn::text, active_pid, \
                    (pg_current_wal_lsn() - restart_lsn)::bigint, database::text, wal_status::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("reading replication slot {slot:?}"), e))?;
    Ok(row.map(|r| SlotState {
        plugin: r.get::<_, Option<String>>(0).unwrap_or_default(),
        confirmed_flush: r.get::<_, Option<String>>(1).and_then(|s| s.parse().ok()),
        active_pid: r.get(2),
        retained_bytes: r.get(3),
        database: r.get(4),
        wal_status: r.get(5),
    }))
}

/// The SQL that creates the logical slot with pgoutput; with `failover`
/// (PostgreSQL 17+) the slot is synchronised to standbys.
pub fn create_slot_sql(failover: bool) -> &'static str {
    if failover {
        // (slot_name, plugin, temporary, twophase, failover)
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)"
    } else {
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')"
    }
}

/// Creates the logical slot with pgoutput.
///
/// # Errors
///
/// `SourceQuery` (for instance without the REPLICATION privilege, or
/// `failover` on a server older than 17).
pub async fn create_slot(client: &Client, slot: &str, failover: bool) -> Result<Lsn> {
    // Creating a logical slot waits for every transaction running at that
    // moment to end: the connection's statement_timeout (our liveness bound)
    // must not turn a long-running transaction into a creation that fails
    // and is retried forever. The wait is the server's, not a dead peer.
    let unbounded = "SET statement_timeout = 0";
    client
        .batch_execute(unbounded)
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, "lifting statement_timeout", e))?;
    let created = client.query_one(create_slot_sql(failover), &[&slot]).await;
    let reset = client.batch_execute("RESET statement_timeout").await;
    let row = created.map_err(|e| from_pg(ErrorKind::SourceQuery, format!("creating replication slot {slot:?}"), e))?;
    reset.map_err(|e| from_pg(ErrorKind::SourceQuery, "restoring statement_timeout", e))?;
    let lsn: String = row.get(0);
    lsn.parse().map_err(|e| Error::with_source(ErrorKind::SourceProtocol, "slot creation returned an odd LSN", e))
}

/// The schema-qualified tables a publication covers, and whether it
/// publishes inserts.
#[derive(Debug, Clone)]
pub struct PublicationState {
    /// `schema.table` of each table `pg_publication_tables` lists: the
    /// partitions of a partitioned member unless `via_root`.
    pub tables: BTreeSet<String>,
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// Whether inserts are published.
    pub publishes_insert: bool,
    /// `publish_via_partition_root`: changes to a partition are sent as
    /// changes of its root, under the root's name.
    pub via_root: bool,
}

/// Reads the publication, if it exists.
///
/// # Errors
///
/// `SourceQuery` when the catalog query fails.
pub async fn publication_state(client: &Client, publication: &str) -> Result<Option<PublicationState>> {
    let ctx = || format!("reading publication {publication:?}");
    let Some(row) = client
        .query_opt("SELECT puballtables, pubinsert, pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, ctx(), e))?
    else {
        return Ok(None);
    };
    let tables = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, ctx(), e))?
        .iter()
        .map(|r| format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(Some(PublicationState { tables, all_tables: row.get(0), publishes_insert: row.get(1), via_root: row.get(2) }))
}

/// How a publication covers the routes' tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Tables it does not cover: `ALTER PUBLICATION ... ADD TABLE` adds them.
    pub missing: Vec<(String, String)>,
    /// Covered partitioned tables whose rows it sends under their
    /// partitions' names (`publish_via_partition_root = false`), which no
    /// route naming the parent matches.
    pub by_partition: Vec<String>,
}

/// Whether `schema.table` is covered by the publication: listed by
/// `pg_publication_tables`, or a member itself or through an ancestor
/// (`pg_publication_rel`, `pg_partition_ancestors`: without
/// `publish_via_partition_root` a partitioned member is listed as its
/// partitions, never by its own name), or partitioned with every leaf
/// listed (`FOR TABLES IN SCHEMA`); and whether it is partitioned. No row
/// when the table does not exist.
const COVERAGE_SQL: &str = "\
SELECT c.relkind = 'p', \
  EXISTS (SELECT 1 FROM pg_publication_tables pt WHERE pt.pubname = $1 AND pt.schemaname = $2 AND pt.tablename = $3) \
  OR EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prrelid IN (SELECT relid FROM pg_partition_ancestors(c.oid))) \
  OR (c.relkind = 'p' AND EXISTS (SELECT 1 FROM pg_partition_tree(c.oid) l WHERE l.isleaf) \
      AND NOT EXISTS (SELECT 1 FROM pg_partition_tree(c.oid) l JOIN pg_class lc ON lc.oid = l.relid \
                      JOIN pg_namespace ln ON ln.oid = lc.relnamespace \
                      WHERE l.isleaf AND NOT EXISTS (SELECT 1 FROM pg_publication_tables pt \
                        WHERE pt.pubname = $1 AND pt.schemaname = ln.nspname AND pt.tablename = lc.relname))) \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $2 AND c.relname = $3";

/// Which of `tables` the publication `state` describes lacks, and which it
/// covers but would send under their partitions' names.
///
/// # Errors
///
/// `SourceQuery`.
pub async fn coverage(
    client: &Client,
    publication: &str,
    state: &PublicationState,
    tables: &[(String, String)],
) -> Result<Coverage> {
    let mut out = Coverage::default();
    for (schema, table) in tables {
        let row = client.query_opt(COVERAGE_SQL, &[&publication, schema, table]).await.map_err(|e| {
            from_pg(ErrorKind::SourceQuery, format!("reading what publication {publication:?} covers"), e)
        })?;
        let (partitioned, covered) = row.map_or((false, false), |r| (r.get(0), r.get(1)));
        if !covered && !state.all_tables {
            out.missing.push((schema.clone(), table.clone()));
        } else if partitioned && !state.via_root {
            out.by_partition.push(format!("{schema}.{table}"));
        }
    }
    Ok(out)
}

/// Why a publication without `publish_via_partition_root` cannot serve
/// `tables` (partitioned parents named by routes), and the fix.
pub fn by_partition_problem(publication: &str, tables: &[String]) -> (String, String) {
    (
        format!(
            "publication {publication:?} sends the rows of the partitioned table(s) {} under their partitions' names \
             (publish_via_partition_root = false), which no route naming the parent matches",
            tables.join(", ")
        ),
        format!("ALTER PUBLICATION {} SET (publish_via_partition_root = true);", quote_ident(publication)),
    )
}

/// The options of every publication the relay creates: inserts only, and
/// a partition's rows as its root's (PostgreSQL 13+), so a route names the
/// partitioned parent and `x-outbox-table` is the parent.
const PUBLICATION_OPTIONS: &str = "WITH (publish = 'insert', publish_via_partition_root = true)";

/// The SQL that creates the publication for `tables` (`(schema, table)`).
pub fn create_publication_sql(publication: &str, tables: &[(String, String)]) -> String {
    if tables.is_empty() {
        return format!("CREATE PUBLICATION {} {PUBLICATION_OPTIONS}", quote_ident(publication));
    }
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
    format!("CREATE PUBLICATION {} FOR TABLE {} {PUBLICATION_OPTIONS}", quote_ident(publication), list.join(", "))
}

/// Creates the publication.
///
/// # Errors
///
/// `SourceQuery` (creating a publication needs ownership of the tables).
pub async fn create_publication(client: &Client, publication: &str, tables: &[(String, String)]) -> Result<()> {
    client
        .batch_execute(&create_publication_sql(publication, tables))
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("creating publication {publication:?}"), e))
}

/// Adds tables to an existing publication.
///
/// # Errors
///
/// `SourceQuery`.
pub async fn add_tables(client: &Client, publication: &str, tables: &[(String, String)]) -> Result<()> {
    let list: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t))).collect();
    client
        .batch_execute(&format!("ALTER PUBLICATION {} ADD TABLE {}", quote_ident(publication), list.join(", ")))
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("adding tables to publication {publication:?}"), e))
}

/// The columns of `schema.table`, or None when the table does not exist.
///
/// # Errors
///
/// `SourceQuery`.
pub async fn table_columns(client: &Client, schema: &str, table: &str) -> Result<Option<Vec<Column>>> {
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::oid FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("reading the columns of {schema}.{table}"), e))?;
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(rows.iter().map(|r| Column { name: r.get(0), type_oid: r.get::<_, u32>(1) }).collect()))
}

/// What fills disks: how much WAL the slot holds back and how close it is
/// to being invalidated.
#[derive(Debug, Clone, Default)]
pub struct SlotHealth {
    /// `pg_current_wal_lsn() - restart_lsn`.
    pub retained_bytes: i64,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: String,
    /// Bytes that can still be written before the slot is in danger
    /// (`safe_wal_size`; None when `max_slot_wal_keep_size = -1`).
    pub safe_wal_size: Option<i64>,
}

/// Reads the slot's health.
///
/// # Errors
///
/// `SourceQuery`.
pub async fn slot_health(client: &Client, slot: &str) -> Result<Option<SlotHealth>> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, wal_status::text, safe_wal_size::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("reading the health of slot {slot:?}"), e))?;
    Ok(row.map(|r| SlotHealth {
        retained_bytes: r.get::<_, Option<i64>>(0).unwrap_or(0),
        wal_status: r.get::<_, Option<String>>(1).unwrap_or_default(),
        safe_wal_size: r.get(2),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_are_created_for_inserts_via_the_partition_root() {
        let tables = [("public".to_owned(), "outbox".to_owned()), ("Odd Schema".to_owned(), "t\"x".to_owned())];
        assert_eq!(
            create_publication_sql("outbox_relay", &tables),
            "CREATE PUBLICATION \"outbox_relay\" FOR TABLE \"public\".\"outbox\", \"Odd Schema\".\"t\"\"x\" \
             WITH (publish = 'insert', publish_via_partition_root = true)"
        );
        assert_eq!(
            create_publication_sql("p", &[]),
            "CREATE PUBLICATION \"p\" WITH (publish = 'insert', publish_via_partition_root = true)"
        );
        let (what, fix) = by_partition_problem("p", &["public.outbox".into()]);
        assert!(what.contains("public.outbox"), "{what}");
        assert_eq!(fix, "ALTER PUBLICATION \"p\" SET (publish_via_partition_root = true);");
    }

    #[test]
    fn a_failover_slot_is_created_with_failover_true() {
        assert_eq!(create_slot_sql(false), "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')");
        // PostgreSQL 17's signature: (slot_name, plugin, temporary, twophase, failover).
        assert!(
            create_slot_sql(true).ends_with("pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)")
        );
    }
}
