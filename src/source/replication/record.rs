//! The relay's durable record of its progress, kept in the source database
//! itself (table `outbox_relay_state`, beside the first routed table): which
//! slot it streams from, on which system, up to which position the broker
//! confirmed everything, and from which time on the outbox's rows may not
//! have been confirmed.
//!
//! Why in the database: the record must outlive the relay (a restart, a new
//! container) and a failover. The table is an ordinary table, so physical
//! replication carries it to standbys and it survives a promotion, while a
//! logical slot (PostgreSQL 15 and 16) does not. The table is never in the
//! publication the relay creates.
//!
//! What it decides:
//! - a row for the slot means the relay has streamed from it: a missing slot
//!   is then an incident ([`crate::ErrorKind::SlotLost`]), never a setup step;
//! - `system_identifier` differing from the server's means another cluster;
//! - `replay_from` bounds what `recover` must re-publish from the table;
//! - `recovering` is set while a recovery has created the new slot but not yet
//!   re-published everything: `run` refuses to stream until it is done.

use tokio_postgres::Client;

use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::Lsn;
use crate::source::postgres::quote_ident;

/// `to_char` format for a `timestamptz` at UTC as RFC 3339 with microseconds
/// (`... AT TIME ZONE 'UTC'` first): how the record's times are read.
pub const RFC3339_UTC: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

/// The state table's name (in the schema of the first routed table).
pub const TABLE: &str = "outbox_relay_state";

/// The SQL that creates the state table in `schema` (`setup --print-sql`).
pub fn create_sql(schema: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (\n\
         \x20 slot_name             text        PRIMARY KEY,\n\
         \x20 database              text        NOT NULL,\n\
         \x20 system_identifier     text,\n\
         \x20 timeline              integer,\n\
         \x20 confirmed_lsn         pg_lsn      NOT NULL,\n\
         \x20 confirmed_commit_time timestamptz,\n\
         \x20 replay_from           timestamptz NOT NULL,\n\
         \x20 recovering            boolean     NOT NULL DEFAULT false,\n\
         \x20 updated_at            timestamptz NOT NULL DEFAULT now()\n\
         );",
        quote_ident(schema),
        quote_ident(TABLE)
    )
}

/// One slot's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The slot.
    pub slot: String,
    /// The database the slot belongs to.
    pub database: String,
    /// The cluster's system identifier (IDENTIFY_SYSTEM), once streamed.
    pub system_identifier: Option<String>,
    /// The timeline last streamed on.
    pub timeline: Option<i32>,
    /// Everything up to here was confirmed by the broker and reported.
    pub confirmed_lsn: Lsn,
    /// Commit time of the last transaction confirmed (RFC 3339), if any.
    pub confirmed_commit_time: Option<String>,
    /// Every row that may not have been confirmed has its ordering column at
    /// or after this time (RFC 3339, the server's clock).
    pub replay_from: String,
    /// A recovery created a new slot and has not finished re-publishing.
    pub recovering: bool,
}

/// Where the record lives for this config: the schema of the first routed
/// table (`public` for message-only routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Schema of the state table.
    pub schema: String,
    /// The slot name.
    pub slot: String,
}

impl Place {
    /// The place for `slot`, beside the routes' first table.
    pub fn new(tables: &[(String, String)], slot: &str) -> Place {
        let schema = tables.first().map_or_else(|| "public".to_owned(), |(s, _)| s.clone());
        Place { schema, slot: slot.to_owned() }
    }

    fn table(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(TABLE))
    }

    /// The [`ErrorKind::SlotLost`] error for this slot: what happened, the
    /// last confirmed position and commit time, and the recovering command.
    pub fn lost(&self, record: &Record, what: &str, config_path: &std::path::Path) -> Error {
        Error::new(
            ErrorKind::SlotLost,
            format!(
                "replication slot {:?} is lost: {what}. The relay recorded (in {}) that the broker confirmed \
                 everything up to {} (last commit {}); events committed after that may never have been published, \
                 and the relay creates no slot by itself. Recover with: outbox-relay recover --config {}",
                self.slot,
                self.table(),
                record.confirmed_lsn,
                record.confirmed_commit_time.as_deref().unwrap_or("unknown"),
                config_path.display()
            ),
        )
    }

    /// Creates the state table unless it exists (so that a role without
    /// CREATE on the schema works once `setup` made it). Returns whether the
    /// record can be kept: a role that may not create it gets a warning and
    /// the relay runs as before it kept one (a lost slot then goes unnoticed:
    /// `check` says so too).
    ///
    /// # Errors
    ///
    /// `SourceQuery` for anything but a missing privilege.
    pub async fn ensure_table(&self, client: &Client) -> Result<bool> {
        if self.exists(client).await? {
            return Ok(true);
        }
        match client.batch_execute(&create_sql(&self.schema)).await {
            Ok(()) => Ok(true),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                tracing::warn!(table = %self.table(), error = %crate::error::from_pg(ErrorKind::SourceQuery, "creating the state table", e).chain(),
                    "cannot create the relay's state table: a lost replication slot will NOT be detected; run `outbox-relay setup` as the table owner, or GRANT CREATE ON SCHEMA to this role");
                Ok(false)
            }
            Err(e) => {
                Err(from_pg(ErrorKind::SourceQuery, format!("creating the relay's state table {}", self.table()), e))
            }
        }
    }

    /// Reads the slot's record; `None` when there is none (or no table yet).
    ///
    /// # Errors
    ///
    /// `SourceQuery`.
    pub async fn read(&self, client: &Client) -> Result<Option<Record>> {
        if !self.exists(client).await? {
            return Ok(None);
        }
        let sql = format!(
            "SELECT slot_name, database, system_identifier, timeline, confirmed_lsn::text, \
                    to_char(confirmed_commit_time AT TIME ZONE 'UTC', {RFC3339_UTC}), \
                    to_char(replay_from AT TIME ZONE 'UTC', {RFC3339_UTC}), recovering \
             FROM {} WHERE slot_name = $1",
            self.table()
        );
        let row = client
            .query_opt(&sql, &[&self.slot])
            .await
            .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("reading {}", self.table()), e))?;
        Ok(row.map(|r| Record {
            slot: r.get(0),
            database: r.get(1),
            system_identifier: r.get(2),
            timeline: r.get(3),
            confirmed_lsn: r.get::<_, String>(4).parse().unwrap_or(Lsn::ZERO),
            confirmed_commit_time: r.get(5),
            replay_from: r.get(6),
            recovering: r.get(7),
        }))
    }

    /// Records a slot just created at `lsn` (a first start, `setup`, or a
    /// recovery): nothing before it needs re-publishing from this slot.
    /// `recovering` marks a recovery that has yet to re-publish; its
    /// `replay_from` is kept.
    ///
    /// # Errors
    ///
    /// `SourceQuery`.
    pub async fn created(&self, client: &Client, lsn: Lsn, recovering: bool) -> Result<()> {
        let sql = format!(
            "INSERT INTO {t} (slot_name, database, confirmed_lsn, replay_from, recovering) \
             VALUES ($1, current_database(), $2::text::pg_lsn, now(), $3) \
             ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = EXCLUDED.confirmed_lsn, \
               system_identifier = NULL, timeline = NULL, recovering = EXCLUDED.recovering, \
               database = EXCLUDED.database, updated_at = now(), \
               replay_from = CASE WHEN EXCLUDED.recovering THEN {t}.replay_from ELSE EXCLUDED.replay_from END",
            t = self.table()
        );
        self.execute(client, &sql, &[&self.slot, &lsn.to_string(), &recovering], "recording the new slot").await
    }

    /// Records the system the slot streams on (after IDENTIFY_SYSTEM).
    ///
    /// # Errors
    ///
    /// `SourceQuery`.
    pub async fn set_system(&self, client: &Client, system_identifier: &str, timeline: i32) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET system_identifier = $2, timeline = $3, updated_at = now() WHERE slot_name = $1",
            self.table()
        );
        self.execute(client, &sql, &[&self.slot, &system_identifier, &timeline], "recording the system identifier")
            .await
    }

    /// Records progress: everything up to `lsn` is confirmed; the last
    /// confirmed commit was at `commit_time`; unconfirmed rows are at or
    /// after `replay_from` (both RFC 3339).
    ///
    /// # Errors
    ///
    /// `SourceQuery`.
    pub async fn progress(&self, client: &Client, lsn: Lsn, commit_time: &str, replay_from: &str) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET confirmed_lsn = greatest(confirmed_lsn, $2::text::pg_lsn), \
               confirmed_commit_time = $3::text::timestamptz, replay_from = $4::text::timestamptz, updated_at = now() \
             WHERE slot_name = $1 AND NOT recovering",
            self.table()
        );
        self.execute(client, &sql, &[&self.slot, &lsn.to_string(), &commit_time, &replay_from], "recording progress")
            .await
    }

    /// Marks a recovery done: streaming may go on from the new slot.
    ///
    /// # Errors
    ///
    /// `SourceQuery`.
    pub async fn recovered(&self, client: &Client) -> Result<()> {
        let sql = format!("UPDATE {} SET recovering = false, updated_at = now() WHERE slot_name = $1", self.table());
        self.execute(client, &sql, &[&self.slot], "marking the recovery done").await
    }

    /// Whether the state table exists.
    ///
    /// # Errors
    ///
    /// `SourceQuery`.
    pub async fn exists(&self, client: &Client) -> Result<bool> {
        Ok(client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table()])
            .await
            .map_err(|e| from_pg(ErrorKind::SourceQuery, "looking for the relay's state table", e))?
            .get(0))
    }

    async fn execute(
        &self,
        client: &Client,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        what: &str,
    ) -> Result<()> {
        client
            .execute(sql, params)
            .await
            .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("{what} in {}", self.table()), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_table_lives_beside_the_first_routed_table() {
        let tables = vec![("app".to_owned(), "outbox".to_owned()), ("public".to_owned(), "other".to_owned())];
        assert_eq!(Place::new(&tables, "s").schema, "app");
        assert_eq!(Place::new(&[], "s").schema, "public");
        assert_eq!(Place::new(&tables, "s").table(), "\"app\".\"outbox_relay_state\"");
    }

    #[test]
    fn the_create_sql_quotes_the_schema() {
        let sql = create_sql("we\"ird");
        assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"we\"\"ird\".\"outbox_relay_state\" ("), "{sql}");
        assert!(sql.contains("replay_from           timestamptz NOT NULL"), "{sql}");
    }
}
