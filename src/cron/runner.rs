//! Runs one CronJobTrigger: sleeps until each tick, applies the concurrency policy, remembers the
//! tick, and hands the call to the shared delivery path (timeout, retries, metrics).

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kubeless_connector::{AckHandle, Acker, Health, Message, Origin, Outcome, Position, SourceState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::schedule::{missed_tick, Schedule};
use super::state::{FileStateStore, StateStore};
use crate::control::index::CronSource;
use crate::delivery::Deliverer;
use crate::resources::ConcurrencyPolicy;
use crate::telemetry::CronMetrics;

/// Counts each tick's final outcome.
struct TickOutcomes(CronMetrics);

impl Acker for TickOutcomes {
    fn ack(&self, _position: Position, outcome: Outcome) {
        match outcome {
            Outcome::Delivered => self.0.succeeded.increment(1),
            Outcome::DeadLettered => self.0.failed.increment(1),
            // Ticks are retried in the dispatcher, never handed back.
            Outcome::Redeliver { .. } => {}
        }
    }
}

/// One trigger's scheduler.
struct Runner {
    trigger: String,
    source: CronSource,
    deliverer: Arc<Deliverer>,
    store: FileStateStore,
    metrics: CronMetrics,
    outcomes: Arc<dyn Acker>,
    body: Bytes,
    /// Calls in progress, each with its own cancel token (for `Replace`).
    running: JoinSet<()>,
    cancel_running: CancellationToken,
}

/// Runs until `stop`; returns an error only if the schedule or its state cannot be used.
pub async fn run(
    trigger: &str,
    source: &CronSource,
    deliverer: Arc<Deliverer>,
    metrics: CronMetrics,
    health: &Health,
    stop: &CancellationToken,
) -> Result<(), String> {
    let schedule = Schedule::parse(&source.schedule, source.timezone.as_deref()).map_err(|e| e.to_string())?;
    let store = FileStateStore::new(&source.state_dir);
    let key = format!("cron/{trigger}");
    let mut last = store.last_fired(&key).map_err(|e| e.to_string())?;
    let body = match &source.payload {
        Some(p) => Bytes::from(serde_json::to_vec(p).map_err(|e| format!("payload cannot be encoded: {e}"))?),
        None => Bytes::new(),
    };
    let mut runner = Runner {
        trigger: trigger.to_string(),
        source: source.clone(),
        deliverer,
        store,
        outcomes: Arc::new(TickOutcomes(metrics.clone())),
        metrics,
        body,
        running: JoinSet::new(),
        cancel_running: CancellationToken::new(),
    };
    health.set(SourceState::Ready);
    info!(trigger, schedule = %source.schedule, last_fired = ?last, "Cron schedule loaded.");

    if let Some(tick) = missed_tick(&schedule, last, Utc::now(), source.starting_deadline) {
        info!(trigger, %tick, "Firing a tick missed while the scheduler was down.");
        runner.fire(tick, &key);
        last = Some(tick);
    }
    loop {
        let now = Utc::now();
        let from = last.map_or(now, |l| l.max(now));
        let Some(next) = schedule.next_after(from) else {
            warn!(trigger, "The schedule has no further ticks.");
            break;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => break,
        }
        // Reap finished calls, so Forbid sees only the ones still running.
        while runner.running.try_join_next().is_some() {}
        runner.fire(next, &key);
        last = Some(next);
    }
    // Nothing to commit for a tick: calls still running are cancelled with the trigger.
    runner.cancel_running.cancel();
    runner.running.abort_all();
    Ok(())
}

impl Runner {
    fn fire(&mut self, tick: DateTime<Utc>, key: &str) {
        match self.source.concurrency {
            ConcurrencyPolicy::Forbid if !self.running.is_empty() => {
                warn!(trigger = %self.trigger, %tick, "Tick skipped: the previous call is still running (Forbid).");
                self.metrics.skipped.increment(1);
                self.remember(key, tick);
                return;
            }
            ConcurrencyPolicy::Replace if !self.running.is_empty() => {
                warn!(trigger = %self.trigger, %tick, "Cancelling the running call for the new tick (Replace).");
                self.metrics.replaced.increment(1);
                self.cancel_running.cancel();
                self.running.abort_all();
                self.cancel_running = CancellationToken::new();
            }
            _ => {}
        }
        // Remembered before the call: after a restart this tick is never fired again.
        self.remember(key, tick);
        self.metrics.fired.increment(1);
        self.metrics.lateness.record((Utc::now() - tick).to_std().unwrap_or_default().as_secs_f64());
        let msg = Message {
            payload: self.body.clone(),
            key: None,
            headers: Vec::new(),
            origin: Origin {
                source: Arc::from(self.trigger.as_str()),
                partition: 0,
                offset: tick.timestamp(),
                timestamp_ms: Some(tick.timestamp_millis()),
            },
            attempt: 1,
            ack: AckHandle::new(self.outcomes.clone(), Position { slot: 0, generation: 0, offset: tick.timestamp() }),
        };
        let (deliverer, cancel) = (self.deliverer.clone(), self.cancel_running.clone());
        self.running.spawn(async move { deliverer.deliver(msg, &cancel).await });
    }

    fn remember(&self, key: &str, tick: DateTime<Utc>) {
        if let Err(e) = self.store.set_last_fired(key, tick) {
            error!(trigger = %self.trigger, error = %e, "Cannot remember the fired tick; a restart may fire it again.");
        }
    }
}
