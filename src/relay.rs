//! The supervisor: runs pipeline sessions ([`crate::session`]) one after
//! another. On a failure it decides by the error's kind: stop (a person must
//! act), stand by (another instance holds the slot), or retry with capped
//! exponential backoff and jitter, starting again from the slot's confirmed
//! position (crash-only: nothing in memory survives a failure).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, OnSlotLost};
use crate::error::{End, ErrorKind, Policy, Result};
use crate::health::State;
use crate::publish::nodes::BrokerNodes;
use crate::session::{self, Handles};

/// Backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a standby retries the slot.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
/// A session that ran this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);
/// Before moving on to the next broker node after a failure: time for the
/// last session's walsender to leave the slot (a restart that finds it still
/// active would stand by for `STANDBY_RETRY`).
const FAILOVER_PAUSE: Duration = Duration::from_millis(100);

/// Runs until `stop` is cancelled (then drains and returns `Ok`) or until an
/// error whose policy is [`Policy::Stop`].
///
/// # Errors
///
/// Configuration and data errors, which need a person.
pub async fn supervise(config: &Config, handles: &Handles, stop: &CancellationToken) -> Result<()> {
    let mut failures: u32 = 0;
    // A standby stays "standby" (ready) while it retries the slot.
    let mut standing_by = false;
    // While the slot is lost, readiness says so, through recovery attempts.
    let mut slot_lost = false;
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        if !standing_by && !slot_lost {
            handles.health.set(State::Starting);
        }
        let started = Instant::now();
        let result = session::run(config, handles, stop).await;
        if started.elapsed() > HEALTHY_SESSION {
            failures = 0;
        }
        let err = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        handles.metrics.set_active(false);
        handles.metrics.broker_disconnected();
        if stop.is_cancelled() {
            tracing::info!(error = %err.chain(), "stopped while recovering from an error");
            return Ok(());
        }
        if err.kind() == ErrorKind::SlotLost {
            slot_lost = true;
            handles.health.slot_lost(err.context());
            handles.metrics.set_slot_lost(true);
            tracing::error!(error = %err.chain(), hint = err.kind().hint(), "replication slot lost");
            if config.source.on_slot_lost == OnSlotLost::Stop {
                return Err(err);
            }
            // on_slot_lost = "recover": what `outbox-relay recover` does, then stream on.
            match crate::recover::run(config, stop).await {
                Ok(report) => {
                    tracing::info!(%report, "recovered from the lost slot; streaming from the new slot");
                    slot_lost = false;
                    handles.reported.forget();
                    handles.metrics.set_slot_lost(false);
                    handles.health.set(State::Starting);
                    failures = 0;
                    continue;
                }
                Err(_) if stop.is_cancelled() => return Ok(()),
                Err(e) if e.kind().policy() == Policy::Stop => return Err(e),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let d = backoff(failures);
                    tracing::error!(error = %e.chain(), hint = e.kind().hint(), retry_in = ?d, "recovery failed; trying again");
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(d) => {}
                    }
                    continue;
                }
            }
        }
        if err.kind().policy() == Policy::Stop {
            return Err(err);
        }
        standing_by = err.kind() == ErrorKind::SlotInUse;
        let mut broker_round = false;
        let delay = if standing_by {
            handles.health.set(State::Standby);
            tracing::info!(retry_in = ?STANDBY_RETRY, reason = %err.chain(), "standing by: another instance holds the slot");
            STANDBY_RETRY
        } else {
            handles.health.set(State::Starting);
            if let Some(end) = err.kind().end() {
                handles.metrics.reconnect(end.as_str());
            }
            // Broker nodes are tried one after another; the backoff is between full rounds.
            broker_round = err.kind().end() == Some(End::Broker);
            if broker_round && handles.brokers.after_failure() {
                broker_round = false;
                tracing::error!(error = %err.chain(), kind = err.kind().as_str(), "RabbitMQ connection lost; moving to the next node of broker.url and restarting from the slot's confirmed position");
                FAILOVER_PAUSE
            } else {
                failures = failures.saturating_add(1);
                let d = backoff(failures);
                tracing::error!(error = %err.chain(), kind = err.kind().as_str(), hint = err.kind().hint(), retry_in = ?d, attempt = failures, "pipeline failed; restarting from the slot's confirmed position");
                d
            }
        };
        // After a round in which no broker node was usable, a node coming back cuts the backoff short.
        let wait = async {
            if broker_round {
                BrokerNodes::backoff(&config.broker, delay).await;
            } else {
                tokio::time::sleep(delay).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = wait => {}
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    let d = BACKOFF_MIN.saturating_mul(1 << exp).min(BACKOFF_MAX);
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}
