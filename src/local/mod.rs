//! Local functions (standalone mode): a Function with no `kubeless.io/url` and a runtime this
//! project ships is run by the daemon itself, as a child process, so a Kubeless function runs on a
//! laptop exactly as it would in a pod.
//!
//! ```text
//! snapshot ─► runner ─► one keeper per Function ─► prepare (code, deps) ─► process ─► /healthz
//!                            │                                                    │
//!                            ├─► store (LocalState: Starting, Serving, Failed…) ─► index ─► consumers
//!                            └─► route (where it answers now) ◄──── each delivery attempt
//! ```
//!
//! A keeper restarts its process with backoff when it dies, and replaces it when the code changes
//! without losing a message: the new process starts beside the old one, the route switches once it
//! answers `/healthz`, and the old one stops when the last request sent to it has finished. The
//! consumers never restart for either.

pub mod gateway;
mod keeper;
pub mod plan;
pub mod prepare;
pub mod process;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::control::store::{Change, LocalState};
use crate::control::{Snapshot, SourceEvent};
use crate::delivery::route::Routes;
use crate::delivery::HttpClient;
use crate::resources::validate::is_dns1123_label;
use crate::resources::{Function, Kind, ObjectRef, Resource};

use self::plan::{plan, Plan, Unrunnable};
use self::prepare::{InstallLocks, Layout};

/// What a keeper is told: the function's plan, or why it cannot run.
type Desired = Result<Plan, Unrunnable>;

/// Where the runtimes are and where files go.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub state_dir: PathBuf,
    /// `runtimes/` (with its `run` script); none found: every local function says so.
    pub runtimes_dir: Option<PathBuf>,
}

/// What `/status` shows of one local function.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalReport {
    /// `Starting`, `Serving`, `Restarting`, `Failed` or `Unrunnable`.
    pub state: String,
    /// The first 16 hex digits of the serving version's checksum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub restarts: u64,
    /// Why it is not serving, or why the latest version did not replace the serving one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The processes' output.
    pub log: String,
}

/// Every local function's report, by `namespace/name`.
pub type LocalReports = Arc<Mutex<BTreeMap<String, LocalReport>>>;

/// What keepers share.
struct Shared {
    settings: LocalSettings,
    layout: Layout,
    http: HttpClient,
    routes: Routes,
    locks: InstallLocks,
    events: mpsc::Sender<SourceEvent>,
    reports: LocalReports,
}

impl Shared {
    /// Tells the index (only the part it acts on) and `/status` (everything).
    async fn report(&self, function: &ObjectRef, state: Option<LocalState>, report: Option<LocalReport>) {
        let key = format!("{}/{}", function.namespace, function.name);
        {
            let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            match report {
                Some(r) => reports.insert(key, r),
                None => reports.remove(&key),
            };
        }
        let _ = self.events.send(SourceEvent::Change(Change::Local(function.clone(), state))).await;
    }
}

/// Runs the local functions of every snapshot until `stop`, then stops them all.
pub async fn run(
    settings: LocalSettings,
    http: HttpClient,
    routes: Routes,
    reports: LocalReports,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    events: mpsc::Sender<SourceEvent>,
    stop: CancellationToken,
) {
    let layout = Layout::new(&settings.state_dir);
    let shared = Arc::new(Shared { settings, layout, http, routes, locks: InstallLocks::default(), events, reports });
    let mut keepers: HashMap<ObjectRef, (watch::Sender<Desired>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let keeper_stop = CancellationToken::new();
    // Keepers of Functions that went, stopping their processes (a drain may take a while). A
    // Function that comes back gets its new keeper only once the old one is done, so the old
    // one's last words (route emptied, state withdrawn) never land on the new one's.
    let mut stopping: HashMap<ObjectRef, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let wanted = local_functions(&snapshot, shared.settings.runtimes_dir.is_some());
        stopping.retain(|_, task| !task.is_finished());
        // Gone (deleted, or given a URL): dropping the sender stops the keeper.
        let gone: Vec<ObjectRef> = keepers.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for function in gone {
            if let Some((tx, task)) = keepers.remove(&function) {
                drop(tx);
                stopping.insert(function, task);
            }
        }
        for (function, desired) in wanted {
            match keepers.get(&function) {
                Some((tx, _)) => {
                    tx.send_if_modified(|old| {
                        let changed = *old != desired;
                        *old = desired;
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(desired);
                    let keeper = keeper::Keeper::new(function.clone(), shared.clone());
                    let previous = stopping.remove(&function);
                    let stop = keeper_stop.clone();
                    let task = tokio::spawn(async move {
                        if let Some(previous) = previous {
                            let _ = previous.await;
                        }
                        keeper.run(rx, stop).await;
                    });
                    keepers.insert(function, (tx, task));
                }
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = stop.cancelled() => break,
        }
    }
    keeper_stop.cancel();
    for (_, (_, task)) in keepers {
        let _ = task.await;
    }
    for (_, task) in stopping {
        let _ = task.await;
    }
}

/// The Functions the daemon runs itself, with their plans: every valid Function without a
/// `kubeless.io/url`.
fn local_functions(snapshot: &Snapshot, runtimes_found: bool) -> BTreeMap<ObjectRef, Desired> {
    snapshot
        .store
        .resources()
        .filter_map(|(object, resource)| match resource {
            Resource::Function(f) if object.kind == Kind::Function => Some((object, f)),
            _ => None,
        })
        .filter(|(_, f)| f.url().is_none())
        .map(|(object, f)| (object.clone(), desired(object, f, runtimes_found)))
        .collect()
}

fn desired(object: &ObjectRef, function: &Function, runtimes_found: bool) -> Desired {
    // The names become directories: nothing but DNS labels.
    for (field, value) in [("metadata.namespace", &object.namespace), ("metadata.name", &object.name)] {
        if !is_dns1123_label(value) {
            return Err(Unrunnable(format!("{field} {value:?} is not a DNS label")));
        }
    }
    if !runtimes_found {
        return Err(Unrunnable(
            "the daemon found no runtimes directory (runtimes/ with its run script); pass --runtimes-dir".to_string(),
        ));
    }
    plan(function)
}
