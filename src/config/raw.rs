//! Phase one: the TOML text as a serde mirror, with unknown keys denied.
//!
//! Every field is an `Option` of the plainest type TOML can give (strings for durations,
//! enums and paths; `i64` for numbers), so that `validate.rs` applies the defaults and
//! reports bad values itself, all of them at once, with its own wording.
//!
//! What serde still rejects here (TOML syntax, an unknown key, a value of the wrong TOML
//! type) stops `toml` at the first error. To report more than one, [`parse`] blanks out
//! the offending line (keeping every byte offset, so later line numbers stay right) and
//! tries again, up to a limit. The keys it blanked are returned so that validation does
//! not also report them as missing.
//!
//! `toml`'s own `Display` of an error quotes the offending source line, which may hold a
//! password, so it is never used: messages are built from `message()` and `span()`, and
//! any URL-like string that serde quotes in "invalid type: string …" is redacted.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::brokers::RawUrls;
use super::secret::{redact_url, SecretString};
use super::Problem;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub source: Option<RawSource>,
    pub broker: Option<RawBroker>,
    pub routes: Option<Vec<RawRoute>>,
    pub http: Option<RawHttp>,
    pub log: Option<RawLog>,
}

/// `[source]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub mode: Option<String>,
    pub url: Option<SecretString>,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub create_slot: Option<bool>,
    pub on_slot_lost: Option<String>,
    pub failover_slot: Option<bool>,
    pub recover_margin: Option<String>,
    pub status_interval: Option<String>,
    pub connect_timeout: Option<String>,
    pub receive_timeout: Option<String>,
    pub poll_interval: Option<String>,
    pub batch_size: Option<i64>,
    pub order_by: Option<String>,
    pub after_publish: Option<String>,
    pub mark_column: Option<String>,
}

/// `[broker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBroker {
    pub url: Option<RawUrls>,
    pub node_order: Option<String>,
    pub shuffle_key: Option<String>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub max_in_flight: Option<i64>,
    pub max_in_flight_bytes: Option<String>,
    pub confirm_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub on_unroutable: Option<String>,
    pub dead_letter_exchange: Option<String>,
    pub heartbeat: Option<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: Option<String>,
    pub table: Option<String>,
    pub message_prefix: Option<String>,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub message_id: Option<String>,
    #[serde(rename = "type")]
    pub message_type: Option<String>,
    pub payload: Option<String>,
    pub content_type: Option<String>,
    pub headers: Option<OrderedTable>,
    pub headers_column: Option<String>,
    pub outbox_headers: Option<bool>,
    pub format: Option<String>,
    pub ce_source: Option<String>,
    pub ce_subject: Option<String>,
    pub when: Option<OrderedTable>,
    pub on_unroutable: Option<String>,
    pub dead_letter_exchange: Option<String>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub listen: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// A table of string values that keeps the file's order (TOML forbids duplicate keys,
/// so a `Vec` loses nothing).
#[derive(Debug, Default)]
pub(super) struct OrderedTable(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = OrderedTable;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table of strings, such as { name = \"value\" }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedTable, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    entries.push((key, value));
                }
                Ok(OrderedTable(entries))
            }
        }
        deserializer.deserialize_map(TableVisitor)
    }
}

/// The outcome of phase one.
#[derive(Debug)]
pub(super) struct Parsed {
    /// The mirror, possibly with some lines blanked out; `None` when the text could not
    /// be parsed at all.
    pub raw: Option<RawConfig>,
    /// Syntax, unknown-key and wrong-type problems, in the order found.
    pub problems: Vec<Problem>,
    /// Key paths whose lines were blanked; validation drops its own problems under them.
    pub suppressed: Vec<String>,
}

/// How many serde errors to collect before giving up on the rest.
const MAX_SERDE_PROBLEMS: usize = 32;

/// Parses `text` into the raw mirror, collecting as many serde-level problems as it can.
pub(super) fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed { raw: None, problems: Vec::new(), suppressed: Vec::new() };
    if let Err(e) = text.parse::<toml::Table>() {
        parsed.problems.push(problem_at(text, &e, "invalid TOML: "));
        return parsed;
    }
    let mut buf = text.to_owned();
    while parsed.problems.len() < MAX_SERDE_PROBLEMS {
        let err = match toml::from_str::<RawConfig>(&buf) {
            Ok(raw) => {
                parsed.raw = Some(raw);
                break;
            }
            Err(err) => err,
        };
        let problem = problem_at(&buf, &err, "");
        parsed.suppressed.push(problem.key.clone());
        parsed.problems.push(problem);
        // Blank the offending statement and look for the next problem. Stop when there
        // is nothing left to blank or when blanking broke the document.
        let Some(span) = err.span() else { break };
        let range = blank_range(&buf, span.start, span.end);
        if buf[range.clone()].trim().is_empty() {
            break;
        }
        blank(&mut buf, range);
        if buf.parse::<toml::Table>().is_err() {
            break;
        }
    }
    parsed
}

fn problem_at(text: &str, err: &toml::de::Error, prefix: &str) -> Problem {
    // One line per problem: toml's multi-line messages are joined.
    let message = err.message().trim().replace('\n', "; ");
    let message = scrub(&message.replacen("unknown field", "unknown key", 1));
    match err.span() {
        Some(span) => {
            let start = floor_boundary(text, span.start);
            let (line, column) = line_column(text, start);
            Problem::new(key_path_at(text, start), format!("{prefix}{message} (line {line}, column {column})"))
        }
        None => Problem::new("(document)", format!("{prefix}{message}")),
    }
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// Best-effort key path (`routes[1].headers.x`) of the statement at `offset`, found from
/// the text: the last table header before it, and the key on its line. Good for the
/// shapes this config uses; quoted keys containing dots come out split.
fn key_path_at(text: &str, offset: usize) -> String {
    let path = key_path_parts(text, offset);
    if path.is_empty() {
        "(document)".into()
    } else {
        path
    }
}

fn key_path_parts(text: &str, offset: usize) -> String {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    let column = offset - line_start;
    if trim_line(line).starts_with('[') {
        // The header itself is wrong (an unknown table): name it up to the bad token.
        let name = &line[..segment_end(line, column, ['.', ']'])];
        return dotted(trim_line(name).trim_start_matches('[')).join(".");
    }
    let mut path = table_context(&text[..line_start]);
    let Some(eq) = line.find('=') else {
        return path;
    };
    // An error on the key itself (unknown or duplicate) names the key up to the dotted
    // part it points into; an error on the value names the whole key.
    let key_end = if column < eq { segment_end(line, column, ['.', '=']) } else { eq };
    push_parts(&mut path, dotted(&line[..key_end]));
    if column > eq {
        // Inside an inline table: add the inner key whose entry holds the offset.
        if let Some(open) = line[eq..column].rfind(['{', ',']).map(|i| eq + i) {
            if let Some(inner_eq) = line[open..].find('=').map(|i| open + i) {
                push_parts(&mut path, dotted(&line[open + 1..inner_eq]));
            }
        }
    }
    path
}

/// Byte offset of the first of `stops` at or after `from`, or the end of `line`.
fn segment_end<const N: usize>(line: &str, from: usize, stops: [char; N]) -> usize {
    line[from..].find(stops).map_or(line.len(), |i| from + i)
}

/// `[a.b]` → `a.b`; `[[routes]]` → `routes[N]` where N counts earlier `[[routes]]`.
fn table_context(before: &str) -> String {
    let mut current = String::new();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for line in before.lines() {
        let t = trim_line(line);
        if let Some(rest) = t.strip_prefix("[[") {
            let name = dotted(rest.split("]]").next().unwrap_or_default()).join(".");
            let index = match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, count)) => {
                    *count += 1;
                    *count - 1
                }
                None => {
                    counts.push((name.clone(), 1));
                    0
                }
            };
            current = format!("{name}[{index}]");
        } else if let Some(rest) = t.strip_prefix('[') {
            current = dotted(rest.split(']').next().unwrap_or_default()).join(".");
            // `[routes.headers]` after `[[routes]]` belongs to the latest route.
            let array = counts
                .iter()
                .filter(|(name, _)| current.strip_prefix(name.as_str()).is_some_and(|r| r.starts_with('.')));
            if let Some((name, count)) = array.max_by_key(|(name, _)| name.len()) {
                current = format!("{name}[{}]{}", count - 1, &current[name.len()..]);
            }
        }
    }
    current
}

/// A line without surrounding whitespace or a byte-order mark.
fn trim_line(line: &str) -> &str {
    line.trim().trim_start_matches('\u{feff}')
}

/// The parts of a dotted key, up to the first that is not a plain bare key: the text
/// comes from a line that may be malformed, and a key path must never carry a value
/// (say a URL) into a message.
fn dotted(key: &str) -> Vec<String> {
    key.split('.')
        .map(|part| part.trim().trim_matches(['"', '\'']))
        .take_while(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .map(str::to_owned)
        .collect()
}

fn push_parts(path: &mut String, parts: Vec<String>) {
    for part in parts {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&part);
    }
}

/// The bytes to blank for an error at `start..end`: its line (through the end of the
/// span), or for a header line the whole table up to the next header.
fn blank_range(text: &str, start: usize, end: usize) -> std::ops::Range<usize> {
    let start = floor_boundary(text, start);
    let end = floor_boundary(text, end.max(start));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    if !trim_line(&text[line_start..line_end]).starts_with('[') {
        return line_start..line_end;
    }
    let mut next = line_end;
    while next < text.len() {
        let rest = &text[next + 1..];
        if rest.trim_start_matches([' ', '\t']).starts_with('[') {
            return line_start..next + 1;
        }
        next = rest.find('\n').map_or(text.len(), |i| next + 1 + i);
    }
    line_start..text.len()
}

/// Replaces every byte in `range` except newlines with a space, keeping offsets.
fn blank(buf: &mut String, range: std::ops::Range<usize>) {
    let blanked: String = buf[range.clone()]
        .chars()
        .map(|c| if c == '\n' { "\n".to_owned() } else { " ".repeat(c.len_utf8()) })
        .collect();
    buf.replace_range(range, &blanked);
}

/// Redacts URL-like strings that serde quotes as `string "…"` in its messages.
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        let content_start = i + "string \"".len();
        out.push_str(&rest[..content_start]);
        let after = &rest[content_start..];
        let mut end = after.len();
        let mut escaped = false;
        for (j, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = j;
                    break;
                }
                _ => {}
            }
        }
        let content = &after[..end];
        let suspicious = content.contains(['@', ':', '/', '=']) || content.to_ascii_lowercase().contains("password");
        out.push_str(&if suspicious { redact_url(content) } else { content.to_owned() });
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        parse(text).problems.into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn parses_every_section() {
        let parsed = parse(
            "[source]\nurl = \"postgres://h/db\"\nbatch_size = 5\n[broker]\nmax_in_flight = 3\n\
             [[routes]]\ntable = \"outbox\"\ntype = \"\"\nheaders = { b = \"2\", a = \"1\" }\n\
             [http]\nlisten = \"0.0.0.0:1\"\n[log]\nlevel = \"debug\"\n",
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let raw = parsed.raw.unwrap();
        assert_eq!(raw.source.unwrap().batch_size, Some(5));
        let route = &raw.routes.unwrap()[0];
        assert_eq!(route.message_type.as_deref(), Some(""));
        let headers = &route.headers.as_ref().unwrap().0;
        assert_eq!(headers[0], ("b".to_owned(), "2".to_owned()), "file order kept");
    }

    #[test]
    fn unknown_key_in_each_section_is_reported_with_its_path() {
        for (text, key) in [
            ("[source]\nslott = \"x\"\n", "source.slott"),
            ("[broker]\nmax_inflight = 1\n", "broker.max_inflight"),
            ("[[routes]]\n[[routes]]\nexchang = \"x\"\n", "routes[1].exchang"),
            ("[http]\nport = 1\n", "http.port"),
            ("[log]\nlvl = \"x\"\n", "log.lvl"),
            ("[sourc]\nurl = \"x\"\n", "sourc"),
            ("verbose = true\n", "verbose"),
        ] {
            let parsed = parse(text);
            assert_eq!(parsed.problems.len(), 1, "{text}: {:?}", parsed.problems);
            let problem = &parsed.problems[0];
            assert_eq!(problem.key, key, "{text}");
            assert!(problem.message.starts_with("unknown key"), "{}", problem.message);
            assert!(problem.message.contains("expected"), "{}", problem.message);
        }
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let parsed = parse("[source]\nurl = \"postgres://h\"\nbatch_size = \"lots\"\n");
        assert_eq!(parsed.problems[0].key, "source.batch_size");
        assert!(parsed.problems[0].message.contains("line 3"), "{:?}", parsed.problems);
        assert!(parsed.problems[0].message.contains("\"lots\""));
    }

    #[test]
    fn inline_table_values_get_inner_key() {
        let parsed = parse("[[routes]]\nheaders = { a = \"x\", b = 2 }\n");
        assert_eq!(parsed.problems[0].key, "routes[0].headers.b");
    }

    #[test]
    fn several_serde_problems_at_once() {
        let text = "[source]\nslott = \"x\"\nbatch_size = \"x\"\n[broker]\nnope = 1\n\
                    [[routes]]\ntable = 5\n[bogus]\na = 1\n[log]\nlvl = 1\n";
        assert_eq!(
            keys(text),
            ["source.slott", "source.batch_size", "broker.nope", "routes[0].table", "bogus", "log.lvl"]
        );
        let parsed = parse(text);
        assert!(parsed.raw.is_some(), "parsing went on after blanking");
        assert_eq!(parsed.suppressed.len(), 6);
    }

    #[test]
    fn syntax_error_has_line_and_no_source_text() {
        let parsed = parse("[source]\nurl = \"postgres://u:s3cr3t-pw@h\n");
        assert!(parsed.raw.is_none());
        let problem = &parsed.problems[0];
        assert_eq!(problem.key, "source.url");
        assert!(problem.message.starts_with("invalid TOML"), "{}", problem.message);
        assert!(problem.message.contains("line 2"), "{}", problem.message);
        assert!(!problem.message.contains("s3cr3t-pw"));
    }

    #[test]
    fn duplicate_key_is_a_syntax_problem() {
        assert_eq!(keys("[log]\nlevel = \"a\"\nlevel = \"b\"\n"), ["log.level"]);
    }

    #[test]
    fn quoted_url_in_a_type_error_is_redacted() {
        let parsed = parse("[broker]\nmax_in_flight = \"amqp://u:s3cr3t-pw@h\"\n");
        let message = &parsed.problems[0].message;
        assert!(!message.contains("s3cr3t-pw"), "{message}");
        assert!(message.contains("amqp://u:***@h"), "{message}");
    }

    #[test]
    fn subtables_of_array_entries_get_the_index() {
        let parsed = parse("[[routes]]\n[[routes]]\n[routes.headers]\na = 1\n");
        assert_eq!(parsed.problems[0].key, "routes[1].headers.a");
    }

    #[test]
    fn byte_order_mark_and_crlf() {
        let parsed = parse("\u{feff}[log]\r\nlevel = 5\r\nfoo = 1\r\n");
        let keys: Vec<&str> = parsed.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["log.level", "log.foo"]);
    }

    #[test]
    fn multi_line_value_stops_the_search_without_panicking() {
        let parsed = parse("[source]\nfoo = [\n1,\n2]\nbar = 1\n");
        assert_eq!(parsed.problems.len(), 1);
        assert!(parsed.raw.is_none());
    }

    #[test]
    fn key_paths_never_carry_values() {
        let parsed = parse("[source]\n[url = \"postgres://u:s3cr3t-pw@db/app\"\n");
        assert_eq!(parsed.problems[0].key, "(document)");
        let parsed = parse("[source]\n\"url x\" = 1\n");
        assert_eq!(parsed.problems[0].key, "source");
        let parsed = parse("\"url x\" = 1\n");
        assert_eq!(parsed.problems[0].key, "(document)");
    }

    #[test]
    fn blanking_keeps_offsets() {
        let mut buf = "a = \"é\"\nb = 1\n".to_owned();
        let range = blank_range(&buf, 0, 1);
        blank(&mut buf, range);
        assert_eq!(buf.len(), "a = \"é\"\nb = 1\n".len());
        assert_eq!(&buf[9..], "b = 1\n");
    }

    #[test]
    fn header_blank_range_covers_the_table() {
        let text = "[bogus]\na = 1\n\n[log]\n";
        assert_eq!(blank_range(text, 1, 6), 0..15);
        assert_eq!(blank_range("[bogus]\na = 1", 1, 6), 0..13);
    }
}
