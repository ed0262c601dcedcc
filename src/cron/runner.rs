//! Runs one CronJobTrigger: sleeps until each tick, applies the concurrency policy, remembers the
//! tick, and hands the call to the shared delivery path (timeout, retries, metrics).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use kubeless_connector::{AckHandle, Acker, Failure, Health, Message, Origin, Outcome, Position, Reason, SourceState};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::state::TickStore;
use crate::control::spec::CronSource;
use crate::delivery::Deliverer;
use crate::resources::ConcurrencyPolicy;
use crate::schedule::{missed_tick, Schedule};
use crate::telemetry::CronMetrics;

/// Calls of one trigger running at once under `Allow`; a tick beyond it is skipped.
pub const MAX_CONCURRENT_CALLS: usize = 10;

/// Counts each tick's final outcome.
struct TickOutcomes(CronMetrics);

impl Acker for TickOutcomes {
    fn ack(&self, _position: Position, outcome: Outcome) {
        match outcome {
            Outcome::Delivered => self.0.succeeded.increment(1),
            // A call that panicked did not succeed either.
            Outcome::DeadLettered | Outcome::Abandoned => self.0.failed.increment(1),
            // Ticks are retried in the dispatcher, never handed back; a released one was replaced
            // or stopped, and is counted as such.
            Outcome::Redeliver { .. } | Outcome::Released => {}
        }
    }
}

/// One trigger's scheduler.
struct Runner {
    trigger: String,
    source: CronSource,
    deliverer: Arc<Deliverer>,
    ticks: Arc<dyn TickStore>,
    health: Health,
    metrics: CronMetrics,
    outcomes: Arc<dyn Acker>,
    body: Bytes,
    /// Calls in progress, each with its own cancel token (for `Replace`).
    running: JoinSet<()>,
    cancel_running: CancellationToken,
}

/// Where a scheduler keeps its ticks, and whether this replica schedules at all.
#[derive(Clone)]
pub struct Scheduling {
    pub ticks: Arc<dyn TickStore>,
    /// True while this replica is the one that fires ticks (always, in standalone mode).
    pub leading: watch::Receiver<bool>,
}

/// Runs until `stop`; returns an error only if the schedule or its state cannot be used.
pub async fn run(
    trigger: &str,
    source: &CronSource,
    deliverer: Arc<Deliverer>,
    metrics: CronMetrics,
    health: &Health,
    scheduling: Scheduling,
    stop: &CancellationToken,
) -> Result<(), Failure> {
    let invalid = |detail: String| Failure::new(Reason::InvalidConfig, detail);
    let schedule = Schedule::parse(&source.schedule, source.timezone.as_deref()).map_err(|e| invalid(e.to_string()))?;
    let body = match &source.payload {
        Some(p) => Bytes::from(serde_json::to_vec(p).map_err(|e| invalid(format!("payload cannot be encoded: {e}")))?),
        None => Bytes::new(),
    };
    let mut runner = Runner {
        trigger: trigger.to_string(),
        source: source.clone(),
        deliverer,
        ticks: scheduling.ticks,
        health: health.clone(),
        outcomes: Arc::new(TickOutcomes(metrics.clone())),
        metrics,
        body,
        running: JoinSet::new(),
        cancel_running: CancellationToken::new(),
    };
    // A replica that does not lead is a ready standby.
    health.set(SourceState::Ready);
    let (mut leading, mut lost) = (scheduling.leading.clone(), scheduling.leading);
    let result = loop {
        tokio::select! {
            () = until_leading(&mut leading) => {}
            () = stop.cancelled() => break Ok(()),
        }
        tokio::select! {
            result = runner.lead(&schedule, stop) => break result,
            () = until_not_leading(&mut lost) => {
                info!(trigger, "No longer the leader: this replica stops firing ticks.");
            }
        }
    };
    // Nothing to commit for a tick: calls still running are cancelled with the trigger.
    runner.cancel_running.cancel();
    let calls = std::mem::take(&mut runner.running);
    cancelled(calls).await;
    result
}

/// How long cancelled calls get to hand their ticks back before their tasks are aborted. They
/// answer a cancellation at their next await (a request, a retry's sleep), well inside this.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Waits for calls whose token was cancelled to release their ticks, then aborts what is left.
/// Aborting at once would drop their handles without an outcome, which reads as a lost message.
async fn cancelled(mut calls: JoinSet<()>) {
    let released = async { while calls.join_next().await.is_some() {} };
    if tokio::time::timeout(CANCEL_GRACE, released).await.is_err() {
        calls.abort_all();
    }
}

impl Runner {
    /// Fires ticks until `stop` (or until the caller stops polling: leadership lost).
    async fn lead(&mut self, schedule: &Schedule, stop: &CancellationToken) -> Result<(), Failure> {
        let trigger = self.trigger.clone();
        let mut last =
            self.ticks.last_fired(&trigger).await.map_err(|e| Failure::new(Reason::SourceError, e.to_string()))?;
        info!(trigger, schedule = %self.source.schedule, last_fired = ?last, "Cron schedule loaded.");
        if let Some(tick) = missed_tick(schedule, last, Utc::now(), self.source.starting_deadline) {
            info!(trigger, %tick, "Firing a tick missed while no scheduler ran.");
            self.claim_and_fire(tick).await;
            last = Some(tick);
        }
        loop {
            let now = Utc::now();
            let from = last.map_or(now, |l| l.max(now));
            let Some(next) = schedule.next_after(from) else {
                warn!(trigger, "The schedule has no further ticks.");
                stop.cancelled().await;
                return Ok(());
            };
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return Ok(()),
            }
            // Reap finished calls, so Forbid sees only the ones still running.
            while self.running.try_join_next().is_some() {}
            self.claim_and_fire(next).await;
            last = Some(next);
        }
    }

    /// Records the tick as fired before the call — after a restart or a change of leader it is
    /// never fired again — and fires it unless someone already has.
    ///
    /// A state file that cannot be written (read-only or full state directory) does not stop the
    /// schedule: this process alone owns it and remembers what it fired, so the tick is fired
    /// anyway and the failure shown in `/status` (the file keeps the last tick it could record; a
    /// restart may fire the ticks since then again, within `startingDeadlineSeconds`). A claim on
    /// the API that fails is not fired: another replica may be firing it.
    async fn claim_and_fire(&mut self, tick: DateTime<Utc>) {
        match self.ticks.claim(&self.trigger, tick).await {
            Ok(true) => {
                self.health.note_checkpoint_saved();
                self.fire(tick);
            }
            Ok(false) => {
                info!(trigger = %self.trigger, %tick, "Tick already fired by another replica.");
            }
            Err(e) if e.is_local() => {
                error!(trigger = %self.trigger, %tick, error = %e, "Cannot record the tick; firing it anyway (only this process fires it).");
                self.health.note_checkpoint_failed(e.to_string());
                self.fire(tick);
            }
            Err(e) => {
                error!(trigger = %self.trigger, %tick, error = %e, "Cannot record the tick, so it is not fired (another replica could fire it too).");
                self.health.note_checkpoint_failed(e.to_string());
                self.metrics.skipped.increment(1);
            }
        }
    }

    fn fire(&mut self, tick: DateTime<Utc>) {
        match self.source.concurrency {
            ConcurrencyPolicy::Allow if self.running.len() >= MAX_CONCURRENT_CALLS => {
                warn!(trigger = %self.trigger, %tick, running = self.running.len(), "Tick skipped: too many calls of this trigger still running (Allow is bounded).");
                self.metrics.skipped.increment(1);
                return;
            }
            ConcurrencyPolicy::Forbid if !self.running.is_empty() => {
                warn!(trigger = %self.trigger, %tick, "Tick skipped: the previous call is still running (Forbid).");
                self.metrics.skipped.increment(1);
                return;
            }
            ConcurrencyPolicy::Replace if !self.running.is_empty() => {
                warn!(trigger = %self.trigger, %tick, "Cancelling the running call for the new tick (Replace).");
                self.metrics.replaced.increment(1);
                self.cancel_running.cancel();
                // The replaced call hands its tick back in the background; the new one starts now.
                tokio::spawn(cancelled(std::mem::take(&mut self.running)));
                self.cancel_running = CancellationToken::new();
            }
            _ => {}
        }
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
            charge: Default::default(),
        };
        let (deliverer, cancel) = (self.deliverer.clone(), self.cancel_running.clone());
        self.running.spawn(async move { deliverer.deliver(msg, &cancel).await });
    }
}

/// Waits until `leading` is true. A channel whose sender is gone keeps its last value.
async fn until_leading(leading: &mut watch::Receiver<bool>) {
    while !*leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits until `leading` is false.
async fn until_not_leading(leading: &mut watch::Receiver<bool>) {
    while *leading.borrow_and_update() {
        if leading.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
