//! systemd integration (`Type=notify`): READY=1 once the relay streams or
//! stands by, a STATUS= line on every change of state, and WATCHDOG=1 pings
//! while the streaming loop keeps turning (see [`Health::alive`]) when
//! `WatchdogSec=` is set. Outside
//! systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::health::{Health, State};

/// Watches the health state: tells systemd READY=1 the first time the relay
/// is streaming or standing by, and updates STATUS=; pings the watchdog at
/// half its interval. Ends when `stop` is cancelled.
pub fn spawn(health: Arc<Health>, stop: CancellationToken) {
    let mut usec = 0u64;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2);
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_millis(500)).min(Duration::from_millis(500)));
        let mut last = None;
        let mut ready = false;
        let mut last_ping = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
                    return;
                }
                _ = tick.tick() => {}
            }
            let state = health.get();
            if last != Some(state) {
                let status = match state {
                    State::Starting => "connecting",
                    State::Streaming => "active: streaming",
                    State::Standby => "standby: another instance holds the slot",
                    State::Stopping => "stopping",
                    State::SlotLost => "slot lost: run outbox-relay recover",
                };
                let _ = sd_notify::notify(false, &[NotifyState::Status(status)]);
                if !ready && matches!(state, State::Streaming | State::Standby) {
                    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
                    ready = true;
                }
                last = Some(state);
            }
            if let Some(interval) = watchdog {
                // Ping only while the pipeline turns: a wedged loop gets restarted.
                if last_ping.elapsed() >= interval && health.alive(crate::health::WEDGED_AFTER) {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                    last_ping = tokio::time::Instant::now();
                }
            }
        }
    });
}
