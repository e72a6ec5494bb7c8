//! Routing: the first route that matches an event renders it into an AMQP
//! message (exchange, routing key, properties, body) per SPEC "AMQP message".
//!
//! Templates are checked against the table's real columns at start
//! ([`Router::check_table`]); a row that still cannot be rendered (NULL
//! payload, NULL template column) is a `Data` error naming the route, table,
//! event id and LSN. Nothing here skips a row: an event that matches no route
//! is an error too, unless a route for its table exists and only its `when`
//! filters declined it (an explicit choice in the config). Logical decoding
//! messages whose prefix no route names are not outbox events (any tool may
//! emit them) and are ignored.

mod cloud_event;
pub mod template;

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{EventFormat, RouteConfig, RouteMatch};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Column, Datum, EventSource, Lsn, OutboxEvent, PgTimestamp, SourcePosition};

/// Type OIDs with special handling.
const BYTEA: u32 = 17;
const JSON: u32 = 114;
const JSONB: u32 = 3802;

/// An AMQP header value (SPEC: JSON maps to string, long, double, bool,
/// table, array).
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    /// A string.
    Str(String),
    /// A signed 64-bit integer.
    Long(i64),
    /// A double.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A nested table.
    Table(Vec<(String, HeaderValue)>),
    /// An array.
    Array(Vec<HeaderValue>),
    /// JSON null.
    Void,
}

impl HeaderValue {
    fn from_json(v: &serde_json::Value) -> HeaderValue {
        match v {
            serde_json::Value::Null => HeaderValue::Void,
            serde_json::Value::Bool(b) => HeaderValue::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => HeaderValue::Long(i),
                None => HeaderValue::Double(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => HeaderValue::Str(s.clone()),
            serde_json::Value::Array(a) => HeaderValue::Array(a.iter().map(HeaderValue::from_json).collect()),
            serde_json::Value::Object(o) => {
                HeaderValue::Table(o.iter().map(|(k, v)| (k.clone(), HeaderValue::from_json(v))).collect())
            }
        }
    }
}

/// A rendered message, independent of the AMQP client library.
#[derive(Clone, Debug, PartialEq)]
pub struct OutgoingMessage {
    /// Index of the route that rendered it (metrics label).
    pub route: usize,
    /// Target exchange (shared with the route: not copied per message).
    pub exchange: Arc<str>,
    /// Routing key (at most 255 bytes).
    pub routing_key: String,
    /// `message_id`: the event's id, what consumers deduplicate by.
    pub message_id: String,
    /// `type`.
    pub message_type: Option<String>,
    /// `content_type` (shared with the route).
    pub content_type: Arc<str>,
    /// `timestamp`: commit time, Unix seconds.
    pub timestamp: u64,
    /// Headers: the route's, then `headers_column`'s (then, for a dead
    /// letter, the `x-outbox-original-*` ones); [`outbox`](Self::outbox)
    /// follows them in the AMQP table.
    pub headers: Vec<(String, HeaderValue)>,
    /// The relay's own `x-outbox-*` headers, kept typed and written straight
    /// into the frame (no strings built per message).
    pub outbox: OutboxHeaders,
    /// The body: for a row from the WAL, a slice of the frame it arrived in.
    pub body: bytes::Bytes,
    /// The W3C trace id of the event's `traceparent` (from its column or its
    /// `headers_column`), for the relay's log lines about it.
    pub trace_id: Option<TraceId>,
}

impl OutgoingMessage {
    /// Every header as it goes out, in order (for tests and diagnostics; the
    /// publisher encodes them without building this).
    pub fn all_headers(&self) -> Vec<(String, HeaderValue)> {
        let mut all = self.headers.clone();
        all.extend(self.outbox.entries());
        all
    }

    /// The trace id as text, for a log field (absent when the event has no
    /// valid `traceparent`).
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_ref().map(TraceId::as_str)
    }

    /// The value of header `name`, as it goes out.
    pub fn header(&self, name: &str) -> Option<HeaderValue> {
        self.all_headers().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The 32 lowercase hex digits of a W3C trace id (kept inline: no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    /// The trace id of a W3C `traceparent` (`version-traceid-parentid-flags`,
    /// lowercase hex, 55 characters for version 00; a later version may append
    /// `-…`), or `None` when it is malformed: version `ff`, an all-zero trace or
    /// parent id, a wrong length or separator, upper case.
    pub fn of_traceparent(tp: &str) -> Option<TraceId> {
        let b = tp.as_bytes();
        let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        let zero = |s: &[u8]| s.iter().all(|&c| c == b'0');
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let (version, trace, parent, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
        if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) || version == b"ff" || zero(trace) || zero(parent)
        {
            return None;
        }
        if b.len() > 55 && (version == b"00" || b[55] != b'-') {
            return None;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(trace);
        Some(TraceId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CloudEvents AMQP binding's prefix of attribute headers (binary mode).
/// The binding names `cloudEvents:`; some AMQP 0-9-1 clients use
/// `cloudEvents_` instead, which this relay does not write.
pub const CE_PREFIX: &str = "cloudEvents:";

/// The content type of a structured-mode CloudEvent.
pub const CE_STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// The relay's own headers (SPEC "AMQP message"): `x-outbox-table`,
/// `x-outbox-lsn` (replication), `x-outbox-replay` (replay) and
/// `x-outbox-commit-time`, in that order. A route with `outbox_headers =
/// false` sends only `x-outbox-replay`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxHeaders {
    /// The route's `outbox_headers`: table, LSN and commit time are sent.
    pub all: bool,
    /// `x-outbox-table`: `schema.table`, or `message:prefix`.
    pub table: Arc<str>,
    /// `x-outbox-lsn`, for events read from the WAL.
    pub lsn: Option<Lsn>,
    /// `x-outbox-replay = true`, for events the `replay` command publishes.
    pub replay: bool,
    /// `x-outbox-commit-time`, RFC 3339.
    pub commit_time: PgTimestamp,
}

impl OutboxHeaders {
    /// The headers as (name, value) pairs, in wire order.
    pub fn entries(&self) -> Vec<(String, HeaderValue)> {
        let mut e = Vec::new();
        if self.all {
            e.push(("x-outbox-table".to_owned(), HeaderValue::Str(self.table.to_string())));
        }
        if let Some(lsn) = self.lsn.filter(|_| self.all) {
            e.push(("x-outbox-lsn".into(), HeaderValue::Str(lsn.to_string())));
        }
        if self.replay {
            e.push(("x-outbox-replay".into(), HeaderValue::Bool(true)));
        }
        if self.all {
            e.push(("x-outbox-commit-time".into(), HeaderValue::Str(self.commit_time.to_rfc3339())));
        }
        e
    }
}

/// Route labels for metrics and logs: the configured names, in order
/// (validation gives every route a unique, non-empty name).
pub fn route_names(routes: &[RouteConfig]) -> Vec<String> {
    routes.iter().map(|r| r.name.clone()).collect()
}

/// The compiled routes, in config order.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    cfg: RouteConfig,
    /// `headers_column`, once checked against the table (a defaulted one is
    /// dropped when the table has no such column).
    headers_column: Option<String>,
    /// The exchange and content type, shared by every message.
    exchange: Arc<str>,
    content_type: Arc<str>,
    /// What goes out as `content_type`: the route's, or for structured
    /// CloudEvents [`CE_STRUCTURED_CONTENT_TYPE`].
    wire_content_type: Arc<str>,
}

impl Router {
    /// Routes in config order; call [`check_table`](Self::check_table) for
    /// each table route before rendering.
    pub fn new(routes: &[RouteConfig]) -> Self {
        Router {
            routes: routes
                .iter()
                .map(|r| Route {
                    cfg: r.clone(),
                    headers_column: r.headers_column.clone(),
                    exchange: r.exchange.as_str().into(),
                    content_type: r.content_type.as_str().into(),
                    wire_content_type: match r.format {
                        EventFormat::CloudEventsStructured => CE_STRUCTURED_CONTENT_TYPE.into(),
                        _ => r.content_type.as_str().into(),
                    },
                })
                .collect(),
        }
    }

    /// The name of route `route` ("?" for an index it does not have).
    pub fn route_name(&self, route: usize) -> &str {
        self.routes.get(route).map_or("?", |r| r.cfg.name.as_str())
    }

    /// What to do when the broker returns a message of `route`, and the
    /// dead-letter exchange for it (both resolved against `[broker]` by
    /// validation).
    ///
    /// # Panics
    ///
    /// If `route` is not an index this router rendered.
    pub fn unroutable_policy(&self, route: usize) -> (crate::config::OnUnroutable, &str) {
        let cfg = &self.routes[route].cfg;
        (cfg.on_unroutable, &cfg.dead_letter_exchange)
    }

    /// Whether any route takes logical decoding messages (only then are they
    /// requested from the server).
    pub fn wants_messages(&self) -> bool {
        self.routes.iter().any(|r| matches!(r.cfg.matcher, RouteMatch::MessagePrefix(_)))
    }

    /// The `(schema, table)` of every table route, deduplicated, in order.
    pub fn tables(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for r in &self.routes {
            if let RouteMatch::Table { schema, table } = &r.cfg.matcher {
                let t = (schema.clone(), table.clone());
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        out
    }

    /// Checks every route of `schema.table` against its real columns and
    /// returns one line per problem (empty when all is well). A defaulted
    /// `headers_column` that the table lacks is dropped silently; an explicit
    /// one is a problem.
    pub fn check_table(&mut self, schema: &str, table: &str, columns: &[Column]) -> Vec<String> {
        let has = |c: &str| columns.iter().any(|col| col.name == c);
        let mut problems = Vec::new();
        for (i, r) in self.routes.iter_mut().enumerate() {
            let RouteMatch::Table { schema: s, table: t } = &r.cfg.matcher else { continue };
            if s != schema || t != table {
                continue;
            }
            let key = |k: &str| format!("routes[{i}] ({}): {k}", r.cfg.name);
            let mut templates = vec![("routing_key", &r.cfg.routing_key), ("message_id", &r.cfg.message_id)];
            if let Some(ty) = &r.cfg.message_type {
                templates.push(("type", ty));
            }
            if r.cfg.format != EventFormat::Plain {
                templates.push(("ce_source", &r.cfg.ce_source));
                if let Some(subject) = &r.cfg.ce_subject {
                    templates.push(("ce_subject", subject));
                }
            }
            for (k, tpl) in templates.iter().copied().chain(r.cfg.headers.iter().map(|(_, t)| ("headers", t))) {
                for c in tpl.columns() {
                    if !has(c) {
                        problems.push(format!(
                            "{}: template {:?} names column {c:?}, which {schema}.{table} does not have",
                            key(k),
                            tpl.source()
                        ));
                    }
                }
            }
            if let Some(p) = &r.cfg.payload {
                if !has(p) {
                    problems.push(format!("{}: column {p:?} does not exist in {schema}.{table}", key("payload")));
                }
            }
            for (c, _) in &r.cfg.when {
                if !has(c) {
                    problems.push(format!("{}: column {c:?} does not exist in {schema}.{table}", key("when")));
                }
            }
            if let Some(h) = &r.cfg.headers_column {
                if !has(h) {
                    if r.cfg.headers_column_explicit {
                        problems.push(format!(
                            "{}: column {h:?} does not exist in {schema}.{table}",
                            key("headers_column")
                        ));
                    } else {
                        r.headers_column = None;
                    }
                }
            }
        }
        problems
    }

    /// Renders `ev` with the first matching route. `Ok(None)` means routes
    /// for its table exist and their `when` filters all declined it.
    ///
    /// # Errors
    ///
    /// `Data` when no route covers the event's table or prefix, or when the
    /// row cannot be rendered; the message names route, table, event id, LSN.
    pub fn render(&self, ev: &OutboxEvent) -> Result<Option<OutgoingMessage>> {
        let fields = Fields::of(ev);
        match self.select(ev, &fields) {
            Selected::Route(i) => return self.routes[i].render(i, ev, &fields).map(Some),
            Selected::Declined => return Ok(None),
            Selected::Uncovered => {}
        }
        if let EventSource::Message { prefix, .. } = &ev.source {
            // Logical messages are not filtered by the publication: any tool
            // in the database may emit them. A prefix no route names is not
            // ours.
            tracing::debug!(%prefix, lsn = %lsn_text(ev), "logical message with a prefix no route names: not an outbox event, ignored");
            return Ok(None);
        }
        Err(Error::new(
            ErrorKind::Data,
            format!(
                "{} at LSN {} matches no route: add a [[routes]] entry for it, or remove the table from the publication",
                fields.origin(),
                lsn_text(ev)
            ),
        ))
    }

    /// Whether routes for `ev`'s table or prefix exist and every one's
    /// `when` filter declines it: what [`render`](Self::render) answers with
    /// `Ok(None)` for a row (whether it could be rendered is not looked at).
    pub fn declines(&self, ev: &OutboxEvent) -> bool {
        self.select(ev, &Fields::of(ev)) == Selected::Declined
    }

    /// The first route that matches `ev`.
    fn select(&self, ev: &OutboxEvent, fields: &Fields<'_>) -> Selected {
        let mut covered = false;
        for (i, r) in self.routes.iter().enumerate() {
            let matches_source = match (&r.cfg.matcher, &ev.source) {
                (RouteMatch::Table { schema, table }, EventSource::Row { table: qualified, .. }) => {
                    qualified.len() == schema.len() + 1 + table.len()
                        && qualified.starts_with(schema.as_str())
                        && qualified.ends_with(table.as_str())
                        && qualified.as_bytes()[schema.len()] == b'.'
                }
                (RouteMatch::MessagePrefix(p), EventSource::Message { prefix, .. }) => p == prefix,
                _ => false,
            };
            if !matches_source {
                continue;
            }
            covered = true;
            if r.cfg.when.iter().all(|(c, v)| fields.get(c).as_deref() == Some(v.as_str())) {
                return Selected::Route(i);
            }
        }
        if covered {
            Selected::Declined
        } else {
            Selected::Uncovered
        }
    }
}

/// What [`Router::select`] found for an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selected {
    /// This route matches (source and `when`).
    Route(usize),
    /// Routes for its source exist; their `when` filters all declined it.
    Declined,
    /// No route names its table or prefix.
    Uncovered,
}

/// The event's LSN for an error message (polling and replay have none).
fn lsn_text(ev: &OutboxEvent) -> String {
    match ev.position {
        SourcePosition::Wal(lsn) => lsn.to_string(),
        SourcePosition::WalCommit(lsn) => format!("{lsn} (commit)"),
        SourcePosition::Batch(_) => "n/a (polling)".to_owned(),
        SourcePosition::Replay(_) => "n/a (replay)".to_owned(),
    }
}

impl Route {
    fn render(&self, idx: usize, ev: &OutboxEvent, f: &Fields<'_>) -> Result<OutgoingMessage> {
        let name = &self.cfg.name;
        // The event id is looked up only when an error needs it (not per event).
        let data_err = |what: String| {
            let event_id = f.get("id").map(|c| c.into_owned()).unwrap_or_else(|| String::from("?"));
            // The trace id of a traceparent column (the headers column may be
            // what failed), so the stop can be found from the trace.
            let trace = f.get_if_present("traceparent").and_then(|tp| TraceId::of_traceparent(&tp));
            let trace = trace.map(|t| format!(", trace_id {t}")).unwrap_or_default();
            Error::new(
                ErrorKind::Data,
                format!("route {name:?}: {} (event id {event_id}, LSN {}{trace}): {what}", f.origin(), lsn_text(ev)),
            )
        };
        let render = |key: &str, tpl: &template::Template| {
            tpl.render(|c| f.get(c)).map_err(|m| {
                data_err(format!("{key} template {:?} needs column {:?}, which is NULL", tpl.source(), m.column))
            })
        };
        let routing_key = render("routing_key", &self.cfg.routing_key)?;
        if routing_key.len() > 255 {
            return Err(data_err(format!("routing key is {} bytes; AMQP allows 255", routing_key.len())));
        }
        let message_id = render("message_id", &self.cfg.message_id)?;
        let message_type = self.cfg.message_type.as_ref().map(|t| render("type", t)).transpose()?;
        if message_id.len() > 255 || message_type.as_ref().is_some_and(|t| t.len() > 255) {
            return Err(data_err("message_id and type must be at most 255 bytes (AMQP short strings)".into()));
        }
        let body = f.payload(self.cfg.payload.as_deref()).map_err(data_err)?;
        if self.cfg.content_type == "application/json"
            && !f.payload_is_json_typed(self.cfg.payload.as_deref())
            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err()
        {
            return Err(data_err(format!(
                "payload is not valid JSON but the route's content_type is {:?}; fix the row or set content_type",
                self.cfg.content_type
            )));
        }
        let mut headers: Vec<(String, HeaderValue)> = Vec::with_capacity(self.cfg.headers.len());
        for (k, tpl) in &self.cfg.headers {
            headers.push((k.clone(), HeaderValue::Str(render("headers", tpl)?)));
        }
        if let Some(col) = &self.headers_column {
            if let Some(text) = f.get(col) {
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(o)) => {
                        headers.extend(o.iter().map(|(k, v)| (k.clone(), HeaderValue::from_json(v))));
                    }
                    Ok(serde_json::Value::Null) => {}
                    _ => return Err(data_err(format!("headers_column {col:?} must hold a JSON object"))),
                }
            }
        }
        // Trace context: `traceparent` / `tracestate` columns (or JSON keys of
        // a logical message) become headers of the same name, unchanged, in
        // place of a `headers_column` key of that name. Nothing is allocated
        // when the row has neither.
        for col in ["traceparent", "tracestate"] {
            if let Some(v) = f.get_if_present(col) {
                headers.retain(|(k, _)| k != col);
                headers.push((col.to_owned(), HeaderValue::Str(v.into_owned())));
            }
        }
        let trace_id = headers.iter().find_map(|(k, v)| match v {
            HeaderValue::Str(s) if k == "traceparent" => TraceId::of_traceparent(s),
            _ => None,
        });
        let table: Arc<str> = match &ev.source {
            EventSource::Row { table, .. } => table.as_str().into(),
            EventSource::Message { prefix, .. } => format!("message:{prefix}").into(),
        };
        // Polling and replay have no LSN: their sequence numbers are not WAL
        // positions. A replayed message says so, as an AMQP boolean.
        let outbox = OutboxHeaders {
            all: self.cfg.outbox_headers,
            table,
            lsn: ev.position.header_lsn(),
            replay: matches!(ev.position, SourcePosition::Replay(_)),
            commit_time: ev.commit_time,
        };
        let (headers, body) = match self.cfg.format {
            EventFormat::Plain => (headers, body),
            format => {
                let attrs = cloud_event::Attributes {
                    id: &message_id,
                    source: render("ce_source", &self.cfg.ce_source)?,
                    event_type: message_type.as_deref().unwrap_or_default(),
                    time: ev.commit_time.to_rfc3339(),
                    subject: self.cfg.ce_subject.as_ref().map(|t| render("ce_subject", t)).transpose()?,
                    trace: trace_id.map(|_| trace_headers(&headers)),
                };
                if format == EventFormat::CloudEvents {
                    (attrs.binary_headers(headers), body)
                } else {
                    (headers, attrs.structured_body(&self.content_type, &body))
                }
            }
        };
        Ok(OutgoingMessage {
            route: idx,
            exchange: Arc::clone(&self.exchange),
            routing_key,
            message_id,
            message_type,
            content_type: Arc::clone(&self.wire_content_type),
            timestamp: ev.commit_time.unix_seconds().max(0) as u64,
            headers,
            outbox,
            body,
            trace_id,
        })
    }
}

/// The `traceparent` and `tracestate` header values (the former valid).
fn trace_headers(headers: &[(String, HeaderValue)]) -> (String, Option<String>) {
    let get = |name: &str| {
        headers.iter().find_map(|(k, v)| match v {
            HeaderValue::Str(s) if k == name => Some(s.clone()),
            _ => None,
        })
    };
    (get("traceparent").unwrap_or_default(), get("tracestate"))
}

/// Field lookup over a row (its columns) or a message (its JSON content's
/// top-level keys, plus `prefix`).
enum Fields<'a> {
    Row { table: &'a str, columns: &'a Arc<Vec<Column>>, values: &'a [Datum] },
    Message { prefix: &'a str, content: &'a [u8], json: Option<serde_json::Map<String, serde_json::Value>> },
}

impl<'a> Fields<'a> {
    fn of(ev: &'a OutboxEvent) -> Self {
        match &ev.source {
            EventSource::Row { table, columns, values } => Fields::Row { table, columns, values },
            EventSource::Message { prefix, content } => Fields::Message {
                prefix,
                content,
                json: match serde_json::from_slice(content) {
                    Ok(serde_json::Value::Object(o)) => Some(o),
                    _ => None,
                },
            },
        }
    }

    fn origin(&self) -> String {
        match self {
            Fields::Row { table, .. } => format!("row of {table}"),
            Fields::Message { prefix, .. } => format!("logical message with prefix {prefix:?}"),
        }
    }

    /// The field as text; None when NULL or absent.
    fn get(&self, name: &str) -> Option<Cow<'a, str>> {
        match self {
            Fields::Row { columns, values, .. } => {
                let i = columns.iter().position(|c| c.name == name)?;
                match values.get(i)? {
                    Datum::Text(b) => Some(String::from_utf8_lossy(b)),
                    Datum::Null | Datum::UnchangedToast => None,
                }
            }
            Fields::Message { prefix, json, .. } => {
                if name == "prefix" {
                    return Some(Cow::Borrowed(prefix));
                }
                match json.as_ref()?.get(name)? {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(Cow::Owned(s.clone())),
                    v => Some(Cow::Owned(v.to_string())),
                }
            }
        }
    }

    /// Like [`get`](Self::get), for an optional column such as
    /// `traceparent`: a row's columns are scanned without allocating, and only
    /// a logical message's JSON is asked.
    fn get_if_present(&self, name: &str) -> Option<Cow<'a, str>> {
        match self {
            Fields::Row { columns, .. } if !columns.iter().any(|c| c.name == name) => None,
            _ => self.get(name),
        }
    }

    fn payload_is_json_typed(&self, column: Option<&str>) -> bool {
        match (self, column) {
            (Fields::Row { columns, .. }, Some(c)) => {
                columns.iter().any(|col| col.name == c && (col.type_oid == JSON || col.type_oid == JSONB))
            }
            _ => false,
        }
    }

    /// The body: the payload column (bytea decoded to raw bytes) or, for a
    /// message route without `payload`, the whole content.
    fn payload(&self, column: Option<&str>) -> std::result::Result<bytes::Bytes, String> {
        match (self, column) {
            (Fields::Row { .. }, None) => Err("the route has no payload column".into()),
            (Fields::Row { columns, values, table }, Some(c)) => {
                let i = columns
                    .iter()
                    .position(|col| col.name == c)
                    .ok_or_else(|| format!("payload column {c:?} is not in {table} any more"))?;
                match &values[i] {
                    Datum::Null => Err(format!("payload column {c:?} is NULL")),
                    Datum::UnchangedToast => {
                        Err(format!("payload column {c:?} was not sent by the server (unchanged TOAST)"))
                    }
                    Datum::Text(b) if columns[i].type_oid == BYTEA => decode_bytea_hex(b)
                        .map(bytes::Bytes::from)
                        .ok_or_else(|| format!("payload column {c:?} is not in bytea hex format")),
                    Datum::Text(b) => Ok(b.clone()),
                }
            }
            (Fields::Message { content, .. }, None) => Ok(bytes::Bytes::copy_from_slice(content)),
            (Fields::Message { .. }, Some(c)) => match self.get(c) {
                Some(v) => Ok(v.into_owned().into_bytes().into()),
                None => Err(format!("payload field {c:?} is missing or null in the message's JSON content")),
            },
        }
    }
}

/// PostgreSQL's bytea text output (`\x0a1b...`) to bytes.
fn decode_bytea_hex(text: &[u8]) -> Option<Vec<u8>> {
    let hex = text.strip_prefix(b"\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks_exact(2).map(|p| Some(nib(p[0])? << 4 | nib(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router over the default outbox table, from a real config text.
    fn outbox_router() -> (Router, Arc<Vec<Column>>) {
        outbox_router_with("")
    }

    /// The outbox route with `extra` route keys.
    fn outbox_router_with(extra: &str) -> (Router, Arc<Vec<Column>>) {
        let text = format!(
            "[source]\nurl = \"postgres://u@127.0.0.1/db\"\n[broker]\nurl = \"amqp://127.0.0.1/%2f\"\n\
             [[routes]]\ntable = \"public.outbox\"\nexchange = \"x\"\nrouting_key = \"{{event_type}}\"\n{extra}"
        );
        let text = text.as_str();
        let cfg = crate::config::from_str(text, std::path::Path::new("t.toml"), &|_| None).expect("valid config");
        let columns: Arc<Vec<Column>> = Arc::new(
            [("id", 2950), ("event_type", 25), ("payload", JSONB)]
                .into_iter()
                .map(|(name, type_oid)| Column { name: name.into(), type_oid })
                .collect(),
        );
        let mut router = Router::new(&cfg.routes);
        assert_eq!(router.check_table("public", "outbox", &columns), Vec::<String>::new());
        (router, columns)
    }

    fn event(columns: &Arc<Vec<Column>>, position: SourcePosition) -> OutboxEvent {
        let values = ["e1", "Added", "{}"].iter().map(|v| Datum::Text(v.as_bytes().to_vec().into())).collect();
        OutboxEvent {
            source: EventSource::Row { table: "public.outbox".into(), columns: columns.clone(), values },
            position,
            commit_time: crate::event::PgTimestamp(0),
            ordinal: 0,
        }
    }

    fn header(m: &OutgoingMessage, name: &str) -> Option<HeaderValue> {
        m.header(name)
    }

    #[test]
    fn outbox_headers_false_drops_the_relays_headers_but_still_marks_a_replay() {
        use crate::event::{BatchSeq, EndLsn, Lsn};
        let (router, columns) = outbox_router_with("outbox_headers = false\n");
        let streamed = router.render(&event(&columns, SourcePosition::Wal(EndLsn(Lsn(0x10))))).unwrap().unwrap();
        assert_eq!(streamed.all_headers(), Vec::new(), "no x-outbox-* headers");
        let replayed = router.render(&event(&columns, SourcePosition::Replay(BatchSeq(3)))).unwrap().unwrap();
        assert_eq!(replayed.all_headers(), vec![("x-outbox-replay".to_owned(), HeaderValue::Bool(true))]);
        let (router, _) = outbox_router();
        let streamed = router.render(&event(&columns, SourcePosition::Wal(EndLsn(Lsn(0x10))))).unwrap().unwrap();
        let names: Vec<String> = streamed.all_headers().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["x-outbox-table", "x-outbox-lsn", "x-outbox-commit-time"], "on by default");
    }

    #[test]
    fn a_replayed_event_carries_x_outbox_replay_true_and_no_lsn() {
        use crate::event::{BatchSeq, EndLsn, Lsn};
        let (router, columns) = outbox_router();
        let replayed = router.render(&event(&columns, SourcePosition::Replay(BatchSeq(3)))).unwrap().unwrap();
        assert_eq!(replayed.message_id, "e1", "the original id");
        assert_eq!(header(&replayed, "x-outbox-replay"), Some(HeaderValue::Bool(true)));
        assert_eq!(header(&replayed, "x-outbox-lsn"), None);
        let streamed = router.render(&event(&columns, SourcePosition::Wal(EndLsn(Lsn(0x10))))).unwrap().unwrap();
        assert_eq!(header(&streamed, "x-outbox-replay"), None);
        assert_eq!(header(&streamed, "x-outbox-lsn"), Some(HeaderValue::Str("0/10".into())));
        let polled = router.render(&event(&columns, SourcePosition::Batch(BatchSeq(1)))).unwrap().unwrap();
        assert_eq!((header(&polled, "x-outbox-replay"), header(&polled, "x-outbox-lsn")), (None, None));
    }

    /// A router over an outbox with `traceparent` and `tracestate` columns,
    /// and one event of it.
    fn traced(extra: &str, values: [Option<&str>; 5]) -> (Router, OutboxEvent) {
        let text = format!(
            "[source]\nurl = \"postgres://u@127.0.0.1/shop\"\n[broker]\nurl = \"amqp://127.0.0.1/%2f\"\n\
             [[routes]]\ntable = \"public.outbox\"\nexchange = \"x\"\nrouting_key = \"{{event_type}}\"\n{extra}"
        );
        let cfg = crate::config::from_str(&text, std::path::Path::new("t.toml"), &|_| None).expect("valid config");
        let columns: Arc<Vec<Column>> = Arc::new(
            [("id", 2950), ("event_type", 25), ("payload", JSONB), ("traceparent", 25), ("tracestate", 25)]
                .into_iter()
                .map(|(name, type_oid)| Column { name: name.into(), type_oid })
                .collect(),
        );
        let mut router = Router::new(&cfg.routes);
        assert_eq!(router.check_table("public", "outbox", &columns), Vec::<String>::new());
        let values =
            values.iter().map(|v| v.map_or(Datum::Null, |v| Datum::Text(v.as_bytes().to_vec().into()))).collect();
        let ev = OutboxEvent {
            source: EventSource::Row { table: "public.outbox".into(), columns, values },
            position: SourcePosition::Wal(crate::event::EndLsn(crate::event::Lsn(0x10))),
            commit_time: crate::event::PgTimestamp(1_500_000),
            ordinal: 0,
        };
        (router, ev)
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn s(v: &str) -> HeaderValue {
        HeaderValue::Str(v.into())
    }

    #[test]
    fn binary_mode_puts_the_attributes_in_cloudevents_headers_and_keeps_the_body() {
        let (router, ev) = traced(
            "format = \"cloudevents\"\nce_subject = \"{id}\"\noutbox_headers = false\nheaders = { h = \"v\" }\n",
            [Some("e1"), Some("Added"), Some("{\"a\": 1}"), Some(TP), Some("k=v")],
        );
        let m = router.render(&ev).unwrap().unwrap();
        assert_eq!(
            m.all_headers(),
            vec![
                ("cloudEvents:specversion".to_owned(), s("1.0")),
                ("cloudEvents:id".to_owned(), s("e1")),
                ("cloudEvents:source".to_owned(), s("/outbox-relay/shop/public.outbox")),
                ("cloudEvents:type".to_owned(), s("Added")),
                ("cloudEvents:time".to_owned(), s("2000-01-01T00:00:01.5Z")),
                ("cloudEvents:subject".to_owned(), s("e1")),
                ("cloudEvents:traceparent".to_owned(), s(TP)),
                ("cloudEvents:tracestate".to_owned(), s("k=v")),
                ("h".to_owned(), s("v")),
                ("traceparent".to_owned(), s(TP)),
                ("tracestate".to_owned(), s("k=v")),
            ]
        );
        assert_eq!(&*m.content_type, "application/json", "datacontenttype is the AMQP content type");
        assert_eq!(&m.body[..], b"{\"a\": 1}");
        assert_eq!(m.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn structured_mode_sends_the_json_event() {
        let (router, ev) = traced(
            "format = \"cloudevents-structured\"\nce_source = \"/orders/{event_type}\"\noutbox_headers = false\n",
            [Some("e1"), Some("Added"), Some("{\"a\": 1}"), None, None],
        );
        let m = router.render(&ev).unwrap().unwrap();
        assert_eq!(&*m.content_type, "application/cloudevents+json; charset=utf-8");
        assert_eq!(m.all_headers(), Vec::new());
        assert_eq!(
            std::str::from_utf8(&m.body).unwrap(),
            "{\"data\":{\"a\":1},\"datacontenttype\":\"application/json\",\"id\":\"e1\",\"source\":\"/orders/Added\",\
             \"specversion\":\"1.0\",\"time\":\"2000-01-01T00:00:01.5Z\",\"type\":\"Added\"}"
        );
        assert_eq!(m.trace_id, None);
        // A payload that is not JSON goes as data_base64, a trace as the extension.
        let (router, ev) = traced(
            "format = \"cloudevents-structured\"\ncontent_type = \"text/plain\"\noutbox_headers = false\n",
            [Some("e1"), Some("Added"), Some("foo"), Some(TP), None],
        );
        let m = router.render(&ev).unwrap().unwrap();
        assert_eq!(m.all_headers(), vec![("traceparent".to_owned(), s(TP))]);
        assert_eq!(
            std::str::from_utf8(&m.body).unwrap(),
            format!(
                "{{\"data_base64\":\"Zm9v\",\"datacontenttype\":\"text/plain\",\"id\":\"e1\",\
                 \"source\":\"/outbox-relay/shop/public.outbox\",\"specversion\":\"1.0\",\
                 \"time\":\"2000-01-01T00:00:01.5Z\",\"traceparent\":\"{TP}\",\"type\":\"Added\"}}"
            )
        );
    }

    #[test]
    fn a_plain_route_passes_trace_context_unchanged_and_a_malformed_one_is_not_a_trace_id() {
        let (router, ev) =
            traced("outbox_headers = false\n", [Some("e1"), Some("A"), Some("{}"), Some(TP), Some("a=1,b=2")]);
        let m = router.render(&ev).unwrap().unwrap();
        assert_eq!(m.all_headers(), vec![("traceparent".to_owned(), s(TP)), ("tracestate".to_owned(), s("a=1,b=2"))]);
        assert_eq!(m.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        // The column replaces a headers_column key of the same name; a
        // malformed value still goes, unchanged, but names no trace.
        let (router, ev) =
            traced("outbox_headers = false\n", [Some("e1"), Some("A"), Some("{}"), Some("garbage"), None]);
        let m = router.render(&ev).unwrap().unwrap();
        assert_eq!(m.all_headers(), vec![("traceparent".to_owned(), s("garbage"))]);
        assert_eq!(m.trace_id, None);
        let (router, ev) = traced("outbox_headers = false\n", [Some("e1"), Some("A"), Some("{}"), None, None]);
        let m = router.render(&ev).unwrap().unwrap();
        assert_eq!((m.all_headers(), m.trace_id), (Vec::new(), None));
    }

    #[test]
    fn a_data_error_names_the_trace_id() {
        let (router, ev) = traced("outbox_headers = false\n", [Some("e1"), Some("A"), None, Some(TP), None]);
        let err = router.render(&ev).unwrap_err().to_string();
        assert!(err.contains("event id e1, LSN 0/10, trace_id 4bf92f3577b34da6a3ce929d0e0e4736)"), "{err}");
    }

    #[test]
    fn traceparent_validation() {
        assert!(TraceId::of_traceparent(TP).is_some());
        assert!(TraceId::of_traceparent(&format!("01{}-extra", &TP[2..])).is_some(), "a later version may extend it");
        for bad in [
            &TP[..54],
            &TP.to_uppercase(),
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &format!("{TP}-x"),
        ] {
            assert_eq!(TraceId::of_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn bytea_hex_decodes() {
        assert_eq!(decode_bytea_hex(b"\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_bytea_hex(b"\\x0"), None);
        assert_eq!(decode_bytea_hex(b"00"), None);
    }

    #[test]
    fn json_headers_map_to_amqp_types() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a":"s","b":3,"c":1.5,"d":true,"e":[1],"f":{"g":null}}"#).unwrap();
        let HeaderValue::Table(t) = HeaderValue::from_json(&v) else { panic!() };
        assert!(t.contains(&("b".into(), HeaderValue::Long(3))));
        assert!(t.contains(&("c".into(), HeaderValue::Double(1.5))));
        assert!(t.contains(&("e".into(), HeaderValue::Array(vec![HeaderValue::Long(1)]))));
        assert!(t.contains(&("f".into(), HeaderValue::Table(vec![("g".into(), HeaderValue::Void)]))));
    }
}
