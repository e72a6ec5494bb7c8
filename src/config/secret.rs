//! Connection URLs as secrets: the redacting wrapper, password redaction for logs, the
//! scheme checks, and the `OUTBOX_RELAY_*_URL[_FILE]` environment overrides.
//!
//! Rules this file enforces, so no other file has to think about them:
//!
//! - [`SecretString`] prints `***` in `Debug` and `Display`; the value is reachable only
//!   through [`SecretString::expose`], which the connection code calls.
//! - [`redact_url`] keeps a URL useful in a log line (`postgres://relay:***@db/app`) and
//!   errs on the side of hiding too much when the text is malformed.
//! - Messages produced here name variables, keys and file paths, never the value read.
//! - `_FILE` values lose exactly one trailing `\n` or `\r\n` (what `echo` and most editors
//!   add), nothing more, so a password ending in whitespace survives.

use std::fmt;
use std::path::Path;

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Deserializer};

use super::Problem;

/// A string that must not be shown: a URL that may hold a password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> SecretString {
        SecretString(value.into())
    }

    /// The secret itself. Call it only to hand the value to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with passwords replaced by `***` (see [`redact_url`]); safe to log.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(\"***\")")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretString)
    }
}

/// Removes passwords from a connection string so it can be logged.
///
/// - URL form (`scheme://user:password@host…`): the password becomes `***`, and so does
///   the value of any query parameter whose name ends in `password` (libpq accepts
///   `?password=`). The user info is taken to end at the *last* `@`, so an unencoded `@`
///   in a password is still hidden; when an `@` appears later (say in the query) more
///   than the password is hidden, never less.
/// - libpq keyword form (`host=db password='p w'`): the value of every keyword ending in
///   `password` (`password`, `sslpassword`) becomes `***`; if the string cannot be parsed
///   past some point, everything from there on is hidden.
/// - Anything else (no scheme and no `=`) might be a bare password and becomes `***`.
pub fn redact_url(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else if let Some(rest_start) = scheme_end(s) {
        redact_uri(s, rest_start)
    } else if s.contains('=') {
        redact_keywords(s)
    } else {
        "***".to_owned()
    }
}

/// Byte offset just past `scheme://`, if `s` starts with a URL scheme.
pub(super) fn scheme_end(s: &str) -> Option<usize> {
    let colon = s.find("://")?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some(colon + 3)
}

fn redact_uri(s: &str, rest_start: usize) -> String {
    let rest = &s[rest_start..];
    let mut out = String::from(&s[..rest_start]);
    let tail = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match tail.find('?') {
        None => out.push_str(tail),
        Some(q) => {
            out.push_str(&tail[..=q]);
            let params = tail[q + 1..].split('&').map(|param| match param.split_once('=') {
                Some((key, _)) if is_password_key(&percent_decode_str(key).decode_utf8_lossy()) => {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            });
            out.push_str(&params.collect::<Vec<_>>().join("&"));
        }
    }
    out
}

fn is_password_key(key: &str) -> bool {
    key.trim().to_ascii_lowercase().ends_with("password")
}

/// Redacts a libpq keyword/value string. Values may be single-quoted with `\'` and `\\`
/// escapes, or bare with `\` escaping the next character (libpq's `conninfo_parse`).
fn redact_keywords(s: &str) -> String {
    let b = s.as_bytes();
    let len = b.len();
    let mut out = String::with_capacity(len);
    let mut i = 0;
    loop {
        let segment_start = i;
        while i < len && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == len {
            out.push_str(&s[segment_start..]);
            return out;
        }
        let key_start = i;
        while i < len && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        while i < len && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == len || b[i] != b'=' {
            // Not `key = value`: we no longer know what is a value, so hide the rest.
            out.push_str(&s[segment_start..key_start]);
            out.push_str("***");
            return out;
        }
        i += 1;
        while i < len && b[i].is_ascii_whitespace() {
            i += 1;
        }
        out.push_str(&s[segment_start..i]);
        let value_start = i;
        if i < len && b[i] == b'\'' {
            i += 1;
            while i < len && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(len);
        } else {
            while i < len && !b[i].is_ascii_whitespace() {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = i.min(len);
        }
        // `i` now sits on an ASCII delimiter or the end, both char boundaries.
        if is_password_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&s[value_start..i]);
        }
    }
}

/// Which of the two connection URLs an override is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlTarget {
    /// `source.url`, overridden by `OUTBOX_RELAY_SOURCE_URL[_FILE]`.
    Source,
    /// `broker.url`, overridden by `OUTBOX_RELAY_BROKER_URL[_FILE]`.
    Broker,
}

impl UrlTarget {
    /// The variable holding the URL itself.
    pub fn env_var(self) -> &'static str {
        match self {
            UrlTarget::Source => "OUTBOX_RELAY_SOURCE_URL",
            UrlTarget::Broker => "OUTBOX_RELAY_BROKER_URL",
        }
    }

    /// The variable naming a file that holds the URL.
    pub fn file_env_var(self) -> &'static str {
        match self {
            UrlTarget::Source => "OUTBOX_RELAY_SOURCE_URL_FILE",
            UrlTarget::Broker => "OUTBOX_RELAY_BROKER_URL_FILE",
        }
    }

    /// The config key the variables override.
    pub fn config_key(self) -> &'static str {
        match self {
            UrlTarget::Source => "source.url",
            UrlTarget::Broker => "broker.url",
        }
    }

    /// Checks the form of a URL for this target. The message says what is expected and
    /// never quotes the URL.
    ///
    /// # Errors
    ///
    /// Source: not `postgres://…`/`postgresql://…` and not a libpq keyword string (no
    /// `=`). Broker: not an `amqp://`/`amqps://` URL with a host. Either: empty, or a URL
    /// containing whitespace or control characters.
    pub fn check(self, url: &str) -> Result<(), String> {
        match self {
            UrlTarget::Source => check_source_url(url),
            UrlTarget::Broker => check_broker_url(url),
        }
    }
}

const SOURCE_EXPECTED: &str = "expected a postgres:// or postgresql:// URL such as \
     postgres://relay@db:5432/app, or a libpq keyword string such as \"host=db user=relay dbname=app\"";
const BROKER_EXPECTED: &str = "expected an amqp:// or amqps:// URL such as amqp://relay:PASSWORD@rabbit:5672/%2f \
     (several nodes: a list in the file, or URLs separated by commas)";
const NO_SPACES: &str = "contains whitespace or a control character; percent-encode it \
     (a _FILE value loses only one trailing newline)";

fn check_source_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(format!("is empty; {SOURCE_EXPECTED}"));
    }
    if url.contains('\0') {
        return Err(format!("contains a NUL character; {SOURCE_EXPECTED}"));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(NO_SPACES.to_owned());
        }
        return Ok(());
    }
    if scheme_end(url).is_some() {
        return Err(format!("has an unsupported scheme; {SOURCE_EXPECTED}"));
    }
    if url.contains('=') {
        Ok(())
    } else {
        Err(format!("is neither a URL nor a keyword string; {SOURCE_EXPECTED}"))
    }
}

/// A broker list (see [`super::brokers::split`]): each URL checked on its own,
/// named by its place when there are several.
fn check_broker_url(list: &str) -> Result<(), String> {
    if list.trim_end().ends_with(',') {
        return Err(format!("ends with a comma; remove it. {BROKER_EXPECTED}"));
    }
    let urls = super::brokers::split(list);
    let n = urls.len();
    for (i, url) in urls.into_iter().enumerate() {
        check_one_broker_url(url).map_err(|m| if n > 1 { format!("URL {} of {n} {m}", i + 1) } else { m })?;
    }
    Ok(())
}

fn check_one_broker_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(format!("is empty; {BROKER_EXPECTED}"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NO_SPACES.to_owned());
    }
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(format!("has an unsupported scheme; {BROKER_EXPECTED}"));
    }
    // url::ParseError's text describes the defect without quoting the input.
    match url::Url::parse(url) {
        Err(e) => Err(format!("is not a valid URL ({e}); {BROKER_EXPECTED}")),
        Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => Err(format!("has no host; {BROKER_EXPECTED}")),
        Ok(_) => Ok(()),
    }
}

/// Reads the override for `target` from the environment: `OUTBOX_RELAY_*_URL` holds the
/// URL, `OUTBOX_RELAY_*_URL_FILE` names a file holding it (one trailing newline
/// stripped). An empty variable counts as unset.
///
/// [`super::load`] calls this once. The runtime may call it again before each reconnect
/// attempt, with [`super::process_env`], so a rotated `_FILE` secret (a re-mounted
/// container secret, a renewed systemd credential) is picked up without a restart:
/// `Ok(Some(url))` replaces the configured URL, `Ok(None)` keeps it.
///
/// # Errors
///
/// A [`Problem`] keyed `env VARIABLE` when both variables are set, when the file cannot
/// be read or is not UTF-8 (naming the path, never the content), or when the value fails
/// [`UrlTarget::check`].
pub fn resolve_url_override(
    target: UrlTarget,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SecretString>, Problem> {
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let (var, file_var) = (target.env_var(), target.file_env_var());
    let (value, key) = match (set(var), set(file_var)) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(Problem::new(
                format!("env {var}"),
                format!("both {var} and {file_var} are set; set only one of them"),
            ))
        }
        (Some(value), None) => (value, format!("env {var}")),
        (None, Some(path)) => {
            let value = read_secret_file(Path::new(&path))
                .map_err(|message| Problem::new(format!("env {file_var}"), message))?;
            (value, format!("env {file_var}"))
        }
    };
    target.check(&value).map_err(|message| Problem::new(key, format!("the URL {message}")))?;
    Ok(Some(SecretString(value)))
}

/// The URL to use for a connection attempt: the environment override, re-read
/// now so a rotated `_FILE` secret is picked up without a restart, or the
/// file's value.
///
/// # Errors
///
/// `Config` when the override is set twice, unreadable or malformed.
pub fn current_url(target: UrlTarget, configured: &SecretString) -> crate::error::Result<SecretString> {
    match resolve_url_override(target, &super::process_env) {
        Ok(Some(url)) => Ok(url),
        Ok(None) => Ok(configured.clone()),
        Err(p) => Err(crate::error::Error::new(crate::error::ErrorKind::Config, format!("{}: {}", p.key, p.message))),
    }
}

/// The URL for `target`: the environment override if set, else the config file's value,
/// checked with [`UrlTarget::check`].
pub(super) fn configured_url(
    target: UrlTarget,
    in_file: Option<SecretString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SecretString, Problem> {
    if let Some(url) = resolve_url_override(target, env)? {
        return Ok(url);
    }
    let (key, var, file_var) = (target.config_key(), target.env_var(), target.file_env_var());
    let url = in_file.ok_or_else(|| {
        let message = format!("is required: set it here, or through {var} or {file_var}");
        Problem::new(key, message)
    })?;
    target.check(url.expose()).map_err(|message| Problem::new(key, message))?;
    Ok(url)
}

/// Reads a secret file, stripping one trailing `\n` or `\r\n`. The error names the path
/// and the reason, never the content.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read \"{}\": {e}; expected a readable file holding the URL", path.display()))?;
    let mut text = String::from_utf8(bytes)
        .map_err(|_| format!("\"{}\" is not UTF-8 text; expected a file holding the URL", path.display()))?;
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn secret_string_hides_its_value() {
        let s = SecretString::new("postgres://u:s3cr3t-pw@h/db");
        assert_eq!(format!("{s:?}"), "SecretString(\"***\")");
        assert_eq!(s.to_string(), "***");
        assert_eq!(s.expose(), "postgres://u:s3cr3t-pw@h/db");
        assert_eq!(s.redacted(), "postgres://u:***@h/db");
    }

    #[test]
    fn redacts_url_passwords() {
        assert_eq!(
            redact_url("postgres://relay:pw@db:5432/app?sslmode=verify-full"),
            "postgres://relay:***@db:5432/app?sslmode=verify-full"
        );
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("postgres://relay@db/app"), "postgres://relay@db/app");
        assert_eq!(redact_url("postgres://db/app"), "postgres://db/app");
        assert_eq!(redact_url("postgres://u:p@ss@db/app"), "postgres://u:***@db/app");
        assert_eq!(redact_url("postgres://u:p/s@db/app"), "postgres://u:***@db/app");
    }

    #[test]
    fn redacts_password_query_parameters() {
        assert_eq!(
            redact_url("postgresql:///app?host=/run/pg&password=pw&sslpassword=k"),
            "postgresql:///app?host=/run/pg&password=***&sslpassword=***"
        );
        assert_eq!(redact_url("postgres://db/app?pass%77ord=pw"), "postgres://db/app?pass%77ord=***");
    }

    #[test]
    fn over_redacts_rather_than_leaks() {
        // An '@' in the query makes the whole authority look like user info.
        let out = redact_url("postgres://u:pw@db/app?application_name=a@b");
        assert!(!out.contains("pw"), "{out}");
        assert_eq!(redact_url("justapassword"), "***");
    }

    #[test]
    fn redacts_keyword_strings() {
        assert_eq!(
            redact_url("host=db user=relay password=pw dbname=app"),
            "host=db user=relay password=*** dbname=app"
        );
        assert_eq!(redact_url("host=db password = 'p w\\' x' dbname=app"), "host=db password = *** dbname=app");
        assert_eq!(redact_url("password=a\\ b host=x"), "password=*** host=x");
        assert_eq!(redact_url("sslpassword=k host=x"), "sslpassword=*** host=x");
        assert_eq!(redact_url("host=db password='unterminated"), "host=db password=***");
        assert_eq!(redact_url("host=db oops password=pw"), "host=db ***");
        assert_eq!(redact_url("host=é password=é\\é x=y"), "host=é password=*** x=y");
    }

    #[test]
    fn source_url_forms() {
        let t = UrlTarget::Source;
        assert!(t.check("postgres://u@h/db").is_ok());
        assert!(t.check("postgresql://u@h/db").is_ok());
        assert!(t.check("host=h dbname=db").is_ok());
        assert!(t.check("").is_err());
        assert!(t.check("mysql://u@h/db").unwrap_err().contains("unsupported scheme"));
        assert!(t.check("just-a-host").is_err());
        assert!(t.check("postgres://u@h/db\n").unwrap_err().contains("whitespace"));
    }

    #[test]
    fn broker_url_forms() {
        let t = UrlTarget::Broker;
        assert!(t.check("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(t.check("amqps://rabbit/vh?cacertfile=/ca.pem").is_ok());
        assert!(t.check("http://rabbit").unwrap_err().contains("unsupported scheme"));
        assert!(t.check("amqp://").unwrap_err().contains("no host"));
        assert!(t.check("amqp://h:99999/").unwrap_err().contains("not a valid URL"));
        assert!(t.check("amqp://h/ x").is_err());
        // A list: each URL checked, the bad one named by its place.
        assert!(t.check("amqp://a/,amqps://b/").is_ok());
        assert!(t.check("amqp://a/,amqp://").unwrap_err().starts_with("URL 2 of 2 has no host"));
        assert!(t.check("amqp://a/,").unwrap_err().starts_with("ends with a comma"));
    }

    #[test]
    fn no_override_when_unset_or_empty() {
        let env = env_of(&[("OUTBOX_RELAY_SOURCE_URL", "")]);
        assert_eq!(resolve_url_override(UrlTarget::Source, &env), Ok(None));
    }

    #[test]
    fn plain_override() {
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL", "amqp://h/")]);
        let got = resolve_url_override(UrlTarget::Broker, &env).unwrap().unwrap();
        assert_eq!(got.expose(), "amqp://h/");
    }

    #[test]
    fn both_forms_are_a_problem() {
        let env = env_of(&[
            ("OUTBOX_RELAY_SOURCE_URL", "postgres://h/db"),
            ("OUTBOX_RELAY_SOURCE_URL_FILE", "/run/secrets/pg"),
        ]);
        let problem = resolve_url_override(UrlTarget::Source, &env).unwrap_err();
        assert_eq!(problem.key, "env OUTBOX_RELAY_SOURCE_URL");
        assert!(problem.message.contains("OUTBOX_RELAY_SOURCE_URL_FILE"));
    }

    #[test]
    fn file_override_strips_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        for (content, expected) in
            [("amqp://h/\n", "amqp://h/"), ("amqp://h/\r\n", "amqp://h/"), ("amqp://h/", "amqp://h/")]
        {
            let path = dir.path().join("url");
            std::fs::write(&path, content).unwrap();
            let env = env_of(&[("OUTBOX_RELAY_BROKER_URL_FILE", path.to_str().unwrap())]);
            let got = resolve_url_override(UrlTarget::Broker, &env).unwrap().unwrap();
            assert_eq!(got.expose(), expected);
        }
        // Only one newline goes: a second one is kept and then rejected as whitespace.
        let path = dir.path().join("url2");
        std::fs::write(&path, "amqp://h/\n\n").unwrap();
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL_FILE", path.to_str().unwrap())]);
        let problem = resolve_url_override(UrlTarget::Broker, &env).unwrap_err();
        assert_eq!(problem.key, "env OUTBOX_RELAY_BROKER_URL_FILE");
        assert!(problem.message.contains("whitespace"), "{}", problem.message);
    }

    #[test]
    fn file_is_read_again_on_each_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL_FILE", path.to_str().unwrap())]);
        std::fs::write(&path, "amqp://old/\n").unwrap();
        let first = resolve_url_override(UrlTarget::Broker, &env).unwrap().unwrap();
        std::fs::write(&path, "amqp://rotated/\n").unwrap();
        let second = resolve_url_override(UrlTarget::Broker, &env).unwrap().unwrap();
        assert_eq!((first.expose(), second.expose()), ("amqp://old/", "amqp://rotated/"));
    }

    #[test]
    fn configured_url_prefers_the_environment() {
        let in_file = Some(SecretString::new("amqp://file/"));
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL", "amqp://env/")]);
        let url = configured_url(UrlTarget::Broker, in_file.clone(), &env).unwrap();
        assert_eq!(url.expose(), "amqp://env/");
        let url = configured_url(UrlTarget::Broker, in_file, &env_of(&[])).unwrap();
        assert_eq!(url.expose(), "amqp://file/");
        let problem = configured_url(UrlTarget::Broker, None, &env_of(&[])).unwrap_err();
        assert_eq!(problem.key, "broker.url");
        assert!(problem.message.contains("OUTBOX_RELAY_BROKER_URL_FILE"));
    }

    #[test]
    fn keyword_file_keeps_inner_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg");
        std::fs::write(&path, "host=db password='a b '\n").unwrap();
        let env = env_of(&[("OUTBOX_RELAY_SOURCE_URL_FILE", path.to_str().unwrap())]);
        let got = resolve_url_override(UrlTarget::Source, &env).unwrap().unwrap();
        assert_eq!(got.expose(), "host=db password='a b '");
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let env = env_of(&[("OUTBOX_RELAY_SOURCE_URL_FILE", "/nonexistent/pg-url")]);
        let problem = resolve_url_override(UrlTarget::Source, &env).unwrap_err();
        assert_eq!(problem.key, "env OUTBOX_RELAY_SOURCE_URL_FILE");
        assert!(problem.message.contains("/nonexistent/pg-url"), "{}", problem.message);
    }

    #[test]
    fn non_utf8_file_is_a_problem_without_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, [0xff, 0xfe, b's']).unwrap();
        let env = env_of(&[("OUTBOX_RELAY_SOURCE_URL_FILE", path.to_str().unwrap())]);
        let problem = resolve_url_override(UrlTarget::Source, &env).unwrap_err();
        assert!(problem.message.contains("not UTF-8"));
    }

    #[test]
    fn bad_override_value_is_checked_and_not_quoted() {
        let env = env_of(&[("OUTBOX_RELAY_BROKER_URL", "http://u:s3cr3t-pw@h/")]);
        let problem = resolve_url_override(UrlTarget::Broker, &env).unwrap_err();
        assert_eq!(problem.key, "env OUTBOX_RELAY_BROKER_URL");
        assert!(!problem.message.contains("s3cr3t-pw"));
    }
}
