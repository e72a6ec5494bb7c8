//! How the polling source reads one table and clears what it published.
//!
//! A *pass* reads the table from its start in batches of `batch_size`, in
//! `order_by` order with the primary key as the final tie-breaker. Each
//! batch continues after the previous batch's last row (keyset
//! continuation: `(created_at, id) > ($1, $2)` for the default order, the
//! `(created_at, id)` index serves it), so rows no route matches, which stay
//! in the table, are read once per pass and never block the rows behind
//! them. The pass ends with the first batch that is not full; the next pass
//! starts from the beginning again, so a row that committed behind the
//! cursor (an older transaction's `created_at`) is read by the next pass.
//!
//! Keyset continuation needs every keyset column to be NOT NULL (a NULL is
//! never greater than anything). When an `order_by` column may be NULL, a
//! pass instead leaves out the rows it already declined, by key:
//! `AND NOT key = ANY($1::text[]::<type>[])`.
//!
//! Deleting or marking goes by the primary key compared with its own type
//! (`format_type` read once from the catalog): `key = ANY($1::text[]::uuid[])`
//! for the default table, which its primary key index serves.

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::PolledTable;
use crate::error::{from_pg, Error, ErrorKind, Result};
use crate::event::Datum;
use crate::source::postgres::quote_ident;

/// The items of an `order_by` list (validated by the configuration as
/// `col [ASC|DESC], ...`): each column (a bare name folded to lower case, as
/// PostgreSQL does; a quoted one as written) and whether it is descending.
pub(crate) fn order_items(order_by: &str) -> Vec<(String, bool)> {
    order_by
        .split(',')
        .map(|item| {
            let mut words = item.split_whitespace();
            let col = words.next().unwrap_or_default();
            let desc = words.next().is_some_and(|d| d.eq_ignore_ascii_case("desc"));
            let name = match col.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
                Some(quoted) => quoted.to_owned(),
                None => col.to_lowercase(),
            };
            (name, desc)
        })
        .collect()
}

/// `SELECT key, every column FROM t {clauses}`, each as text. The output
/// columns get names no column of the table has: a bare name in `ORDER BY`
/// means an output column before an input one, and ordering by the text
/// would neither match the keyset nor use an index.
pub(super) fn rows_sql(t: &PolledTable, clauses: &str) -> String {
    let mut alias = String::from("_r");
    while t.columns.iter().any(|c| c.name.starts_with(&alias)) {
        alias.push('_');
    }
    let cols: Vec<String> =
        t.columns.iter().enumerate().map(|(i, c)| format!("{}::text AS {alias}{i}", quote_ident(&c.name))).collect();
    format!(
        "SELECT {}::text AS {alias}key, {} FROM {}.{}{clauses}",
        quote_ident(&t.key),
        cols.join(", "),
        quote_ident(&t.schema),
        quote_ident(&t.table),
    )
}

/// A column of a table, with what paging by it needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TypedColumn {
    /// Its name.
    pub(crate) name: String,
    /// Its type as SQL (`format_type`, without a modifier), to cast a text parameter back.
    pub(crate) sql_type: String,
    /// `NOT NULL`.
    pub(crate) not_null: bool,
    /// Its index among the table's columns (in a row [`super::read_rows`] returns).
    pub(crate) index: usize,
}

/// The columns of `t` named in `names` (`source.order_by`'s and the key), in that order.
///
/// # Errors
///
/// `Config` when one is not a column of `t`; `SourceQuery`.
pub(crate) async fn typed_columns(client: &Client, t: &PolledTable, names: &[String]) -> Result<Vec<TypedColumn>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&t.schema, &t.table],
        )
        .await
        .map_err(|e| {
            from_pg(ErrorKind::SourceQuery, format!("reading the column types of {}.{}", t.schema, t.table), e)
        })?;
    names
        .iter()
        .map(|name| {
            let row = rows.iter().find(|r| r.get::<_, String>(0) == *name);
            match (row, t.columns.iter().position(|c| &c.name == name)) {
                (Some(row), Some(index)) => {
                    Ok(TypedColumn { name: name.clone(), sql_type: row.get(1), not_null: row.get(2), index })
                }
                _ => Err(Error::new(
                    ErrorKind::Config,
                    format!("source.order_by names column {name:?}, which {}.{} does not have", t.schema, t.table),
                )),
            }
        })
        .collect()
}

/// A column of the keyset.
#[derive(Debug, Clone, PartialEq)]
struct KeyColumn {
    name: String,
    desc: bool,
    /// Its type as SQL (`format_type`), to cast a text parameter back.
    sql_type: String,
    /// Its index among the table's columns (in a row [`super::read_rows`] returns).
    index: usize,
}

/// How one table is read and cleared (built once, when polling starts).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Scan {
    /// `order_by`'s columns, then the primary key unless among them.
    keyset: Vec<KeyColumn>,
    /// The primary key's place in `keyset`.
    key: usize,
    /// A keyset column may be NULL: continue by leaving out declined keys.
    by_key: bool,
}

/// Where a pass is.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Pass {
    /// The last row's keyset values (keyset continuation); None at the start.
    after: Option<Vec<String>>,
    /// The keys of the rows this pass declined (continuation by key).
    declined: Vec<String>,
}

impl Scan {
    /// Reads the types of the keyset's columns.
    ///
    /// # Errors
    ///
    /// `Config` when `order_by` names a column the table lacks; `SourceQuery`.
    pub(super) async fn prepare(client: &Client, t: &PolledTable, order_by: &str) -> Result<Scan> {
        let mut items = order_items(order_by);
        if !items.iter().any(|(n, _)| *n == t.key) {
            items.push((t.key.clone(), false));
        }
        let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
        let columns = typed_columns(client, t, &names).await?;
        let by_key = columns.iter().any(|c| !c.not_null);
        let keyset: Vec<KeyColumn> = columns
            .into_iter()
            .zip(items)
            .map(|(c, (_, desc))| KeyColumn { name: c.name, desc, sql_type: c.sql_type, index: c.index })
            .collect();
        let key = keyset.iter().position(|k| k.name == t.key).unwrap_or(keyset.len() - 1);
        Ok(Scan { keyset, key, by_key })
    }

    /// The clauses after `FROM table` of the pass's next batch, and their
    /// parameters: unpublished rows (`mark IS NULL` in mark mode) beyond
    /// where the pass is, in keyset order, `limit` rows.
    pub(super) fn batch(&self, mark: Option<&str>, pass: &Pass, limit: u32) -> (String, Vec<Param>) {
        let mut conds: Vec<String> = mark.map(|m| format!("{} IS NULL", quote_ident(m))).into_iter().collect();
        let mut params = Vec::new();
        if self.by_key {
            if !pass.declined.is_empty() {
                conds.push(format!("NOT {}", self.by_keys()));
                params.push(Param::List(pass.declined.clone()));
            }
        } else if let Some(after) = &pass.after {
            conds.push(self.beyond());
            params.extend(after.iter().cloned().map(Param::Text));
        }
        let filter = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        let order: Vec<String> = self
            .keyset
            .iter()
            .map(|k| format!("{}{}", quote_ident(&k.name), if k.desc { " DESC" } else { "" }))
            .collect();
        (format!("{filter} ORDER BY {} LIMIT {limit}", order.join(", ")), params)
    }

    /// The condition "after the row whose keyset values are `$1..$n`" in
    /// keyset order: a row comparison when every column runs the same way
    /// (what a btree index on them serves), else its expansion.
    fn beyond(&self) -> String {
        let col = |k: &KeyColumn| quote_ident(&k.name);
        let val = |i: usize, k: &KeyColumn| format!("${}::text::{}", i + 1, k.sql_type);
        let desc = self.keyset[0].desc;
        if self.keyset.iter().all(|k| k.desc == desc) {
            let cols: Vec<String> = self.keyset.iter().map(col).collect();
            let vals: Vec<String> = self.keyset.iter().enumerate().map(|(i, k)| val(i, k)).collect();
            let op = if desc { "<" } else { ">" };
            return format!("({}) {op} ({})", cols.join(", "), vals.join(", "));
        }
        let alternatives: Vec<String> = (0..self.keyset.len())
            .map(|n| {
                let mut terms: Vec<String> =
                    self.keyset[..n].iter().enumerate().map(|(i, k)| format!("{} = {}", col(k), val(i, k))).collect();
                let k = &self.keyset[n];
                terms.push(format!("{} {} {}", col(k), if k.desc { "<" } else { ">" }, val(n, k)));
                format!("({})", terms.join(" AND "))
            })
            .collect();
        format!("({})", alternatives.join(" OR "))
    }

    /// `key = ANY($1)`, the text array cast to the key's own type.
    fn by_keys(&self) -> String {
        let k = &self.keyset[self.key];
        format!("{} = ANY($1::text[]::{}[])", quote_ident(&k.name), k.sql_type)
    }

    /// Moves the pass past a batch: after its last row, and past the
    /// `declined` keys. Returns false (and resets the pass to the start)
    /// when the batch was not full: the pass is over.
    pub(super) fn advance(&self, pass: &mut Pass, last: Option<&[Datum]>, declined: &[String], full: bool) -> bool {
        match (full, last) {
            (true, Some(values)) => {
                pass.declined.extend_from_slice(declined);
                // Keyset columns are NOT NULL unless `by_key`, which needs no cursor.
                pass.after = (!self.by_key).then(|| {
                    self.keyset
                        .iter()
                        .map(|k| match values.get(k.index) {
                            Some(Datum::Text(b)) => String::from_utf8_lossy(b).into_owned(),
                            _ => String::new(),
                        })
                        .collect()
                });
                true
            }
            _ => {
                *pass = Pass::default();
                false
            }
        }
    }

    /// The statement that deletes, or marks with `mark`, the rows whose keys
    /// are in `$1` (text, cast to the key's type).
    pub(super) fn finish_sql(&self, t: &PolledTable, mark: Option<&str>) -> String {
        let table = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.table));
        let by = self.by_keys();
        match mark {
            Some(m) => format!("UPDATE {table} SET {} = now() WHERE {by}", quote_ident(m)),
            None => format!("DELETE FROM {table} WHERE {by}"),
        }
    }
}

/// A parameter of a batch query.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Param {
    /// One keyset value, as text.
    Text(String),
    /// Keys, as a text array.
    List(Vec<String>),
}

impl Param {
    /// As a parameter for `tokio_postgres`.
    pub(super) fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Param::Text(s) => s,
            Param::List(l) => l,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::Column;

    fn table() -> PolledTable {
        let columns = ["id", "aggregate_type", "created_at"]
            .iter()
            .map(|n| Column { name: (*n).to_owned(), type_oid: 25 })
            .collect();
        PolledTable { schema: "public".into(), table: "outbox".into(), columns: Arc::new(columns), key: "id".into() }
    }

    fn scan(cols: &[(&str, bool, &str, usize)], by_key: bool) -> Scan {
        let keyset = cols
            .iter()
            .map(|(n, desc, t, i)| KeyColumn { name: (*n).into(), desc: *desc, sql_type: (*t).into(), index: *i })
            .collect::<Vec<KeyColumn>>();
        let key = keyset.iter().position(|k| k.name == "id").unwrap();
        Scan { keyset, key, by_key }
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.as_bytes().to_vec().into())
    }

    #[test]
    fn rows_are_read_under_names_no_column_has_so_order_by_means_the_typed_columns() {
        assert_eq!(
            rows_sql(&table(), " ORDER BY \"created_at\", \"id\" LIMIT 5"),
            "SELECT \"id\"::text AS _rkey, \"id\"::text AS _r0, \"aggregate_type\"::text AS _r1, \
             \"created_at\"::text AS _r2 FROM \"public\".\"outbox\" ORDER BY \"created_at\", \"id\" LIMIT 5"
        );
        let mut t = table();
        t.columns =
            Arc::new(vec![Column { name: "_r0".into(), type_oid: 25 }, Column { name: "id".into(), type_oid: 25 }]);
        assert!(rows_sql(&t, "").contains("\"_r0\"::text AS _r_0, \"id\"::text AS _r_1 "), "{}", rows_sql(&t, ""));
    }

    #[test]
    fn order_by_items_fold_like_postgresql() {
        assert_eq!(order_items("created_at, id"), [("created_at".into(), false), ("id".into(), false)]);
        assert_eq!(order_items("Seq DESC, \"Id\" asc"), [("seq".into(), true), ("Id".into(), false)]);
    }

    #[test]
    fn a_pass_continues_after_the_last_row_of_a_full_batch() {
        let s = scan(&[("created_at", false, "timestamp with time zone", 2), ("id", false, "uuid", 0)], false);
        let mut pass = Pass::default();
        assert_eq!(s.batch(None, &pass, 5), (" ORDER BY \"created_at\", \"id\" LIMIT 5".to_owned(), vec![]));
        let row = [text("k1"), text("wallet"), text("2024-01-01 00:00:00+00")];
        assert!(s.advance(&mut pass, Some(&row), &["k1".into()], true));
        let (sql, params) = s.batch(Some("published_at"), &pass, 5);
        assert_eq!(
            sql,
            " WHERE \"published_at\" IS NULL AND (\"created_at\", \"id\") > \
             ($1::text::timestamp with time zone, $2::text::uuid) ORDER BY \"created_at\", \"id\" LIMIT 5"
        );
        assert_eq!(params, [Param::Text("2024-01-01 00:00:00+00".into()), Param::Text("k1".into())]);
        // A batch that is not full ends the pass: the next starts from the beginning.
        assert!(!s.advance(&mut pass, Some(&row), &[], false));
        assert_eq!(pass, Pass::default());
    }

    #[test]
    fn mixed_directions_expand_and_nullable_columns_skip_declined_keys() {
        let s = scan(&[("seq", true, "bigint", 1), ("id", false, "uuid", 0)], false);
        let pass = Pass { after: Some(vec!["7".into(), "k".into()]), declined: vec![] };
        assert_eq!(
            s.batch(None, &pass, 3).0,
            " WHERE ((\"seq\" < $1::text::bigint) OR (\"seq\" = $1::text::bigint AND \"id\" > $2::text::uuid)) \
             ORDER BY \"seq\" DESC, \"id\" LIMIT 3"
        );
        let s = scan(&[("seq", false, "bigint", 1), ("id", false, "uuid", 0)], true);
        let mut pass = Pass::default();
        assert!(s.advance(&mut pass, Some(&[text("k1"), Datum::Null]), &["k1".into(), "k0".into()], true));
        let (sql, params) = s.batch(None, &pass, 3);
        assert_eq!(sql, " WHERE NOT \"id\" = ANY($1::text[]::uuid[]) ORDER BY \"seq\", \"id\" LIMIT 3");
        assert_eq!(params, [Param::List(vec!["k1".into(), "k0".into()])]);
    }

    #[test]
    fn published_rows_are_cleared_by_key_in_its_own_type() {
        let s = scan(&[("created_at", false, "timestamp with time zone", 2), ("id", false, "uuid", 0)], false);
        assert_eq!(
            s.finish_sql(&table(), None),
            "DELETE FROM \"public\".\"outbox\" WHERE \"id\" = ANY($1::text[]::uuid[])"
        );
        assert_eq!(
            s.finish_sql(&table(), Some("published_at")),
            "UPDATE \"public\".\"outbox\" SET \"published_at\" = now() WHERE \"id\" = ANY($1::text[]::uuid[])"
        );
    }
}
