//! `broker.url` as a list of RabbitMQ nodes, and the order the relay tries them in.
//!
//! - In the file `broker.url` is a string or a list of strings; in
//!   `OUTBOX_RELAY_BROKER_URL[_FILE]` several URLs are separated by commas.
//!   Both become one [`SecretString`] holding the URLs joined by commas, so the
//!   override, redaction and re-reading of a rotated `_FILE` secret work on the
//!   list exactly as they did on one URL. [`split`] takes it apart again: it cuts
//!   only at a comma followed by a scheme such as `amqp://`, so a comma inside
//!   a password survives.
//! - [`NodeOrder`] is `broker.node_order`: "listed", or "shuffled" by a
//!   documented, stable permutation seeded from `broker.shuffle_key` (default:
//!   the slot name), so relays of different slots spread over the nodes while
//!   each one keeps the same order across restarts.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::secret::SecretString;

/// `broker.url` as written in the file: one URL, or a list of them.
#[derive(Debug, Default)]
pub(super) struct RawUrls(pub SecretString);

impl<'de> Deserialize<'de> for RawUrls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UrlsVisitor;
        impl<'de> Visitor<'de> for UrlsVisitor {
            type Value = RawUrls;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a URL string or a list of URL strings")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUrls, E> {
                Ok(RawUrls(SecretString::new(v)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawUrls, A::Error> {
                let mut urls: Vec<String> = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    if url.is_empty() {
                        let n = urls.len() + 1;
                        return Err(serde::de::Error::custom(format!("URL {n} of the list is empty")));
                    }
                    urls.push(url);
                }
                Ok(RawUrls(SecretString::new(urls.join(","))))
            }
        }
        deserializer.deserialize_any(UrlsVisitor)
    }
}

/// The URLs of a broker list, in the order written. Cuts only at a comma
/// followed (after optional spaces) by a URL scheme (`amqp://`, or any other
/// `scheme://`, which the check then refuses by name); the spaces
/// next to such a comma go, and nothing else is trimmed (whitespace anywhere
/// else is the URL's own, and [`super::UrlTarget::check`] refuses it).
pub fn split(list: &str) -> Vec<&str> {
    let mut cuts = vec![];
    for (i, _) in list.match_indices(',') {
        if super::secret::scheme_end(list[i + 1..].trim_start_matches(' ')).is_some() {
            cuts.push(i);
        }
    }
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        parts.push(list[start..cut].trim_end_matches(' '));
        start = cut + 1;
    }
    parts.push(&list[start..]);
    parts.into_iter().enumerate().map(|(k, p)| if k > 0 { p.trim_start_matches(' ') } else { p }).collect()
}

/// The URLs of a broker list as secrets of their own.
pub fn urls(list: &SecretString) -> Vec<SecretString> {
    split(list.expose()).into_iter().map(SecretString::new).collect()
}

/// In which order the relay tries the nodes of `broker.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOrder {
    /// As listed: the first usable node, then on a failure the next.
    Listed,
    /// A stable permutation seeded from the key (`broker.shuffle_key`, by
    /// default `source.slot`), then on a failure the next in that order.
    Shuffled(String),
}

impl NodeOrder {
    /// The order of `n` nodes: indexes into the list as written.
    ///
    /// "shuffled" is a Fisher–Yates shuffle driven by splitmix64, seeded with
    /// the FNV-1a hash of the key's bytes: the same key and length always give
    /// the same order, on every machine and version.
    pub fn order(&self, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        if let NodeOrder::Shuffled(key) = self {
            let mut state = fnv1a(key.as_bytes());
            for i in (1..n).rev() {
                let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeOrder::Listed => "listed",
            NodeOrder::Shuffled(_) => "shuffled",
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_only_before_a_scheme() {
        assert_eq!(split("amqp://a/"), ["amqp://a/"]);
        assert_eq!(split("amqp://a/,amqps://b/, amqp://c/"), ["amqp://a/", "amqps://b/", "amqp://c/"]);
        // A comma in a password is not a separator.
        assert_eq!(split("amqp://u:p,w@a/,amqp://b/"), ["amqp://u:p,w@a/", "amqp://b/"]);
        assert_eq!(split(""), [""]);
        assert_eq!(split("amqp://a/\n"), ["amqp://a/\n"], "not trimmed: the check refuses it");
        assert_eq!(split("amqp://a/,http://b/"), ["amqp://a/", "http://b/"], "cut, so the check names it");
    }

    #[test]
    fn listed_keeps_the_order() {
        assert_eq!(NodeOrder::Listed.order(3), [0, 1, 2]);
        assert!(NodeOrder::Listed.order(0).is_empty());
    }

    #[test]
    fn shuffled_is_a_stable_permutation_that_spreads_keys() {
        let order = |key: &str| NodeOrder::Shuffled(key.into()).order(3);
        // Stable: the same key gives the same order, and the documented
        // algorithm gives these (a change here moves every deployed relay).
        assert_eq!(order("outbox_relay"), order("outbox_relay"));
        assert_eq!(order("wallet"), [0, 2, 1]);
        assert_eq!(order("antifraud"), [0, 1, 2]);
        for key in ["a", "b", "slot_1", ""] {
            let mut sorted = order(key);
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2], "a permutation for {key:?}");
        }
        // Spread: 300 slot names put each node first about a third of the time.
        let mut first = [0usize; 3];
        for i in 0..300 {
            first[order(&format!("slot_{i}"))[0]] += 1;
        }
        assert!(first.iter().all(|&c| (70..=130).contains(&c)), "first nodes {first:?}");
        assert_eq!(NodeOrder::Shuffled("k".into()).order(1), [0]);
    }

    #[test]
    fn a_list_in_the_file_becomes_one_comma_joined_secret() {
        #[derive(Deserialize)]
        struct T {
            url: RawUrls,
        }
        let t: T = toml::from_str("url = [\"amqp://a/\", \"amqp://u:p,w@b/\"]").unwrap();
        assert_eq!(t.url.0.expose(), "amqp://a/,amqp://u:p,w@b/");
        assert_eq!(urls(&t.url.0).len(), 2);
        let t: T = toml::from_str("url = \"amqp://a/\"").unwrap();
        assert_eq!(t.url.0.expose(), "amqp://a/");
        let e = toml::from_str::<T>("url = [\"amqp://a/\", \"\"]").err().unwrap();
        assert!(e.message().contains("URL 2 of the list is empty"), "{}", e.message());
        let e = toml::from_str::<T>("url = 5").err().unwrap();
        assert!(e.message().contains("a URL string or a list of URL strings"), "{}", e.message());
    }
}
