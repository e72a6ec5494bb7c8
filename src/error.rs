//! The crate's error type: what failed, where, and what an operator should do.
//!
//! Every error carries a [`ErrorKind`] that decides the retry policy
//! ([`ErrorKind::policy`]) and an operator hint ([`ErrorKind::hint`]), a
//! human context line (which table, event id, LSN, host), and the underlying
//! cause as `source` (never formatted into the message, so `{:#}` shows the
//! chain once). No variant ever holds a password: URLs are redacted before
//! they reach an error.

use std::fmt;

/// What went wrong, coarsely. Decides retry versus stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration is invalid. Never retried.
    Config,
    /// PostgreSQL could not be reached or the connection broke.
    SourceConnection,
    /// PostgreSQL refused the credentials.
    SourceAuth,
    /// The server sent bytes we could not decode, or a protocol step failed.
    SourceProtocol,
    /// A SQL statement or replication command failed on the server.
    SourceQuery,
    /// Another process is streaming from the slot (SQLSTATE 55006).
    SlotInUse,
    /// The slot or publication is missing and `create_slot = false`.
    SlotMissing,
    /// The slot the relay streamed from is lost: missing although the
    /// relay's record says it streamed from it, invalidated (`wal_status =
    /// lost`), or on another system than recorded. Events after the last
    /// confirmed position may never have been published: the relay stops
    /// (exit code 3) and never creates a slot by itself; `recover` does.
    SlotLost,
    /// The broker could not be reached, refused the login, or the connection broke.
    BrokerConnection,
    /// The broker closed our channel (missing exchange, access refused, ...).
    BrokerChannel,
    /// A publish was not confirmed within `confirm_timeout`.
    ConfirmTimeout,
    /// A row cannot be turned into a message (NULL payload, NULL template
    /// column, no route). Stops the relay: the row is never skipped.
    Data,
    /// Local I/O (HTTP listener, files).
    Io,
    /// A command (`recover`) was stopped before it finished; running it
    /// again completes it.
    Interrupted,
    /// A task of the relay panicked: a bug. The pipeline restarts from the
    /// slot (nothing was confirmed that the broker did not confirm), but it is
    /// not counted as a reconnect of either end.
    Panic,
}

/// Which end of the pipeline an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// PostgreSQL: the replication or the SQL connection.
    Source,
    /// RabbitMQ: the connection, the channel or its confirms.
    Broker,
}

impl End {
    /// Label for the `target` of `outbox_relay_reconnects_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Source => "source",
            End::Broker => "broker",
        }
    }
}

/// What the relay does about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Tear the pipeline down and start again from the slot after a backoff.
    Retry,
    /// Stop with a non-zero exit code: a person must fix something first.
    Stop,
}

impl ErrorKind {
    /// Retry or stop.
    pub fn policy(self) -> Policy {
        match self {
            ErrorKind::Config
            | ErrorKind::Data
            | ErrorKind::SlotMissing
            | ErrorKind::SlotLost
            | ErrorKind::Interrupted => Policy::Stop,
            _ => Policy::Retry,
        }
    }

    /// Which end failed, for the reconnect metric; `None` for errors of the
    /// relay itself (configuration, data, local I/O, a panic).
    pub fn end(self) -> Option<End> {
        match self {
            ErrorKind::SourceConnection
            | ErrorKind::SourceAuth
            | ErrorKind::SourceProtocol
            | ErrorKind::SourceQuery
            | ErrorKind::SlotInUse
            | ErrorKind::SlotMissing
            | ErrorKind::SlotLost => Some(End::Source),
            ErrorKind::BrokerConnection | ErrorKind::BrokerChannel | ErrorKind::ConfirmTimeout => Some(End::Broker),
            ErrorKind::Config | ErrorKind::Data | ErrorKind::Io | ErrorKind::Interrupted | ErrorKind::Panic => None,
        }
    }

    /// Whether the replication connection can still carry a status update
    /// after this error (it can unless the error is about that connection's
    /// transport or byte stream), so what the broker confirmed is reported
    /// before the restart.
    pub fn source_connection_usable(self) -> bool {
        !matches!(self, ErrorKind::SourceConnection | ErrorKind::SourceProtocol)
    }

    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::SourceConnection => "source_connection",
            ErrorKind::SourceAuth => "source_auth",
            ErrorKind::SourceProtocol => "source_protocol",
            ErrorKind::SourceQuery => "source_query",
            ErrorKind::SlotInUse => "slot_in_use",
            ErrorKind::SlotMissing => "slot_missing",
            ErrorKind::SlotLost => "slot_lost",
            ErrorKind::BrokerConnection => "broker_connection",
            ErrorKind::BrokerChannel => "broker_channel",
            ErrorKind::ConfirmTimeout => "confirm_timeout",
            ErrorKind::Data => "data",
            ErrorKind::Io => "io",
            ErrorKind::Interrupted => "interrupted",
            ErrorKind::Panic => "panic",
        }
    }

    /// What an operator should do about it.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::Config => "fix the configuration file or environment variable named above",
            ErrorKind::SourceConnection => "check that PostgreSQL is running and reachable at the configured host and port",
            ErrorKind::SourceAuth => "check the user and password in source.url (or OUTBOX_RELAY_SOURCE_URL[_FILE]) and pg_hba.conf; the role needs LOGIN and REPLICATION",
            ErrorKind::SourceProtocol => "this is likely a bug or an unsupported server version; please report it with the log line",
            ErrorKind::SourceQuery => "read the server's message and hint above; `outbox-relay check` lists the usual causes",
            ErrorKind::SlotInUse => "another relay instance is streaming from this slot; this one waits as a standby",
            ErrorKind::SlotMissing => "run `outbox-relay setup --config FILE` or set source.create_slot = true",
            ErrorKind::SlotLost => "events after the last confirmed position may not have been published: run `outbox-relay recover --config FILE` (it creates a new slot, then re-publishes from the outbox table every row that may not have been confirmed), or set source.on_slot_lost = \"recover\"",
            ErrorKind::BrokerConnection => "check that RabbitMQ is running and reachable and that broker.url's credentials and vhost are right",
            ErrorKind::BrokerChannel => "read the broker's reply above: a missing exchange must be declared, a refused access needs permissions",
            ErrorKind::ConfirmTimeout => "the broker did not confirm in time; the relay reconnects and republishes from the last confirmed position",
            ErrorKind::Data => "the row is committed in the WAL and cannot be edited there: change the route so it can render the row (or route it elsewhere), then restart; the relay resumes at this row. Skipping it means losing it: only `SELECT pg_replication_slot_advance(slot, lsn)` past it does that, deliberately",
            ErrorKind::Io => "check the local resource named above",
            ErrorKind::Interrupted => "run the same command again: it starts over and finishes",
            ErrorKind::Panic => "a bug in outbox-relay: the pipeline restarts from the slot and nothing is lost; please report it with the log line",
        }
    }
}

/// The crate's error.
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` described by `context`.
    pub(crate) fn new(kind: ErrorKind, context: impl Into<String>) -> Self {
        Error { kind, context: context.into(), source: None }
    }

    /// An error of `kind` described by `context`, caused by `source`.
    pub(crate) fn with_source(
        kind: ErrorKind,
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error { kind, context: context.into(), source: Some(source.into()) }
    }

    /// The kind, which decides the policy.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The context line, without the cause.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The message with its whole cause chain on one line.
    pub fn chain(&self) -> String {
        let mut out = self.context.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(e) = cur {
            out.push_str(": ");
            out.push_str(&e.to_string());
            cur = e.source();
        }
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("context", &self.context)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A PostgreSQL ErrorResponse, rendered field by field (SQLSTATE, message,
/// detail, hint) because the server's own words are the best diagnosis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbError {
    /// ERROR, FATAL, ...
    pub severity: String,
    /// SQLSTATE, e.g. 28P01 for a wrong password.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "server said {} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (detail: {d})")?;
        }
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// SQLSTATE 55000 (object not in prerequisite state), which PostgreSQL
/// raises for a slot invalidated by `max_slot_wal_keep_size`.
const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";

impl DbError {
    /// Whether the server refuses the slot because it was invalidated ("can
    /// no longer get changes from replication slot", detail "This slot has
    /// been invalidated ...").
    pub fn slot_invalidated(&self) -> bool {
        self.code == OBJECT_NOT_IN_PREREQUISITE_STATE
            && (self.message.contains("can no longer get changes")
                || self.detail.as_deref().is_some_and(|d| d.contains("invalidated")))
    }

    /// From tokio-postgres's server error, keeping every field.
    pub fn from_tokio(e: &tokio_postgres::error::DbError) -> Self {
        DbError {
            severity: e.severity().to_owned(),
            code: e.code().code().to_owned(),
            message: e.message().to_owned(),
            detail: e.detail().map(str::to_owned),
            hint: e.hint().map(str::to_owned),
        }
    }
}

/// Turn a tokio-postgres error into ours, rendering the server's fields
/// ourselves (its `Display` hides them behind "db error").
pub(crate) fn from_pg(kind: ErrorKind, context: impl Into<String>, e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => {
            let db = DbError::from_tokio(db);
            let kind = match db.code.as_str() {
                "28P01" | "28000" => ErrorKind::SourceAuth,
                "55006" => ErrorKind::SlotInUse,
                _ => kind,
            };
            Error::with_source(kind, context, db)
        }
        None => {
            let kind = if e.is_closed() { ErrorKind::SourceConnection } else { kind };
            Error::with_source(kind, context, e)
        }
    }
}
