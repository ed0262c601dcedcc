//! The supervisor: diffs the desired consumers against the running ones and starts, stops or
//! restarts only what changed. One code path for boot and for every later change, whichever
//! source (directory or API server) published the desired state.
//!
//! Stops never hold up the next change: a stopping consumer drains and commits in the background
//! while other consumers start. Only a consumer with the same key (the same group, checkpoint or
//! schedule) waits for its predecessor to finish stopping before it starts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::FutureExt;
use kubeless_connector::{Health, MemoryBudget, SourceState};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::spec::{ConsumerSpec, SourceSpec};
use super::Snapshot;
use crate::resources::{Kind, ObjectRef};

/// Runs one consumer until `stop` is cancelled, reporting on `health`: the daemon's is
/// `dispatch::consumer::supervise` (source, dispatcher and deliverer, restarted with backoff);
/// the supervisor's tests run their own. The future ends once the consumer has drained, committed
/// and left its group.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, spec: ConsumerSpec, health: Health, stop: CancellationToken) -> BoxFuture<'static, ()>;
}

/// Extra time, beyond the drain timeout, a stopping consumer gets before its task is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Resolves when a stopping consumer has finished (drained, committed, left its group).
type Stopped = Shared<BoxFuture<'static, ()>>;

/// A consumer that is running.
struct Running {
    spec: ConsumerSpec,
    health: Health,
    /// Cancelled to stop: the source stops taking messages, drains, commits and leaves its group.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What `/readyz`, `/status` and the status writer show of one consumer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConsumerStatus {
    pub kind: Kind,
    pub trigger: String,
    pub function: String,
    pub group: String,
    pub topics: Vec<String>,
    /// The function's URL, credentials redacted.
    pub url: String,
    /// `Starting`, `Ready` or `Failed: <detail>` in `/status`.
    #[serde(serialize_with = "state_text")]
    pub state: SourceState,
    /// Why it failed, in a word (`BrokerUnreachable`, `TopicNotFound`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub ready: bool,
    pub lag: i64,
    /// Why the position could not be saved to the state directory (the last good one stays), until
    /// a save succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_error: Option<String>,
}

/// How a consumer's state reads in `/status` and a trigger's status.
pub fn state_text_of(state: &SourceState) -> String {
    match state {
        SourceState::Starting => "Starting".to_string(),
        SourceState::Ready => "Ready".to_string(),
        SourceState::Failed(failure) => format!("Failed: {failure}"),
    }
}

fn state_text<S: serde::Serializer>(state: &SourceState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&state_text_of(state))
}

impl ConsumerStatus {
    pub fn trigger_ref(&self) -> ObjectRef {
        let (ns, name) = self.trigger.split_once('/').unwrap_or(("", &self.trigger));
        ObjectRef::new(self.kind, ns, name)
    }
}

#[derive(Default)]
struct Consumers {
    running: BTreeMap<String, Running>,
    /// Consumers still draining after a stop, by key.
    stopping: BTreeMap<String, Stopped>,
}

/// Owns every running consumer.
pub struct Supervisor {
    runner: Arc<dyn Runner>,
    /// Shared equally between the running consumers that hold messages.
    budget: MemoryBudget,
    consumers: Mutex<Consumers>,
}

impl Supervisor {
    pub fn new(runner: Arc<dyn Runner>, budget: MemoryBudget) -> Arc<Self> {
        Arc::new(Self { runner, budget, consumers: Mutex::new(Consumers::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Consumers> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every desired state published on `desired` until `stop`. Snapshots published while
    /// one is being applied coalesce: only the newest is applied next.
    pub async fn run(self: Arc<Self>, mut desired: watch::Receiver<Arc<Snapshot>>, stop: CancellationToken) {
        loop {
            let snapshot = desired.borrow_and_update().clone();
            self.apply(&snapshot.desired.consumers);
            tokio::select! {
                changed = desired.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
        }
    }

    /// Makes the running set equal to `desired`: stops what is gone or changed (in the background,
    /// each draining and committing) and starts what is new or changed. A consumer replacing one
    /// with the same key starts once that one has stopped.
    pub fn apply(&self, desired: &BTreeMap<String, ConsumerSpec>) {
        // Cron consumers hold no messages; the others share the memory budget.
        let sources = desired.values().filter(|c| !matches!(c.source, SourceSpec::Cron(_))).count();
        self.budget.expect(sources);
        let mut guard = self.lock();
        let Consumers { running, stopping } = &mut *guard;
        stopping.retain(|_, done| done.peek().is_none());
        let stale: Vec<String> =
            running.iter().filter(|(key, r)| desired.get(*key) != Some(&r.spec)).map(|(key, _)| key.clone()).collect();
        for key in stale {
            let Some(r) = running.remove(&key) else { continue };
            info!(trigger = %r.spec.trigger, function = %r.spec.function, source = %r.spec.source.id(), "Stopping consumer.");
            let done = tokio::spawn(stop(r)).map(|_| ()).boxed().shared();
            // A shared future completes only when polled: drive it, so `stopping` can be pruned
            // and reported without a successor waiting on it.
            tokio::spawn(done.clone());
            stopping.insert(key, done);
        }
        for (key, spec) in desired {
            if !running.contains_key(key) {
                info!(trigger = %spec.trigger, function = %spec.function, source = %spec.source.id(), topics = ?spec.source.topics(), url = %kubeless_connector::redact_url(&spec.url), "Starting consumer.");
                let predecessor = stopping.get(key).cloned();
                running.insert(key.clone(), start(spec.clone(), self.runner.clone(), predecessor));
            }
        }
        crate::telemetry::set_consumers(running.len());
    }

    /// Stops every consumer, each draining and committing, in parallel, and waits for the ones
    /// already stopping.
    pub async fn shutdown(&self) {
        let (all, stopping) = {
            let mut c = self.lock();
            (std::mem::take(&mut c.running), std::mem::take(&mut c.stopping))
        };
        let stops = all.into_values().map(|r| stop(r).boxed());
        let pending = stopping.into_values().map(FutureExt::boxed);
        futures::future::join_all(stops.chain(pending)).await;
    }

    /// How many consumers run.
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// Keys of consumers stopped but still draining and committing.
    pub fn stopping(&self) -> Vec<String> {
        self.lock().stopping.iter().filter(|(_, done)| done.peek().is_none()).map(|(k, _)| k.clone()).collect()
    }

    pub fn status(&self) -> Vec<ConsumerStatus> {
        self.lock()
            .running
            .values()
            .map(|r| {
                let state = r.health.state();
                ConsumerStatus {
                    kind: r.spec.kind,
                    trigger: r.spec.trigger.clone(),
                    function: r.spec.function.clone(),
                    group: r.spec.source.id().to_string(),
                    topics: r.spec.source.topics(),
                    url: kubeless_connector::redact_url(&r.spec.url),
                    ready: state == SourceState::Ready,
                    reason: match &state {
                        SourceState::Failed(failure) => Some(failure.reason.as_str()),
                        _ => None,
                    },
                    state,
                    lag: r.health.lag(),
                    checkpoint_error: r.health.checkpoint_error(),
                }
            })
            .collect()
    }
}

async fn stop(r: Running) {
    r.stop.cancel();
    let grace = r.spec.source.drain_timeout() + STOP_GRACE;
    let mut task = r.task;
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        warn!(trigger = %r.spec.trigger, function = %r.spec.function, "Consumer did not stop in time; abandoning it.");
        task.abort();
    }
}

fn start(spec: ConsumerSpec, runner: Arc<dyn Runner>, predecessor: Option<Stopped>) -> Running {
    let health = Health::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (spec, health, stop) = (spec.clone(), health.clone(), stop.clone());
        async move {
            if let Some(done) = predecessor {
                done.await;
            }
            if !stop.is_cancelled() {
                runner.run(spec, health, stop).await;
            }
        }
    });
    Running { spec, health, stop, task }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
