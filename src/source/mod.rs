//! Sources of committed outbox events.
//!
//! What the pipeline sees of a source: whole transactions in commit order on
//! a bounded channel (backpressure), and a [`crate::ack::Progress`] watch
//! through which the publisher hands back what the broker confirmed. The
//! source alone turns that into the position it reports upstream.
//!
//! Every source is handed one [`SourceLink`] by the session and keeps the same
//! contract with it:
//!
//! - it sends transactions on `txns` in its own order until `stop`;
//! - when the publisher is gone (`progress` closed) while not stopping, it
//!   reports what was confirmed if it still can, and returns
//!   [`publisher_gone`]: the session knows why the publisher ended;
//! - on `stop` it takes no new work, drops `txns`, and keeps reporting
//!   progress until the publisher has drained (or the session gave up on it
//!   and `progress` closed); then it reports the final position and returns.

pub mod polling;
pub mod postgres;
pub mod replication;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::ack::Progress;
use crate::error::{Error, ErrorKind};
use crate::event::Transaction;
use crate::health::Health;

/// What a source is given by the session that runs it.
#[derive(Debug)]
pub struct SourceLink {
    /// Where committed transactions go, in order; bounded.
    pub txns: mpsc::Sender<Transaction>,
    /// The publisher's confirmed progress; closed once the publisher ended.
    pub progress: watch::Receiver<Progress>,
    /// Cancelled when the relay is asked to stop.
    pub stop: CancellationToken,
    /// Beaten while the source's loop turns (the watchdog reads it).
    pub health: Arc<Health>,
}

/// What a source returns when the publisher ended under it while it was not
/// stopping. The session replaces it with the publisher's own result.
pub fn publisher_gone() -> Error {
    Error::new(ErrorKind::BrokerConnection, "the publisher stopped taking transactions")
}
