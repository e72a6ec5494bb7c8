//! Correlation of the broker's answers with what we published: turns
//! basic.ack, basic.nack and basic.return into one [`Outcome`] per message.
//!
//! Confirms carry delivery tags (ours are numbered from 1 in publish order);
//! a basic.return carries no tag, only the returned message's properties.
//! RabbitMQ sends a message's basic.return *before* the basic.ack that covers
//! it, so when a return arrives the message is still in flight: we flag every
//! in-flight message with that `message_id` (normally exactly one; if the data
//! has duplicate ids we flag all of them, which may cause a duplicate but
//! never a loss), and the ack that later covers a flagged message yields
//! [`Outcome::Returned`], not [`Outcome::Confirmed`]. Pure: no I/O, no clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::ack::TxnId;
use crate::route::OutgoingMessage;

/// A published message waiting for the broker's answer.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The transaction it belongs to, for the tracker.
    pub txn: TxnId,
    /// The message, kept for a republish.
    pub msg: Arc<OutgoingMessage>,
    /// When it was (last) published.
    pub sent_at: Instant,
    /// How many times it has been published.
    pub attempts: u32,
    /// How many of those were nacked in a row (a return resets it).
    pub nacks: u32,
    /// Set by a basic.return: (reply code, reply text).
    returned: Option<(u16, String)>,
}

impl Pending {
    /// A message just published for the `attempts`-th time.
    pub fn new(txn: TxnId, msg: Arc<OutgoingMessage>, sent_at: Instant, attempts: u32) -> Self {
        Pending { txn, msg, sent_at, attempts, nacks: 0, returned: None }
    }
}

/// The broker's verdict on one message.
#[derive(Debug)]
pub enum Outcome {
    /// Acked and not returned: the broker has it.
    Confirmed(Pending),
    /// Returned as unroutable (then acked).
    Returned {
        /// The message.
        pending: Pending,
        /// 312 NO_ROUTE, ...
        reply_code: u16,
        /// The broker's text.
        reply_text: String,
    },
    /// basic.nack: the broker could not take it.
    Nacked(Pending),
}

/// Messages in flight, by delivery tag.
///
/// Tags are handed out in increasing order, so the messages sit in a queue
/// in tag order: a multiple ack pops from the front, a single ack or nack
/// finds its tag by binary search and leaves a hole, and holes at the
/// front are dropped at once (the front is always a message in flight).
#[derive(Debug, Default)]
pub struct InFlight {
    queue: VecDeque<(u64, Option<Pending>)>,
    live: usize,
}

impl InFlight {
    /// Nothing in flight.
    pub fn new() -> Self {
        InFlight::default()
    }

    /// Records a publish under its delivery tag (higher than every tag before).
    pub fn insert(&mut self, tag: u64, p: Pending) {
        debug_assert!(self.queue.back().is_none_or(|(t, _)| *t < tag), "delivery tag {tag} not increasing");
        self.queue.push_back((tag, Some(p)));
        self.live += 1;
    }

    /// How many messages await an answer.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing awaits an answer.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn values(&self) -> impl Iterator<Item = &Pending> {
        self.queue.iter().filter_map(|(_, p)| p.as_ref())
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.queue.iter_mut().filter_map(|(_, p)| p.as_mut())
    }

    /// When the longest-waiting message was published.
    ///
    /// O(1): tags grow with publish time (a republish takes a new tag, and
    /// [`restart_clock`](Self::restart_clock) gives all the same time), so
    /// the lowest tag was sent first. This runs on every turn of the
    /// publisher loop, so it must not scan the window.
    pub fn oldest_sent(&self) -> Option<Instant> {
        let oldest = self.values().next().map(|p| p.sent_at);
        debug_assert_eq!(oldest, self.values().map(|p| p.sent_at).min());
        oldest
    }

    /// The in-flight message with the largest body.
    pub fn largest(&self) -> Option<&Pending> {
        self.values().max_by_key(|p| p.msg.body.len())
    }

    /// Restarts every message's confirm clock at `now` (after the broker
    /// lifted a flow-control block: the wait was the broker's, not a fault).
    pub fn restart_clock(&mut self, now: Instant) {
        for p in self.values_mut() {
            p.sent_at = now;
        }
    }

    /// A basic.return for `message_id`: flags every in-flight message with
    /// that id. Returns how many were flagged (0 means a return we cannot
    /// place, which the caller must treat as a broken channel).
    pub fn on_return(&mut self, message_id: Option<&str>, reply_code: u16, reply_text: &str) -> usize {
        let Some(id) = message_id else { return 0 };
        let mut n = 0;
        for p in self.values_mut().filter(|p| p.msg.message_id == id) {
            p.returned = Some((reply_code, reply_text.to_owned()));
            n += 1;
        }
        n
    }

    /// basic.ack: every covered message is confirmed, or returned if flagged.
    pub fn on_ack(&mut self, tag: u64, multiple: bool) -> Vec<Outcome> {
        self.take(tag, multiple)
            .into_iter()
            .map(|mut p| match p.returned.take() {
                Some((reply_code, reply_text)) => Outcome::Returned { pending: p, reply_code, reply_text },
                None => Outcome::Confirmed(p),
            })
            .collect()
    }

    /// basic.nack: every covered message failed.
    pub fn on_nack(&mut self, tag: u64, multiple: bool) -> Vec<Outcome> {
        self.take(tag, multiple).into_iter().map(Outcome::Nacked).collect()
    }

    fn take(&mut self, tag: u64, multiple: bool) -> Vec<Pending> {
        let mut taken = Vec::new();
        if multiple {
            // tag 0 with multiple means "everything outstanding".
            let upto = if tag == 0 { u64::MAX } else { tag };
            while self.queue.front().is_some_and(|(t, _)| *t <= upto) {
                if let Some((_, Some(p))) = self.queue.pop_front() {
                    taken.push(p);
                }
            }
        } else if let Ok(i) = self.queue.binary_search_by_key(&tag, |(t, _)| *t) {
            taken.extend(self.queue[i].1.take());
        }
        self.live -= taken.len();
        while self.queue.front().is_some_and(|(_, p)| p.is_none()) {
            self.queue.pop_front();
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Tracker;
    use crate::event::{EndLsn, Lsn, PgTimestamp, SourcePosition};

    fn msg(id: &str) -> Arc<OutgoingMessage> {
        Arc::new(OutgoingMessage {
            route: 0,
            exchange: "x".into(),
            routing_key: "k".into(),
            message_id: id.into(),
            message_type: None,
            content_type: "application/json".into(),
            timestamp: 0,
            headers: vec![],
            outbox: crate::route::OutboxHeaders {
                all: true,
                table: "public.outbox".into(),
                lsn: None,
                replay: false,
                commit_time: crate::event::PgTimestamp(0),
            },
            body: bytes::Bytes::new(),
            trace_id: None,
        })
    }

    fn inflight(n: u64) -> InFlight {
        let mut t = Tracker::new();
        let txn = t.register(SourcePosition::Wal(EndLsn(Lsn(1))), PgTimestamp(0), n as usize, false);
        let mut f = InFlight::new();
        for tag in 1..=n {
            f.insert(tag, Pending::new(txn, msg(&format!("id-{tag}")), Instant::now(), 1));
        }
        f
    }

    #[test]
    fn a_return_before_a_multiple_ack_flags_only_its_message() {
        let mut f = inflight(5);
        assert_eq!(f.on_return(Some("id-3"), 312, "NO_ROUTE"), 1);
        let out = f.on_ack(5, true);
        let returned: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                Outcome::Returned { pending, .. } => Some(pending.msg.message_id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(returned, ["id-3"]);
        assert_eq!(out.iter().filter(|o| matches!(o, Outcome::Confirmed(_))).count(), 4);
        assert!(f.is_empty());
    }

    #[test]
    fn single_ack_and_nack_take_exactly_their_tag() {
        let mut f = inflight(3);
        assert!(matches!(f.on_ack(2, false).as_slice(), [Outcome::Confirmed(p)] if p.msg.message_id == "id-2"));
        assert!(matches!(f.on_nack(3, false).as_slice(), [Outcome::Nacked(p)] if p.msg.message_id == "id-3"));
        assert_eq!(f.len(), 1);
        assert_eq!(f.on_ack(0, true).len(), 1);
    }

    #[test]
    fn holes_left_by_single_acks_are_skipped_and_dropped() {
        let mut f = inflight(4);
        assert_eq!(f.on_ack(2, false).len(), 1);
        assert_eq!(f.on_ack(2, false).len(), 0, "a tag is answered once");
        assert_eq!(f.on_nack(1, false).len(), 1);
        assert_eq!((f.len(), f.queue.len()), (2, 2), "the front hole and the message before it are gone");
        let out = f.on_ack(4, true);
        assert_eq!(out.len(), 2);
        assert!(f.is_empty() && f.queue.is_empty() && f.oldest_sent().is_none());
    }

    #[test]
    fn an_unplaceable_return_is_reported() {
        let mut f = inflight(2);
        assert_eq!(f.on_return(Some("nope"), 312, "NO_ROUTE"), 0);
        assert_eq!(f.on_return(None, 312, "NO_ROUTE"), 0);
    }
}
