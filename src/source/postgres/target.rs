//! The connection target: libpq's URL and keyword forms, split into what
//! tokio-postgres understands and the TLS keys it does not (`sslmode`,
//! `sslrootcert`, `sslcert`, `sslkey`), which we handle ourselves; and SQL
//! identifier and literal quoting.

use tokio_postgres::config::Host;

use crate::config::secret::redact_url;
use crate::error::{Error, ErrorKind, Result};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it (libpq's default).
    Prefer,
    /// TLS, no certificate check.
    Require,
    /// TLS, certificate chain checked against `sslrootcert`.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A parsed connection target. [`PgTarget::connect_sql`] opens an SQL
/// connection to it.
#[derive(Clone)]
pub struct PgTarget {
    /// Everything but the TLS keys, as tokio-postgres parsed it.
    pub config: tokio_postgres::Config,
    /// The requested TLS mode.
    pub ssl_mode: SslMode,
    /// `sslrootcert`, if given.
    pub ssl_root_cert: Option<String>,
    /// `sslcert`, if given.
    pub ssl_cert: Option<String>,
    /// `sslkey`, if given.
    pub ssl_key: Option<String>,
    /// The URL with the password replaced, for logs.
    pub redacted: String,
    /// Keepalive, `TCP_USER_TIMEOUT` and `statement_timeout` for every
    /// connection to this target (default: from a 60 s receive timeout).
    pub liveness: super::Liveness,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget").field("url", &self.redacted).field("ssl_mode", &self.ssl_mode).finish()
    }
}

const TLS_KEYS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslnegotiation"];

impl PgTarget {
    /// Parses a libpq URL (`postgres://...`) or keyword string (`host=... user=...`).
    ///
    /// # Errors
    ///
    /// `Config` with the redacted URL when the string does not parse.
    pub fn parse(url: &str) -> Result<PgTarget> {
        let redacted = redact_url(url);
        let shown = redacted.clone();
        let bad = move |msg: String| Error::new(ErrorKind::Config, format!("source url {shown}: {msg}"));
        let mut tls: Vec<(String, String)> = Vec::new();
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut u = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
            let pairs: Vec<(String, String)> = u.query_pairs().into_owned().collect();
            let (t, keep): (Vec<_>, Vec<_>) = pairs.into_iter().partition(|(k, _)| TLS_KEYS.contains(&k.as_str()));
            tls = t;
            if keep.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(keep);
            }
            u.to_string()
        } else {
            let mut keep = Vec::new();
            for (k, v) in keyword_pairs(url).map_err(&bad)? {
                if TLS_KEYS.contains(&k.as_str()) {
                    tls.push((k, v));
                } else {
                    keep.push(format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")));
                }
            }
            keep.join(" ")
        };
        let config: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        let mut target = PgTarget {
            config,
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            ssl_cert: None,
            ssl_key: None,
            redacted,
            liveness: super::Liveness::default(),
        };
        for (k, v) in tls {
            match k.as_str() {
                "sslmode" => {
                    target.ssl_mode = SslMode::parse(&v).ok_or_else(|| {
                        bad(format!(
                            "sslmode {v:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        ))
                    })?
                }
                "sslrootcert" => target.ssl_root_cert = Some(v),
                "sslcert" => target.ssl_cert = Some(v),
                "sslkey" => target.ssl_key = Some(v),
                _ => {}
            }
        }
        if target.config.get_user().is_none() {
            target.config.user(std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
        }
        Ok(target)
    }

    /// The first host and port, as "host:port" for messages.
    pub fn endpoint(&self) -> String {
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => format!("{h}:{port}"),
            Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
            None => format!("localhost:{port}"),
        }
    }

    /// The database name (defaults to the user name, as libpq does).
    pub fn dbname(&self) -> String {
        self.config
            .get_dbname()
            .map(str::to_owned)
            .or_else(|| self.config.get_user().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Splits a libpq keyword string into pairs (values may be single-quoted,
/// with backslash escapes).
fn keyword_pairs(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(format!("expected '=' after keyword {key:?}"));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut val = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    Some('\\') => val.push(it.next().ok_or("unterminated escape")?),
                    Some('\'') => break,
                    Some(c) => val.push(c),
                    None => return Err(format!("unterminated quoted value for {key:?}")),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                val.push(c);
                it.next();
            }
        }
        out.push((key, val));
    }
}

/// Quotes an SQL identifier: `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal: `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_form_keeps_tls_keys_apart() {
        let t = PgTarget::parse(
            "postgres://relay:pw@127.0.0.1:5433/app?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(t.ssl_mode, SslMode::VerifyFull);
        assert_eq!(t.ssl_root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(t.config.get_user(), Some("relay"));
        assert_eq!(t.config.get_ports(), &[5433]);
        assert_eq!(t.dbname(), "app");
        assert!(!format!("{t:?}").contains("pw@"));
    }

    #[test]
    fn keyword_form_parses_quoted_values() {
        let t = PgTarget::parse("host=127.0.0.1 port=5433 user=relay password='a b\\'c' dbname=app sslmode=disable")
            .unwrap();
        assert_eq!(t.config.get_password(), Some(&b"a b'c"[..]));
        assert_eq!(t.ssl_mode, SslMode::Disable);
        assert_eq!(t.endpoint(), "127.0.0.1:5433");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("x'; DROP TABLE t; --"), "'x''; DROP TABLE t; --'");
    }
}
