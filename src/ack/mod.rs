//! Acknowledgement: which position may be reported to PostgreSQL.
//!
//! [`tracker`] keeps the ordered set of transactions in flight and yields the
//! newest commit end LSN that, with everything before it, is confirmed by the
//! broker. [`position`] turns candidates into the monotonic flush position
//! sent in standby status updates.
#![deny(missing_docs)]

pub mod position;
pub mod tracker;

pub use position::{FlushPosition, Reported};
pub use tracker::{Progress, Tracker, TxnId};
