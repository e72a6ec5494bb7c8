//! Sources of committed outbox events.
//!
//! What the pipeline sees of a source: whole transactions in commit order on
//! a bounded channel (backpressure), and a [`crate::ack::Progress`] watch
//! through which the publisher hands back what the broker confirmed. The
//! source alone turns that into the position it reports upstream.

pub mod polling;
pub mod postgres;
pub mod replication;
