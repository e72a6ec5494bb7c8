//! The publisher task: renders transactions into messages, publishes them in
//! confirm mode with `mandatory`, pipelined up to `max_in_flight`, and feeds
//! the broker's verdicts to the [`Tracker`], which it alone owns.
//!
//! Order of work in each turn of the loop (a `biased` select):
//!
//! 1. the broker connection: what was published is written (one write per
//!    turn, however many messages), and what the broker sent (acks, nacks,
//!    returns, closes) is read and handled first, so confirms never pile up
//!    behind new work. While the window is nearly empty, confirms may wait
//!    up to [`CONFIRM_BATCH`] to be read together (one wake-up for many
//!    acks, not one per event; see [`amqp`]);
//! 2. republishing returned or nacked messages whose backoff has passed;
//! 3. the confirm deadline of the oldest message in flight (paused while the
//!    broker has blocked the connection): a timeout means the connection is
//!    dead;
//! 4. once a second: heartbeats, and a check that the connection and
//!    channel are open;
//! 5. a new transaction from the source, only when the window has room.
//!
//! Publishing happens after the select: it only encodes frames into the
//! connection's write buffer, which the next turn's first arm writes out.
//! A returned or nacked message holds the position at its transaction until
//! the broker takes it (`block`), or is dead-lettered or dropped by the
//! route's policy. Connection failures end the task with an error; the
//! supervisor tears everything down and restarts from the slot.

pub mod amqp;
pub mod channel;
pub mod confirm;
pub mod nodes;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::ack::{Progress, Tracker, TxnId};
use crate::config::OnUnroutable;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Transaction;
use crate::metrics::Metrics;
use crate::route::{HeaderValue, OutgoingMessage, Router};
use channel::{BrokerChannel, BrokerEvent};
use confirm::{InFlight, Outcome, Pending};

/// Settings of the publisher.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Unconfirmed publishes allowed at once.
    pub max_in_flight: usize,
    /// Bytes of bodies unconfirmed (in flight or waiting for a republish)
    /// allowed at once; a larger single message goes alone.
    pub max_in_flight_bytes: usize,
    /// Longest wait for a confirm before the connection is declared dead.
    pub confirm_timeout: Duration,
    /// Whether confirms may wait up to [`CONFIRM_BATCH`] to be read
    /// together while the window is nearly empty: right for a source that
    /// keeps reading while its events are in flight (replication), wrong
    /// for one that waits for each batch's confirms before the next
    /// (polling, replay), where every batch would wait for the timer.
    pub batch_confirms: bool,
}

impl PublisherSettings {
    /// The publisher's part of `[broker]` (a route's policy for returned
    /// messages is on the route itself).
    pub fn from_config(broker: &crate::config::BrokerConfig) -> Self {
        PublisherSettings {
            max_in_flight: broker.max_in_flight,
            max_in_flight_bytes: broker.max_in_flight_bytes,
            confirm_timeout: broker.confirm_timeout,
            batch_confirms: true,
        }
    }
}

/// Longest wait before reading confirms that were left to arrive in a
/// batch (while the window is nearly empty): what a confirm at a trickle of
/// events may add to the delay before its position reaches PostgreSQL.
const CONFIRM_BATCH: Duration = Duration::from_millis(20);

/// A message nacked this many times in a row ends the connection (the
/// session restarts on the next node of `broker.url`, from the slot's
/// confirmed position). RabbitMQ 3.10 was seen to nack every publish on a
/// channel that first published to a quorum queue while its leader was being
/// elected (its leader's node killed), for as long as the channel lived; a
/// new channel was fine. With the republish backoff this is about 3.5 s of
/// nacks. A queue that stays full under `x-overflow = reject-publish` then
/// costs a reconnect per round of the supervisor's backoff, not a stuck relay.
const NACKS_BEFORE_RECONNECT: u32 = 4;
/// Repeated returns or nacks are logged at most once per this interval (per
/// route), with a count, not once per attempt.
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A log line that repeats: logged at first, then once per interval.
#[derive(Debug, Default)]
struct Throttle {
    /// Occurrences since the last line.
    count: u64,
    /// When the last line was written.
    last: Option<Instant>,
}

impl Throttle {
    /// Counts one occurrence; `Some(n)` (occurrences since the last line,
    /// this one included) when a line is due.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.last.is_some_and(|t| now.duration_since(t) < REPEAT_LOG_INTERVAL) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// The transaction being published, when it did not fit the window at once.
struct Current {
    txn: TxnId,
    messages: VecDeque<Arc<OutgoingMessage>>,
}

/// The publisher task's state.
pub struct Publisher {
    channel: BrokerChannel,
    router: Arc<Router>,
    settings: PublisherSettings,
    tracker: Tracker,
    inflight: InFlight,
    /// Messages waiting to be republished, with when. They count against
    /// the window and the byte budget like messages in flight.
    retries: VecDeque<(Instant, Pending)>,
    current: Option<Current>,
    /// The transaction whose next part is still to come (parts of a large
    /// replication transaction).
    open_txn: Option<TxnId>,
    /// Body bytes of messages in flight or waiting for a republish.
    held_bytes: usize,
    /// Per route: repeated returns under `block`, and nacks, logged with a count.
    return_log: Vec<Throttle>,
    nack_log: Throttle,
    /// Where the confirmed progress goes (the source reads it).
    progress: watch::Sender<Progress>,
    metrics: Arc<Metrics>,
    /// True while the broker has blocked the connection (resource alarm).
    blocked: bool,
    /// Since when confirms have been left to wait (see `batch_confirms`).
    acks_waiting_since: Option<Instant>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("in_flight", &self.inflight.len())
            .field("progress", &self.tracker.progress())
            .finish()
    }
}

impl Publisher {
    /// A publisher on an open channel.
    pub fn new(
        channel: BrokerChannel,
        router: Arc<Router>,
        settings: PublisherSettings,
        progress: watch::Sender<Progress>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Publisher {
            channel,
            router,
            settings,
            tracker: Tracker::new(),
            inflight: InFlight::new(),
            retries: VecDeque::new(),
            current: None,
            open_txn: None,
            held_bytes: 0,
            return_log: Vec::new(),
            nack_log: Throttle::default(),
            progress,
            metrics,
            blocked: false,
            acks_waiting_since: None,
        }
    }

    /// Runs until the source closes `rx` and everything is confirmed, or
    /// until an error. Closes the broker connection on the way out.
    ///
    /// # Errors
    ///
    /// `BrokerConnection`, `BrokerChannel`, `ConfirmTimeout` (connection
    /// dead: the caller restarts from the slot) and `Data` (a row that
    /// cannot be rendered: the caller stops).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Transaction>) -> Result<()> {
        let result = self.run_inner(&mut rx).await;
        self.metrics.set_in_flight(0);
        // Close politely only after a clean drain; after a failure the
        // connection is dropped (a close handshake with a dead or silent
        // broker would only wait).
        if result.is_ok() {
            self.channel.close().await;
        }
        result
    }

    async fn run_inner(&mut self, rx: &mut mpsc::Receiver<Transaction>) -> Result<()> {
        let mut intake_open = true;
        // A row that cannot be rendered stops the relay, but what was
        // published before it is confirmed first (bounded by the confirm
        // timeout), so the position stops right before it.
        let mut failed: Option<Error> = None;
        let mut health = tokio::time::interval(Duration::from_secs(1));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(e) = failed.take_if(|_| self.inflight.is_empty()) {
                return Err(e);
            }
            if !intake_open && self.current.is_none() && self.inflight.is_empty() && self.retries.is_empty() {
                return Ok(());
            }
            let room = self.has_room();
            let next_retry = self.retries.iter().map(|(at, _)| *at).min();
            let deadline = self.inflight.oldest_sent().map(|t| t + self.settings.confirm_timeout);
            let read_acks_at = self.batch_confirms(intake_open && failed.is_none());
            tokio::select! {
                biased;
                // PRIORITY 1: the broker's answers (and writing what was published).
                io = self.channel.io() => {
                    io?;
                    self.acks_waiting_since = None;
                    self.on_events()?;
                }
                // Confirms waited long enough: the next turn reads them.
                _ = sleep_until(read_acks_at), if read_acks_at.is_some() => {}
                // PRIORITY 2: republish what is due.
                _ = sleep_until(next_retry), if next_retry.is_some() => self.republish_due()?,
                // PRIORITY 3: the oldest confirm is overdue.
                _ = sleep_until(deadline), if deadline.is_some() && !self.blocked => {
                    return Err(Error::new(ErrorKind::ConfirmTimeout, format!(
                        "{} message(s) unconfirmed for more than {:?} (broker.confirm_timeout); treating the broker connection as dead",
                        self.inflight.len(), self.settings.confirm_timeout)));
                }
                // PRIORITY 4: connection health and lag.
                _ = health.tick() => {
                    self.channel.tick(Instant::now())?;
                    if !self.channel.is_open() {
                        return Err(Error::new(ErrorKind::BrokerConnection, "the broker connection or channel closed"));
                    }
                    self.update_lag();
                }
                // PRIORITY 5: new work, when there is room.
                txn = rx.recv(), if intake_open && self.current.is_none() && room => match txn {
                    Some(txn) => if let Err(e) = self.accept(txn) {
                        (failed, intake_open) = (Some(e), false);
                    },
                    None => intake_open = false,
                },
            }
            // Publish, and take whatever else is already waiting while the
            // window has room: a backlog goes out a window at a time, in one
            // write, not one message per turn.
            loop {
                self.publish_current()?;
                if !(intake_open && self.current.is_none() && self.has_room()) {
                    break;
                }
                match rx.try_recv() {
                    Ok(txn) => {
                        if let Err(e) = self.accept(txn) {
                            (failed, intake_open) = (Some(e), false);
                        }
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        intake_open = false;
                        break;
                    }
                }
            }
            // Once per turn, however many messages and confirms it moved.
            self.metrics.set_in_flight(self.inflight.len());
            self.report_progress();
        }
    }

    /// Renders a transaction and registers it in the tracker before any of
    /// its messages is published.
    fn accept(&mut self, txn: Transaction) -> Result<()> {
        let mut messages = VecDeque::with_capacity(txn.events.len());
        for ev in &txn.events {
            if let Some(m) = self.router.render(ev)? {
                messages.push_back(Arc::new(m));
            } else {
                tracing::debug!(position = %txn.position, ordinal = ev.ordinal, "event declined by every route's `when` filter");
            }
        }
        let id = match self.open_txn.take() {
            Some(id) if txn.part.continued => {
                self.tracker.extend(id, messages.len(), (!txn.part.more).then_some(txn.position));
                id
            }
            _ => self.tracker.register(txn.position, txn.commit_time, messages.len(), txn.part.more),
        };
        if txn.part.more {
            self.open_txn = Some(id);
        }
        self.current = Some(Current { txn: id, messages });
        Ok(())
    }

    /// Publishes messages of the current transaction while the window has room.
    fn publish_current(&mut self) -> Result<()> {
        // While the broker blocks the connection, publishing waits (it is
        // flow control, not a failure).
        while !self.blocked && self.has_room() {
            let Some(cur) = self.current.as_mut() else { return Ok(()) };
            let Some(msg) = cur.messages.pop_front() else {
                self.current = None;
                return Ok(());
            };
            let txn = cur.txn;
            self.held_bytes += msg.body.len();
            self.send(Pending::new(txn, msg, Instant::now(), 1))?;
        }
        Ok(())
    }

    /// Lets confirms wait to be read in a batch (see [`amqp`]) while the
    /// window is nearly empty and nothing else needs them, for at most
    /// [`CONFIRM_BATCH`]; returns when to read them, while they wait.
    fn batch_confirms(&mut self, steady: bool) -> Option<Instant> {
        let held = self.inflight.len();
        let can_wait = steady
            && self.settings.batch_confirms
            && !self.blocked
            && self.retries.is_empty()
            && held > 0
            && held * 4 < self.settings.max_in_flight
            && self.held_bytes * 4 < self.settings.max_in_flight_bytes;
        let now = Instant::now();
        let since = match (can_wait, self.acks_waiting_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, Some(t)) => Some(t),
        };
        self.acks_waiting_since = since;
        let read_at = since.map(|t| t + CONFIRM_BATCH).filter(|at| *at > now);
        self.channel.batch_confirms(read_at.is_some());
        read_at
    }

    /// Whether one more message may be published: the window counts what is
    /// in flight and what waits for a republish, and so does the byte budget
    /// (a message larger than the budget still goes when nothing is held).
    fn has_room(&self) -> bool {
        let held = self.inflight.len() + self.retries.len();
        held < self.settings.max_in_flight && (held == 0 || self.held_bytes < self.settings.max_in_flight_bytes)
    }

    /// A message leaves for good (confirmed, or dropped by its policy).
    fn release(&mut self, p: &Pending) {
        self.held_bytes = self.held_bytes.saturating_sub(p.msg.body.len());
    }

    fn send(&mut self, mut p: Pending) -> Result<()> {
        let tag = self.channel.publish(&p.msg)?;
        p.sent_at = Instant::now();
        self.inflight.insert(tag, p);
        Ok(())
    }

    fn republish_due(&mut self) -> Result<()> {
        let now = Instant::now();
        while let Some(i) = self.retries.iter().position(|(at, _)| *at <= now) {
            let (_, mut p) = self.retries.remove(i).expect("index from position");
            p.attempts += 1;
            self.send(p)?;
        }
        Ok(())
    }

    /// Handles everything the broker said since the last read (the turn
    /// reports the progress once, at its end).
    fn on_events(&mut self) -> Result<()> {
        while let Some(ev) = self.channel.next_event() {
            self.on_event(ev)?;
        }
        Ok(())
    }

    fn on_event(&mut self, ev: BrokerEvent) -> Result<()> {
        let outcomes = match ev {
            BrokerEvent::Ack { tag, multiple } => self.inflight.on_ack(tag, multiple),
            BrokerEvent::Nack { tag, multiple } => self.inflight.on_nack(tag, multiple),
            BrokerEvent::Return { message_id, reply_code, reply_text } => {
                if self.inflight.on_return(message_id.as_deref(), reply_code, &reply_text) == 0 {
                    return Err(Error::new(ErrorKind::BrokerChannel, format!(
                        "the broker returned message_id {message_id:?} ({reply_code} {reply_text}) which is not in flight; reconnecting to be safe")));
                }
                return Ok(());
            }
            BrokerEvent::ChannelClosed { code, text } => {
                if code == PRECONDITION_FAILED && text.contains("larger than") {
                    // A body over the broker's max_message_size: the same row
                    // would fail again after every restart. It needs a person.
                    let culprit = self.inflight.largest().map_or_else(String::new, |p| {
                        format!(
                            "event {} (route {:?}, {} bytes) ",
                            p.msg.message_id,
                            self.router.route_name(p.msg.route),
                            p.msg.body.len()
                        )
                    });
                    return Err(Error::new(ErrorKind::Data, format!(
                        "{culprit}is larger than the broker accepts ({code} {text}): raise RabbitMQ's max_message_size, or keep such payloads out of the outbox")));
                }
                let endpoint = self.channel.endpoint();
                return Err(Error::new(
                    ErrorKind::BrokerChannel,
                    format!("RabbitMQ at {endpoint} closed the channel: {code} {text}"),
                ));
            }
            BrokerEvent::ConnectionLost { reason } => {
                let endpoint = self.channel.endpoint();
                let message = format!("lost the connection to RabbitMQ at {endpoint}: {reason}");
                return Err(Error::new(ErrorKind::BrokerConnection, message));
            }
            BrokerEvent::Blocked(reason) => {
                tracing::warn!(%reason, "broker blocked publishing (resource alarm); waiting");
                self.blocked = true;
                return Ok(());
            }
            BrokerEvent::Unblocked => {
                tracing::info!("broker unblocked publishing");
                self.blocked = false;
                // Restart the confirm clock for what waited through the block.
                self.inflight.restart_clock(Instant::now());
                return Ok(());
            }
        };
        for o in outcomes {
            self.on_outcome(o)?;
        }
        Ok(())
    }

    fn on_outcome(&mut self, o: Outcome) -> Result<()> {
        match o {
            Outcome::Confirmed(p) => {
                let age = self.commit_age(p.txn);
                self.metrics.event_confirmed(p.msg.route, age);
                self.release(&p);
                self.tracker.confirm(p.txn);
            }
            Outcome::Nacked(mut p) => {
                self.metrics.nack();
                p.nacks += 1;
                if p.nacks >= NACKS_BEFORE_RECONNECT {
                    return Err(Error::new(ErrorKind::BrokerChannel, format!(
                        "RabbitMQ at {} nacked message {}{} {} times in a row; reopening the connection (after a quorum queue's leader moved, a channel can refuse every publish until it is reopened; a queue full under x-overflow = reject-publish nacks too)",
                        self.channel.endpoint(), p.msg.message_id, p.msg.trace_id().map(|t| format!(" (trace_id {t})")).unwrap_or_default(), p.nacks)));
                }
                if let Some(nacks) = self.nack_log.hit(Instant::now()) {
                    tracing::warn!(message_id = %p.msg.message_id, trace_id = p.msg.trace_id(), exchange = %p.msg.exchange, attempts = p.attempts, nacks,
                        "broker nacked messages; republishing each after a backoff (the position waits for them); repeats are counted, logged every 10 s");
                }
                self.schedule_retry(p);
            }
            Outcome::Returned { pending: mut p, reply_code, reply_text } => {
                p.nacks = 0;
                self.metrics.event_unroutable(p.msg.route);
                self.on_returned(p, reply_code, reply_text);
            }
        }
        Ok(())
    }

    fn on_returned(&mut self, p: Pending, code: u16, text: String) {
        let m = &p.msg;
        let (policy, dead_letter_exchange) = self.router.unroutable_policy(m.route);
        let dead_letter_exchange = dead_letter_exchange.to_owned();
        match policy {
            OnUnroutable::Block => {
                if self.return_log.len() <= m.route {
                    self.return_log.resize_with(m.route + 1, Throttle::default);
                }
                if let Some(returns) = self.return_log[m.route].hit(Instant::now()) {
                    tracing::error!(message_id = %m.message_id, trace_id = m.trace_id(), exchange = %m.exchange, routing_key = %m.routing_key, reply = %format!("{code} {text}"), attempts = p.attempts, returns,
                        "unroutable message: no queue is bound for this routing key; holding the position and retrying (bind a queue, or set on_unroutable); repeats are counted, logged every 10 s");
                }
                self.schedule_retry(p);
            }
            OnUnroutable::Drop => {
                tracing::warn!(message_id = %m.message_id, trace_id = m.trace_id(), exchange = %m.exchange, routing_key = %m.routing_key, "unroutable message dropped (on_unroutable = \"drop\")");
                self.release(&p);
                self.tracker.confirm(p.txn);
            }
            OnUnroutable::DeadLetter => {
                if *m.exchange == *dead_letter_exchange {
                    tracing::error!(message_id = %m.message_id, trace_id = m.trace_id(), exchange = %m.exchange, "dead-letter exchange returned the message too; holding the position and retrying");
                    self.schedule_retry(p);
                    return;
                }
                let mut dead = (**m).clone();
                dead.body = bytes::Bytes::copy_from_slice(&m.body); // see schedule_retry
                dead.headers.push(("x-outbox-original-exchange".into(), HeaderValue::Str(m.exchange.to_string())));
                dead.headers.push(("x-outbox-original-routing-key".into(), HeaderValue::Str(m.routing_key.clone())));
                dead.headers.push(("x-outbox-reason".into(), HeaderValue::Str(format!("{code} {text}"))));
                dead.exchange = dead_letter_exchange.into();
                tracing::warn!(message_id = %m.message_id, trace_id = m.trace_id(), exchange = %m.exchange, routing_key = %m.routing_key, dead_letter_exchange = %dead.exchange, "unroutable message sent to the dead-letter exchange");
                // attempts 0: republish_due counts the first send of the dead letter.
                self.retries.push_back((Instant::now(), Pending::new(p.txn, Arc::new(dead), Instant::now(), 0)));
            }
        }
    }

    fn schedule_retry(&mut self, mut p: Pending) {
        if p.attempts <= 1 {
            // A body read from the WAL is a slice of the buffer it arrived
            // in, shared with its neighbours; a message that may wait for
            // a long time (an unroutable one under `block`) must not keep
            // that whole buffer alive: it gets a copy of its own, once.
            let copy = bytes::Bytes::copy_from_slice(&p.msg.body);
            Arc::make_mut(&mut p.msg).body = copy;
        }
        let exp = p.attempts.saturating_sub(1).min(6);
        let base = Duration::from_millis(500) * (1u32 << exp);
        let delay = base.min(Duration::from_secs(30)).mul_f64(0.8 + fastrand::f64() * 0.4);
        self.retries.push_back((Instant::now() + delay, p));
    }

    /// Seconds from the commit of `txn` to now (call before confirming it).
    fn commit_age(&self, txn: TxnId) -> f64 {
        self.tracker
            .commit_time(txn)
            .and_then(|t| SystemTime::now().duration_since(t.to_system_time()).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    fn update_lag(&self) {
        let lag = self
            .tracker
            .oldest_pending_commit()
            .and_then(|t| SystemTime::now().duration_since(t.to_system_time()).ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics.set_lag_seconds(lag);
    }

    fn report_progress(&self) {
        let p = self.tracker.progress();
        self.progress.send_if_modified(|cur| {
            if *cur != p {
                *cur = p;
                true
            } else {
                false
            }
        });
        self.update_lag();
    }
}

/// AMQP 406, with which RabbitMQ closes a channel for a body over
/// `max_message_size`.
const PRECONDITION_FAILED: u16 = 406;

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
