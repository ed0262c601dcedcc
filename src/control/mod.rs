//! The control plane: resources in, running consumers out. It never touches a broker or a
//! function itself.
//!
//! ```text
//! manifest dir ─┐                             ┌─► supervisor (coalesces, starts/stops concurrently)
//!               ├─► Change ─► store ─► index ─► watch<Snapshot>
//! API watchers ─┘                             └─► /status, status writer (Kubernetes mode)
//! ```

pub mod index;
pub mod manifests;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch as channel};
use tracing::{error, info, warn};

use self::index::{desired, Desired, IndexSettings};
use self::store::{Change, Store};

/// The desired state at one moment, and the store it was computed from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub store: Store,
    pub desired: Desired,
    /// False until the source has read everything once.
    pub loaded: bool,
}

/// What the source (directory or API watchers) reports of itself, for `/readyz` and `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SourceReport {
    /// False until everything was read once.
    pub loaded: bool,
    /// Documents of the manifest directory that could not be used (standalone mode).
    pub manifest_errors: Vec<String>,
    /// Watches that are failing (Kubernetes mode), by what they watch; they retry with backoff.
    pub api_errors: BTreeMap<String, String>,
    /// Which of `api_errors` are failed connections (cleared once the API server answers again).
    #[serde(skip)]
    pub connection_errors: BTreeSet<String>,
}

pub type SharedReport = Arc<Mutex<SourceReport>>;

pub fn lock_report(report: &SharedReport) -> std::sync::MutexGuard<'_, SourceReport> {
    report.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a source sends: changes to the store, and when its first full read is done.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    Change(Change),
    /// Every object was read once: the desired state is complete.
    Loaded,
}

/// Applies the sources' changes to the store and publishes a new snapshot after each burst of
/// changes (everything already queued is applied first, so a relist of a thousand objects is one
/// snapshot). Runs until every sender is dropped.
pub async fn run_index(
    mut events: mpsc::Receiver<SourceEvent>,
    settings: IndexSettings,
    out: channel::Sender<Arc<Snapshot>>,
) {
    let mut store = Store::default();
    let mut loaded = false;
    let mut previous = Desired::default();
    while let Some(first) = events.recv().await {
        let mut changed = false;
        let mut event = Some(first);
        while let Some(e) = event.take() {
            match e {
                SourceEvent::Change(c) => changed |= store.change(c),
                SourceEvent::Loaded if !loaded => {
                    loaded = true;
                    changed = true;
                }
                SourceEvent::Loaded => {}
            }
            event = events.try_recv().ok();
        }
        if !changed {
            continue;
        }
        let d = desired(&store, &settings);
        log_news(&previous, &d);
        info!(
            resources = store.len(),
            invalid = store.invalid().count(),
            consumers = d.consumers.len(),
            "Desired state updated."
        );
        previous = d.clone();
        out.send_replace(Arc::new(Snapshot { store: store.clone(), desired: d, loaded }));
    }
}

/// Logs the problems that were not there before (each once, not on every change).
fn log_news(before: &Desired, now: &Desired) {
    let old: BTreeSet<_> = before.problems.iter().collect();
    for p in now.problems.iter().filter(|p| !old.contains(p)) {
        if p.reason.is_idle() {
            warn!(trigger = %p.trigger, problem = %p.problem, "Trigger selects no function; it will start when one matches.");
        } else {
            error!(trigger = %p.trigger, reason = p.reason.as_str(), problem = %p.problem, "Trigger cannot run.");
        }
    }
    let old: BTreeSet<_> = before.unserved.iter().collect();
    for u in now.unserved.iter().filter(|u| !old.contains(u)) {
        info!(resource = %u, "Valid; no consumer runs for this kind (an HTTPTrigger becomes an Ingress, made by the reconciler in Kubernetes mode).");
    }
}
