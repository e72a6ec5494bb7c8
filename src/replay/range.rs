//! Which rows a replay reads: the tables in scope, each with its keyset
//! (`source.order_by`'s columns, then the primary key) and where it starts,
//! and the SQL of one page (keyset pagination, so a page costs the same at
//! any depth and rows written meanwhile never shift a page).

use std::sync::Arc;

use tokio_postgres::Client;

use super::Selection;
use crate::config::{Config, RouteMatch};
use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::Datum;
use crate::source::polling::{self, PolledTable};
use crate::source::postgres::quote_ident;
use crate::source::replication::slot::table_columns;

/// Type OIDs of `timestamp` and `timestamptz`.
const TIMESTAMP_TYPES: [u32; 2] = [1114, 1184];

/// Fails with a `Config` error naming `flag` unless PostgreSQL reads `text` as a timestamp.
pub(super) async fn check_time(sql: &Client, flag: &str, text: &str) -> Result<()> {
    match sql.query_one("SELECT $1::text::timestamptz", &[&text]).await {
        Ok(_) => Ok(()),
        Err(e) => match e.as_db_error() {
            Some(db) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{flag} {text:?} is not a time PostgreSQL can read ({}); use RFC 3339, e.g. 2024-05-01T12:00:00Z",
                    db.message()
                ),
            )),
            None => Err(from_pg(ErrorKind::SourceQuery, format!("checking {flag}"), e)),
        },
    }
}

/// A column the pages are ordered and continued by.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeyColumn {
    pub(super) name: String,
    /// Its type as SQL (`format_type`), for casting a text parameter back.
    pub(super) sql_type: String,
    /// Its index among the table's columns.
    pub(super) index: usize,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Lower {
    /// First column `>= $1` (one timestamp parameter).
    Since,
    /// The keyset `>=` a row's (one parameter per key column): `--from-id`.
    AtOrAfter,
    /// The keyset `>` the previous page's last row.
    After,
}

/// The clauses after `FROM table` of one page: the lower bound's parameters
/// from `$1`, then `until`'s, ascending order by the keyset, `limit` rows.
pub(super) fn page_clauses(keyset: &[KeyColumn], lower: Lower, until: bool, limit: u32) -> String {
    let first = quote_ident(&keyset[0].name);
    let cols: Vec<String> = keyset.iter().map(|k| quote_ident(&k.name)).collect();
    let cols = cols.join(", ");
    let (mut cond, used) = match lower {
        Lower::Since => (format!("{first} >= $1::text::timestamptz"), 1),
        Lower::AtOrAfter | Lower::After => {
            let op = if lower == Lower::After { ">" } else { ">=" };
            let vals: Vec<String> =
                keyset.iter().enumerate().map(|(i, k)| format!("${}::text::{}", i + 1, k.sql_type)).collect();
            (format!("({cols}) {op} ({})", vals.join(", ")), keyset.len())
        }
    };
    if until {
        cond.push_str(&format!(" AND {first} <= ${}::text::timestamptz", used + 1));
    }
    format!(" WHERE {cond} ORDER BY {cols} LIMIT {limit}")
}

/// The columns of `source.order_by` (bare names folded to lower case, as
/// PostgreSQL does), or why replay cannot page by it.
pub(super) fn order_columns(order_by: &str) -> std::result::Result<Vec<String>, String> {
    let items = polling::order_items(order_by);
    if items.iter().any(|(_, desc)| *desc) {
        return Err(format!("source.order_by = {order_by:?}: replay reads in ascending order only"));
    }
    Ok(items.into_iter().map(|(name, _)| name).collect())
}

/// One table to replay: what to read and where to start.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) table: PolledTable,
    /// `order_by`'s columns, then the primary key unless among them.
    pub(super) keyset: Vec<KeyColumn>,
    pub(super) lower: Lower,
    /// The lower bound's parameters.
    pub(super) start: Vec<String>,
}

/// The tables in scope, each with its keyset and start; checks everything
/// before the broker is touched.
pub(super) async fn plan(
    sql: &Client,
    config: &Config,
    selection: &Selection,
    only: Option<usize>,
) -> Result<Vec<Plan>> {
    let order = order_columns(&config.source.order_by)
        .map_err(|m| Error::new(ErrorKind::Config, format!("{}: {m}", config.path.display())))?;
    let mut tables = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        match &r.matcher {
            RouteMatch::Table { schema, table } if only.is_none_or(|o| o == i) => {
                if !tables.contains(&(schema.clone(), table.clone())) {
                    tables.push((schema.clone(), table.clone()));
                }
            }
            RouteMatch::Table { .. } => {}
            RouteMatch::MessagePrefix(_) => tracing::info!(route = %r.name,
                "skipping a message_prefix route: logical decoding messages are not rows and cannot be replayed"),
        }
    }
    let mut plans = Vec::new();
    for (schema, table) in tables {
        let columns = table_columns(sql, &schema, &table).await?.unwrap_or_default();
        let key = polling::primary_key(sql, &schema, &table).await.map_err(|e| match e.kind() {
            ErrorKind::Config => Error::new(
                ErrorKind::Config,
                format!("replay needs a single-column primary key on {schema}.{table} to page through it"),
            ),
            _ => e,
        })?;
        let t = PolledTable { schema, table, columns: Arc::new(columns), key };
        let mut names = order.clone();
        if !names.contains(&t.key) {
            names.push(t.key.clone());
        }
        let keyset = keyset(sql, &t, &names).await?;
        if (selection.since.is_some() || selection.until.is_some())
            && !TIMESTAMP_TYPES.contains(&t.columns[keyset[0].index].type_oid)
        {
            return Err(Error::new(ErrorKind::Config, format!(
                "--since and --until compare with the first column of source.order_by, {:?}, which is not a timestamp in {}.{} (use --from-id)",
                keyset[0].name, t.schema, t.table)));
        }
        let (lower, start) = match (&selection.since, &selection.from_id) {
            (Some(since), _) => (Lower::Since, vec![since.clone()]),
            (None, Some(id)) => match start_row(sql, &t, &keyset, id).await? {
                Some(values) => (Lower::AtOrAfter, values),
                None => {
                    tracing::info!(table = %format!("{}.{}", t.schema, t.table), id = %id, "no row with the --from-id key in this table; skipping it");
                    continue;
                }
            },
            (None, None) => unreachable!("Selection::check"),
        };
        plans.push(Plan { table: t, keyset, lower, start });
    }
    if plans.is_empty() {
        if let Some(id) = &selection.from_id {
            return Err(Error::new(
                ErrorKind::Config,
                format!("--from-id {id:?}: no table in scope has a row with that primary key"),
            ));
        }
    }
    Ok(plans)
}

/// The keyset columns named in `names`, with their SQL types.
async fn keyset(sql: &Client, t: &PolledTable, names: &[String]) -> Result<Vec<KeyColumn>> {
    Ok(polling::typed_columns(sql, t, names)
        .await?
        .into_iter()
        .map(|c| KeyColumn { name: c.name, sql_type: c.sql_type, index: c.index })
        .collect())
}

/// The keyset values of the row whose primary key is `id`, if there is one.
async fn start_row(sql: &Client, t: &PolledTable, keyset: &[KeyColumn], id: &str) -> Result<Option<Vec<String>>> {
    let cols: Vec<String> = keyset.iter().map(|k| format!("{}::text", quote_ident(&k.name))).collect();
    let query = format!(
        "SELECT {} FROM {}.{} WHERE {}::text = $1",
        cols.join(", "),
        quote_ident(&t.schema),
        quote_ident(&t.table),
        quote_ident(&t.key)
    );
    let row = sql
        .query_opt(&query, &[&id])
        .await
        .map_err(|e| from_pg(ErrorKind::SourceQuery, format!("finding --from-id in {}.{}", t.schema, t.table), e))?;
    let Some(row) = row else { return Ok(None) };
    let values: Vec<Datum> = (0..keyset.len())
        .map(|i| row.get::<_, Option<String>>(i).map_or(Datum::Null, |s| Datum::Text(s.into_bytes().into())))
        .collect();
    let positions: Vec<usize> = (0..keyset.len()).collect();
    cursor(t, keyset, &values, &positions, id).map(Some)
}

/// The keyset values of a row (`positions` index `values` per key column),
/// as the next lower bound; a NULL is an error (paging cannot pass it).
pub(super) fn cursor(
    t: &PolledTable,
    keyset: &[KeyColumn],
    values: &[Datum],
    positions: &[usize],
    key: &str,
) -> Result<Vec<String>> {
    keyset
        .iter()
        .zip(positions)
        .map(|(k, &i)| match values.get(i) {
            Some(Datum::Text(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            _ => Err(Error::new(
                ErrorKind::Data,
                format!(
                    "row {key} of {}.{} has NULL in order_by column {:?}: replay cannot page past it",
                    t.schema, t.table, k.name
                ),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_columns(cols: &[(&str, &str)]) -> Vec<KeyColumn> {
        cols.iter()
            .enumerate()
            .map(|(index, (n, t))| KeyColumn { name: (*n).into(), sql_type: (*t).into(), index })
            .collect()
    }

    #[test]
    fn pages_start_at_a_time_or_a_row_and_continue_after_the_last_row() {
        let k = key_columns(&[("created_at", "timestamp with time zone"), ("id", "uuid")]);
        assert_eq!(
            page_clauses(&k, Lower::Since, true, 500),
            " WHERE \"created_at\" >= $1::text::timestamptz AND \"created_at\" <= $2::text::timestamptz \
             ORDER BY \"created_at\", \"id\" LIMIT 500"
        );
        assert_eq!(
            page_clauses(&k, Lower::AtOrAfter, false, 10),
            " WHERE (\"created_at\", \"id\") >= ($1::text::timestamp with time zone, $2::text::uuid) \
             ORDER BY \"created_at\", \"id\" LIMIT 10"
        );
        assert_eq!(
            page_clauses(&k, Lower::After, true, 10),
            " WHERE (\"created_at\", \"id\") > ($1::text::timestamp with time zone, $2::text::uuid) \
             AND \"created_at\" <= $3::text::timestamptz ORDER BY \"created_at\", \"id\" LIMIT 10"
        );
    }

    #[test]
    fn order_by_columns_fold_like_postgresql_and_descending_is_refused() {
        assert_eq!(order_columns("created_at, id").unwrap(), ["created_at", "id"]);
        assert_eq!(order_columns("Seq ASC, \"Id\" asc").unwrap(), ["seq", "Id"]);
        assert!(order_columns("created_at DESC, id").unwrap_err().contains("ascending"));
    }
}
