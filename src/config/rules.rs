//! What a valid value looks like, one function per kind of value, free of keys and
//! defaults: `validate.rs` decides which key gets which rule and reports the `Err` text
//! under that key.
//!
//! Each message says what is expected and quotes the offending value, which is safe
//! because no rule here is ever applied to a URL.
//!
//! | value | rule |
//! | --- | --- |
//! | slot | `^[a-z0-9_]{1,63}$`, PostgreSQL's rule for replication slots |
//! | publication, schema, table, column | non-empty, at most 63 bytes (NAMEDATALEN - 1), no NUL; quoted later, so anything else goes |
//! | exchange | at most 255 bytes of letters, digits, `-`, `_`, `.`, `:` (RabbitMQ) |
//! | header name | 1 to 255 bytes (AMQP short string), not `x-outbox-*` (the relay's own) |
//! | duration | humantime (`"250ms"`, `"10s"`, `"5m"`) |

use std::net::SocketAddr;
use std::time::Duration;

/// Longest PostgreSQL identifier in bytes (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

/// A PostgreSQL name that will be quoted: `what` says which kind ("table", "column").
pub(super) fn identifier(name: &str, what: &str) -> Result<(), String> {
    identifier_defect(name).map_err(|why| format!("{why}; expected a {what} name"))
}

/// The defect of an identifier, without the "expected" part.
pub(super) fn identifier_defect(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.contains('\0') {
        Err(format!("\"{}\" contains a NUL character", name.escape_debug()))
    } else if name.len() > MAX_IDENTIFIER {
        let len = name.len();
        Err(format!("\"{name}\" is {len} bytes long, PostgreSQL allows at most 63"))
    } else {
        Ok(())
    }
}

/// A logical replication slot name.
pub(super) fn slot(name: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    if (1..=MAX_IDENTIFIER).contains(&name.len()) && name.bytes().all(allowed) {
        return Ok(());
    }
    Err(format!(
        "expected 1 to 63 lowercase letters, digits or underscores \
         (PostgreSQL's rule for slot names), got \"{}\"",
        name.escape_debug()
    ))
}

/// An AMQP exchange name; `""` (the default exchange) passes.
pub(super) fn exchange(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if name.len() <= 255 && name.chars().all(allowed) {
        return Ok(());
    }
    Err(format!(
        "\"{}\" is not a valid exchange name: expected at most 255 bytes \
         of letters, digits, '-', '_', '.' and ':'",
        name.escape_debug()
    ))
}

/// An AMQP header name set by a route.
pub(super) fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        Err("header names must be 1 to 255 bytes long".into())
    } else if name.to_ascii_lowercase().starts_with("x-outbox-") {
        Err("is reserved: the relay sets x-outbox-table, x-outbox-lsn and \
             x-outbox-commit-time itself; choose another header name"
            .into())
    } else {
        Ok(())
    }
}

/// `schema.table` or `table` (schema `public`) to `(schema, table)`. Names are exact (no
/// case folding); a part in double quotes may contain dots, with `""` for a quote.
pub(super) fn qualified_table(text: &str) -> Result<(String, String), String> {
    let (schema, table) = match split_qualified(text).unwrap_or_default().as_slice() {
        [table] => ("public".to_owned(), table.clone()),
        [schema, table] => (schema.clone(), table.clone()),
        _ => {
            return Err(format!(
                "expected \"schema.table\" or \"table\", such as \"public.outbox\" \
                 (put a name containing a dot in double quotes), got \"{}\"",
                text.escape_debug()
            ))
        }
    };
    identifier(&schema, "schema")?;
    identifier(&table, "table")?;
    Ok((schema, table))
}

/// Splits `a.b` / `"a.b".c` into parts; `None` on an unterminated quote or empty part.
fn split_qualified(text: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = text.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' if chars.next_if_eq(&'"').is_some() => part.push('"'),
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|&c| c != '.') {
                part.push(c);
            }
            part = part.trim().to_owned();
        }
        if part.is_empty() {
            return None;
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

/// An `ORDER BY` list that is safe to put into SQL as is: `col [ASC|DESC]`, separated by
/// commas, with bare names or double-quoted names without spaces, commas or quotes.
pub(super) fn order_by(text: &str) -> Result<(), String> {
    let quoted = |c: &str| c.len() > 2 && c.starts_with('"') && c.ends_with('"') && !c[1..c.len() - 1].contains('"');
    let bare = |c: &str| {
        c.starts_with(|f: char| f.is_alphabetic() || f == '_')
            && c.chars().all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '$')
    };
    let direction = |d: &str| d.eq_ignore_ascii_case("asc") || d.eq_ignore_ascii_case("desc");
    let valid = text.split(',').all(|item| {
        let mut words = item.split_whitespace();
        let column = words.next().is_some_and(|c| quoted(c) || bare(c));
        column && words.next().is_none_or(direction) && words.next().is_none()
    });
    if valid {
        return Ok(());
    }
    Err(format!(
        "expected column names separated by commas, each optionally followed by \
         ASC or DESC, such as \"created_at, id\", got \"{}\"",
        text.escape_debug()
    ))
}

/// A log level, or comma-separated `target=level` directives (a bare target, which the
/// filter syntax allows, is refused: it is far more often a misspelt level).
pub(super) fn log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|known| known.eq_ignore_ascii_case(l.trim()));
    let valid = !text.trim().is_empty()
        && text.split(',').all(|d| match d.split_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        });
    if valid {
        return Ok(());
    }
    Err(format!(
        "expected a level (off, error, warn, info, debug, trace) or comma-separated \
         target=level directives such as \"info,outbox_relay=debug\", got \"{}\"",
        text.escape_debug()
    ))
}

/// A size in bytes: a whole number with an optional unit, `B`, `KiB`,
/// `MiB` or `GiB` (`"16MiB"`, `"512KiB"`, `"1048576"`); at least 1 KiB.
pub(super) fn byte_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => 0,
    };
    let n = digits.parse::<usize>().ok().filter(|_| scale > 0).and_then(|n| n.checked_mul(scale));
    match n {
        Some(n) if n >= 1024 => Ok(n),
        Some(_) => Err(format!("must be at least 1KiB, got \"{}\"", text.escape_debug())),
        None => Err(format!(
            "expected a size such as \"16MiB\", \"512KiB\" or a number of bytes, got \"{}\"",
            text.escape_debug()
        )),
    }
}

/// A duration string.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| {
        let text = text.escape_debug();
        format!("expected a duration such as \"250ms\", \"10s\" or \"5m\", got \"{text}\" ({e})")
    })
}

/// A duration where zero makes no sense (an interval, a timeout).
pub(super) fn nonzero_duration(text: &str) -> Result<Duration, String> {
    match duration(text)? {
        d if d.is_zero() => Err(format!("must be longer than zero, got \"{text}\"")),
        d => Ok(d),
    }
}

/// AMQP negotiates heartbeats in whole seconds (a u16); zero disables them.
pub(super) fn heartbeat(text: &str) -> Result<Duration, String> {
    let heartbeat = duration(text)?;
    if heartbeat.subsec_nanos() == 0 && heartbeat.as_secs() <= 65535 {
        return Ok(heartbeat);
    }
    Err(format!(
        "must be whole seconds up to 65535s (AMQP negotiates it in seconds), \
         got \"{}\"; \"0s\" disables heartbeats",
        text.escape_debug()
    ))
}

/// A socket address to listen on; host names are refused so the bind is unambiguous.
pub(super) fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "expected an IP address and port such as \"127.0.0.1:9187\" or \"[::]:9187\" \
             (not a host name), got \"{}\"",
            text.escape_debug()
        )
    })
}

/// A table key as written in a key path: bare when TOML allows it, quoted otherwise.
pub(super) fn key_part(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("\"{}\"", name.escape_debug())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(identifier("Outbox Table", "table").is_ok());
        assert!(identifier(&"t".repeat(63), "table").is_ok());
        assert!(identifier(&"é".repeat(32), "table").unwrap_err().contains("64 bytes"));
        assert!(identifier("", "column").unwrap_err().contains("expected a column name"));
        assert!(identifier("a\0", "column").unwrap_err().contains("NUL"));
    }

    #[test]
    fn slots() {
        assert!(slot("outbox_relay_2").is_ok());
        for bad in ["Outbox", "a-b", "", "é", &"s".repeat(64)] {
            assert!(slot(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exchanges_and_headers() {
        assert!(exchange("").is_ok());
        assert!(exchange("amq.topic:v1-x_y").is_ok());
        assert!(exchange("a/b").is_err());
        assert!(header_name("X-Outbox-Table").unwrap_err().contains("reserved"));
        assert!(header_name("x-outboxish").is_ok());
    }

    #[test]
    fn qualified_tables() {
        let t = |s: &str, t: &str| Ok((s.to_owned(), t.to_owned()));
        assert_eq!(qualified_table("outbox"), t("public", "outbox"));
        assert_eq!(qualified_table(" app . Outbox "), t("app", "Outbox"));
        assert_eq!(qualified_table("\"a.b\".\"c\"\"d\""), t("a.b", "c\"d"));
        for bad in ["", "a.b.c", ".b", "a.", "\"a", "\"a\"x"] {
            assert!(qualified_table(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(byte_size("512KiB"), Ok(512 << 10));
        assert_eq!(byte_size("1048576"), Ok(1 << 20));
        assert_eq!(byte_size("2 GiB"), Ok(2 << 30));
        assert!(byte_size("16MB").unwrap_err().contains("16MiB"));
        assert!(byte_size("12").unwrap_err().contains("at least 1KiB"));
        assert!(byte_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert!(nonzero_duration("0ms").unwrap_err().contains("longer than zero"));
        assert!(duration("10").unwrap_err().contains("\"10s\""));
        assert_eq!(heartbeat("0s"), Ok(Duration::ZERO));
        assert!(heartbeat("1.5s").is_err());
        assert!(heartbeat("65536s").is_err());
    }

    #[test]
    fn listen_addresses() {
        assert!(listen_addr("0.0.0.0:80").is_ok());
        assert!(listen_addr("[::1]:0").is_ok());
        assert!(listen_addr("localhost:80").is_err());
        assert!(listen_addr("127.0.0.1").is_err());
    }

    #[test]
    fn key_parts() {
        assert_eq!(key_part("aggregate_id"), "aggregate_id");
        assert_eq!(key_part("a b"), "\"a b\"");
        assert_eq!(key_part(""), "\"\"");
    }
}
