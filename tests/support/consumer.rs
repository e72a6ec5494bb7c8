//! A RabbitMQ consumer that records every delivery by `message_id`, so tests
//! can assert "each id at least once, first deliveries in commit order".

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqprs::channel::{
    BasicConsumeArguments, Channel, ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{BasicProperties, FieldValue};

/// One delivery.
#[derive(Clone, Debug)]
pub struct Received {
    /// `message_id`.
    pub message_id: String,
    /// Routing key it was published with.
    pub routing_key: String,
    /// All properties.
    pub properties: BasicProperties,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value as a string (long strings only).
    pub fn header(&self, name: &str) -> Option<String> {
        let h = self.properties.headers()?;
        let v = h.as_ref().iter().find(|(k, _)| k.as_ref() as &str == name).map(|(_, v)| v.clone())?;
        match v {
            FieldValue::S(s) => Some(s.as_ref().to_string()),
            other => Some(other.to_string()),
        }
    }
}

/// A topic exchange and a queue bound to it with `#`, consumed into memory.
pub struct Consumer {
    /// The exchange to route to.
    pub exchange: String,
    /// The queue.
    pub queue: String,
    received: Arc<Mutex<Vec<Received>>>,
    _connection: Connection,
    channel: Channel,
}

/// Connection arguments for an `amqp://user:pass@host:port/%2f` URL (vhost `/`).
pub fn url_args(url: &str) -> OpenConnectionArguments {
    let u = url::Url::parse(url).expect("amqp url");
    OpenConnectionArguments::new(
        u.host_str().unwrap(),
        u.port().unwrap_or(5672),
        u.username(),
        u.password().unwrap_or("guest"),
    )
    .virtual_host("/")
    .finish()
}

impl Consumer {
    /// On the broker at `url`: a durable topic exchange and a durable queue
    /// bound with `binding`, nothing consumed yet (so messages wait in the
    /// queue across a broker restart). Returns (exchange, queue).
    pub async fn declare_durable(url: &str, binding: &str) -> (String, String) {
        let exchange = super::random_name("x.");
        let queue = super::random_name("q.");
        let connection = Connection::open(&url_args(url)).await.expect("connection");
        let channel = connection.open_channel(None).await.expect("channel");
        channel
            .exchange_declare(ExchangeDeclareArguments::new(&exchange, "topic").durable(true).finish())
            .await
            .expect("declare exchange");
        channel.queue_declare(QueueDeclareArguments::new(&queue).durable(true).finish()).await.expect("declare queue");
        channel.queue_bind(QueueBindArguments::new(&queue, &exchange, binding)).await.expect("bind");
        let _ = connection.close().await;
        (exchange, queue)
    }

    /// Consumes an existing queue on the broker at `url`.
    pub async fn consume_existing(url: &str, exchange: &str, queue: &str) -> Consumer {
        let connection = Connection::open(&url_args(url)).await.expect("consumer connection");
        let channel = connection.open_channel(None).await.expect("consumer channel");
        let mut c = Consumer {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            received: Arc::default(),
            _connection: connection,
            channel,
        };
        c.consume().await;
        c
    }

    async fn consume(&mut self) {
        let (_tag, mut rx) = self
            .channel
            .basic_consume_rx(BasicConsumeArguments::new(&self.queue, "").manual_ack(false).finish())
            .await
            .expect("consume");
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let props = m.basic_properties.unwrap_or_default();
                let rec = Received {
                    message_id: props.message_id().cloned().unwrap_or_default(),
                    routing_key: m.deliver.map(|d| d.routing_key().clone()).unwrap_or_default(),
                    properties: props,
                    body: m.content.unwrap_or_default(),
                };
                received.lock().unwrap().push(rec);
            }
        });
    }

    /// Declares a fresh topic exchange and queue bound with `binding`, and starts consuming.
    pub async fn start(binding: &str) -> Consumer {
        let exchange = super::random_name("x.");
        let c = Consumer::declare_only(&exchange).await;
        c.bind_queue(binding).await
    }

    /// Declares the exchange only (no queue: everything is unroutable).
    pub async fn declare_only(exchange: &str) -> Consumer {
        let connection = Connection::open(&url_args(&super::amqp_url())).await.expect("consumer connection");
        let channel = connection.open_channel(None).await.expect("consumer channel");
        channel
            .exchange_declare(
                ExchangeDeclareArguments::new(exchange, "topic").durable(false).auto_delete(false).finish(),
            )
            .await
            .expect("declare exchange");
        Consumer {
            exchange: exchange.to_owned(),
            queue: String::new(),
            received: Arc::default(),
            _connection: connection,
            channel,
        }
    }

    /// Declares a queue bound to the exchange with `binding` and consumes it.
    pub async fn bind_queue(mut self, binding: &str) -> Consumer {
        let queue = super::random_name("q.");
        self.channel
            .queue_declare(QueueDeclareArguments::new(&queue).durable(false).auto_delete(true).finish())
            .await
            .expect("declare queue");
        self.channel.queue_bind(QueueBindArguments::new(&queue, &self.exchange, binding)).await.expect("bind queue");
        self.queue = queue;
        self.consume().await;
        self
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many deliveries so far.
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Distinct ids received.
    pub fn distinct(&self) -> usize {
        let r = self.received.lock().unwrap();
        r.iter().map(|m| m.message_id.as_str()).collect::<HashSet<_>>().len()
    }

    /// Waits until every id in `ids` has been received at least once.
    #[track_caller]
    pub fn wait_for_ids<'a>(&'a self, ids: &'a [String], timeout: Duration) -> impl Future<Output = ()> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let want: HashSet<&str> = ids.iter().map(String::as_str).collect();
            super::wait_until_at(caller, timeout, "all ids delivered", || {
                let got: HashSet<String> = self.received().into_iter().map(|m| m.message_id).collect();
                let done = want.iter().all(|id| got.contains(*id));
                async move { done }
            })
            .await;
        }
    }

    /// Waits until at least `n` deliveries (duplicates included) have been received.
    #[track_caller]
    pub fn wait_for_count(&self, n: usize, timeout: Duration) -> impl Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        let what = format!("{n} deliveries");
        async move {
            super::wait_until_at(caller, timeout, &what, || {
                let c = self.count();
                async move { c >= n }
            })
            .await;
        }
    }

    /// Waits for `n` more deliveries than so far (the relay made progress),
    /// but never for more than `cap` in all: a fault test's writer commits a
    /// known number of events, and without duplicates "n more" may not exist
    /// once it has finished.
    #[track_caller]
    pub fn wait_for_more(&self, n: usize, cap: usize, timeout: Duration) -> impl Future<Output = ()> + '_ {
        self.wait_for_count((self.count() + n).min(cap), timeout)
    }
}

/// The delivery checker: every expected id at least once, no unexpected id,
/// first deliveries of each aggregate in commit order. Returns the number of
/// duplicate deliveries.
///
/// `expected` lists `(aggregate, id)` in commit order.
#[track_caller]
pub fn check_delivery(expected: &[(String, String)], received: &[Received]) -> usize {
    let mut first_pos: HashMap<&str, usize> = HashMap::new();
    let mut dups = 0;
    for (i, r) in received.iter().enumerate() {
        if first_pos.insert(r.message_id.as_str(), i).is_some() {
            dups += 1;
            // keep the first position
            let first = received.iter().position(|x| x.message_id == r.message_id).unwrap();
            first_pos.insert(r.message_id.as_str(), first);
        }
    }
    let known: HashSet<&str> = expected.iter().map(|(_, id)| id.as_str()).collect();
    for r in received {
        assert!(known.contains(r.message_id.as_str()), "unexpected message id {} was delivered", r.message_id);
    }
    let mut last_by_agg: HashMap<&str, (usize, &str)> = HashMap::new();
    for (agg, id) in expected {
        let pos =
            *first_pos.get(id.as_str()).unwrap_or_else(|| panic!("event {id} of aggregate {agg} was never delivered"));
        if let Some((prev, prev_id)) = last_by_agg.get(agg.as_str()) {
            assert!(pos > *prev, "aggregate {agg}: event {id} was first delivered before the earlier event {prev_id}");
        }
        last_by_agg.insert(agg.as_str(), (pos, id.as_str()));
    }
    dups
}
