//! CloudEvents 1.0 per the CloudEvents AMQP protocol binding, for routes with
//! `format = "cloudevents"` (binary mode) or `"cloudevents-structured"`.
//!
//! Binary mode: every attribute is an application property (an AMQP 0-9-1
//! header) named with the binding's `cloudEvents:` prefix, written as a
//! string (the binding allows the canonical string form of every type); the
//! route's `content_type` is the AMQP content-type and stands for
//! `datacontenttype`; the payload is the body, unchanged.
//!
//! Structured mode: the body is the JSON event
//! (`application/cloudevents+json; charset=utf-8`) with the payload as `data`
//! when the route's content type is JSON (`application/json` or `…+json`) and
//! the payload parses as JSON, else as `data_base64`.
//!
//! Attributes: `specversion` 1.0, `id` the message id, `source` the route's
//! `ce_source`, `type` the route's `type`, `time` the commit time (RFC 3339),
//! `subject` the route's `ce_subject` when set, and the distributed-tracing
//! extension's `traceparent` / `tracestate` when the event carries a valid
//! `traceparent`.

use super::HeaderValue;

/// The attributes of one event, rendered.
pub(super) struct Attributes<'a> {
    pub id: &'a str,
    pub source: String,
    pub event_type: &'a str,
    pub time: String,
    pub subject: Option<String>,
    /// `traceparent` and `tracestate`, when the event has a valid traceparent.
    pub trace: Option<(String, Option<String>)>,
}

impl Attributes<'_> {
    /// The attributes as (name, string form), in the binding's order;
    /// `datacontenttype` is the caller's (the AMQP content-type in binary
    /// mode, a field of the JSON in structured mode).
    fn named(self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("specversion", "1.0".to_owned()),
            ("id", self.id.to_owned()),
            ("source", self.source),
            ("type", self.event_type.to_owned()),
            ("time", self.time),
        ];
        out.extend(self.subject.map(|subject| ("subject", subject)));
        if let Some((traceparent, tracestate)) = self.trace {
            out.push(("traceparent", traceparent));
            out.extend(tracestate.map(|state| ("tracestate", state)));
        }
        out
    }

    /// The attributes as `cloudEvents:*` headers, in front of `rest`.
    pub fn binary_headers(self, rest: Vec<(String, HeaderValue)>) -> Vec<(String, HeaderValue)> {
        let mut out = Vec::with_capacity(rest.len() + 8);
        for (name, value) in self.named() {
            out.push((format!("{}{name}", super::CE_PREFIX), HeaderValue::Str(value)));
        }
        out.extend(rest);
        out
    }

    /// The structured-mode body: the JSON event, keys in alphabetical order.
    pub fn structured_body(self, content_type: &str, payload: &[u8]) -> bytes::Bytes {
        use serde_json::Value;
        let mut event = serde_json::Map::new();
        let mut put = |k: &str, v: String| {
            event.insert(k.to_owned(), Value::String(v));
        };
        put("datacontenttype", content_type.to_owned());
        for (name, value) in self.named() {
            put(name, value);
        }
        let json = is_json(content_type).then(|| serde_json::from_slice::<Value>(payload).ok()).flatten();
        match json {
            Some(data) => {
                event.insert("data".to_owned(), data);
            }
            None => put("data_base64", base64(payload)),
        }
        serde_json::to_vec(&Value::Object(event)).unwrap_or_default().into()
    }
}

/// `application/json`, or a `+json` type, parameters ignored.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Standard base64 with padding (RFC 4648).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.order+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/octet-stream"));
    }
}
