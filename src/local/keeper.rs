//! One local function's keeper: runs the version it is told to, restarts it with backoff when it
//! dies, replaces it when the code changes (new process first, then the switch, then the old one
//! drained and stopped) and stops it when the Function goes or the daemon stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::plan::Plan;
use super::prepare::{prepare, LOG_FILE, URL_FILE};
use super::process::{Launch, Process};
use super::{Desired, LocalReport, Shared};
use crate::control::store::LocalState;
use crate::delivery::route::Route;
use crate::resources::ObjectRef;
use crate::telemetry;

/// The first wait before a restart; doubled up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A process that ran this long resets the backoff.
const STABLE: Duration = Duration::from_secs(60);
/// Past the function's timeout, how long a replaced process is given to finish its requests.
const DRAIN_MARGIN: Duration = Duration::from_secs(5);

/// The version serving now.
struct Serving {
    process: Process,
    checksum: String,
    /// Its `FUNC_TIMEOUT`: the longest a request to it may still take.
    timeout: Duration,
}

pub(super) struct Keeper {
    function: ObjectRef,
    /// `namespace/name`.
    key: String,
    shared: Arc<Shared>,
    route: Arc<Route>,
    dir: PathBuf,
    report: LocalReport,
    /// A process of it answered once: triggers keep delivering (and retrying) across restarts.
    served: bool,
    /// Replaced processes being drained.
    retiring: JoinSet<()>,
}

impl Keeper {
    pub(super) fn new(function: ObjectRef, shared: Arc<Shared>) -> Self {
        let key = format!("{}/{}", function.namespace, function.name);
        let dir = shared.layout.function_dir(&function.namespace, &function.name);
        let route = shared.routes.route(&key);
        let report = LocalReport { log: dir.join(LOG_FILE).display().to_string(), ..LocalReport::default() };
        Self { function, key, shared, route, dir, report, served: false, retiring: JoinSet::new() }
    }

    pub(super) async fn run(mut self, mut desired: watch::Receiver<Desired>, stop: CancellationToken) {
        if let Err(e) = tokio::fs::create_dir_all(&self.dir).await {
            warn!(function = %self.key, dir = %self.dir.display(), error = %e, "Cannot make a local function's directory.");
        }
        // Left by an earlier daemon (killed, or restarted): nothing of this one answers there yet.
        let _ = tokio::fs::remove_file(self.dir.join(URL_FILE)).await;
        let mut serving: Option<Serving> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut attempted: Option<String> = None;
        loop {
            let want = desired.borrow_and_update().clone();
            let plan = match want {
                Err(why) => {
                    if let Some(old) = serving.take() {
                        self.switch(None).await;
                        self.retire(old);
                    }
                    self.served = false;
                    error!(function = %self.key, problem = %why, "Function cannot run locally.");
                    self.publish(LocalState::Unrunnable(why.0.clone()), "Unrunnable", Some(why.0)).await;
                    tokio::select! {
                        changed = desired.changed() => if changed.is_err() { break },
                        () = stop.cancelled() => break,
                    }
                    continue;
                }
                Ok(plan) => plan,
            };
            if let Some(current) = serving.as_mut().filter(|s| s.checksum == plan.checksum) {
                // The wanted version serves: watch it.
                tokio::select! {
                    status = current.process.exited() => {
                        let ran = current.process.started.elapsed();
                        let why = format!("its process exited ({status})");
                        let tail = current.process.tail();
                        serving = None;
                        self.switch(None).await;
                        self.report.restarts += 1;
                        telemetry::local_function_restarted(&self.key);
                        if ran >= STABLE {
                            backoff = FIRST_BACKOFF;
                        }
                        warn!(function = %self.key, problem = %why, last_output = ?tail, restart_in = ?backoff, "Local function stopped; restarting it.");
                        self.publish(LocalState::Serving, "Restarting", Some(why)).await;
                        if !wait(backoff, &mut desired, &stop).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    changed = desired.changed() => if changed.is_err() { break },
                    () = stop.cancelled() => break,
                }
                continue;
            }
            // A version to start: the first, a restart, or new code beside the serving one. A
            // version that failed stays reported as failed while it is tried again.
            if serving.is_none() && !self.served && attempted.as_deref() != Some(plan.checksum.as_str()) {
                self.publish(LocalState::Starting, "Starting", None).await;
            }
            attempted = Some(plan.checksum.clone());
            // The serving version is watched meanwhile: if it dies, the route stops pointing at
            // it at once (and the new version is tried from the start).
            let started = tokio::select! {
                started = self.start(&plan) => started,
                status = exit_of(&mut serving) => {
                    serving = None;
                    self.died(status).await;
                    continue;
                }
                changed = desired.changed() => if changed.is_err() { break } else { continue },
                () = stop.cancelled() => break,
            };
            match started {
                Ok(process) => {
                    info!(function = %self.key, version = &plan.checksum[..16], pid = ?process.pid, url = %process.endpoint.uri, "Local function serving.");
                    self.switch(Some(&process)).await;
                    let fresh = Serving { process, checksum: plan.checksum.clone(), timeout: plan.timeout };
                    if let Some(old) = serving.replace(fresh) {
                        self.retire(old);
                    }
                    self.served = true;
                    self.report.version = Some(plan.checksum[..16].to_string());
                    self.publish(LocalState::Serving, "Serving", None).await;
                }
                Err(why) => {
                    let (state, label) = match (&serving, self.served) {
                        (Some(_), _) => (LocalState::Serving, "Serving"),
                        (None, true) => (LocalState::Serving, "Restarting"),
                        (None, false) => (LocalState::Failed(why.clone()), "Failed"),
                    };
                    let problem = if serving.is_some() {
                        format!("version {} did not replace the serving one: {why}", &plan.checksum[..16])
                    } else {
                        why
                    };
                    error!(function = %self.key, problem = %problem, retry_in = ?backoff, "Local function did not start.");
                    self.publish(state, label, Some(problem)).await;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        status = exit_of(&mut serving) => {
                            serving = None;
                            self.died(status).await;
                        }
                        changed = desired.changed() => if changed.is_err() { break },
                        () = stop.cancelled() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Deleted, or the daemon stops (its consumers have drained first).
        if let Some(old) = serving.take() {
            self.switch(None).await;
            self.retire(old);
        }
        while self.retiring.join_next().await.is_some() {}
        self.shared.report(&self.function, None, None).await;
        info!(function = %self.key, "Local function stopped.");
    }

    /// The serving process exited: nothing serves until another starts.
    async fn died(&mut self, status: std::process::ExitStatus) {
        let why = format!("its process exited ({status})");
        self.switch(None).await;
        self.report.restarts += 1;
        telemetry::local_function_restarted(&self.key);
        warn!(function = %self.key, problem = %why, "Local function stopped; starting it again.");
        self.publish(LocalState::Serving, "Restarting", Some(why)).await;
    }

    /// Prepares the version's directory and starts a process of it.
    async fn start(&self, plan: &Plan) -> Result<Process, String> {
        let runtimes = self.shared.settings.runtimes_dir.as_deref().ok_or("no runtimes directory")?;
        let code_dir = prepare(&self.shared.layout, &self.dir, plan, runtimes, &self.shared.locks)
            .await
            .map_err(|e| e.to_string())?;
        let log_file = self.dir.join(LOG_FILE);
        let launch = Launch {
            function: &self.key,
            runtimes,
            language: plan.language.id(),
            binary: plan.language.binary(),
            code_dir: &code_dir,
            env: &plan.env,
            log_file: &log_file,
        };
        Process::start(&launch, &self.shared.http).await.map_err(|e| e.to_string())
    }

    /// Sends new requests to `process` (none: nowhere) and notes where for `kubeless function call`.
    async fn switch(&mut self, process: Option<&Process>) {
        self.route.switch(process.map(|p| p.endpoint.clone()));
        let url_file = self.dir.join(URL_FILE);
        match process {
            Some(p) => {
                let url = p.endpoint.uri.to_string();
                // Written whole or not at all: `kubeless function call` may read it any time.
                let staged = self.dir.join(format!(".{URL_FILE}.new"));
                let written = match tokio::fs::write(&staged, url.as_bytes()).await {
                    Ok(()) => tokio::fs::rename(&staged, &url_file).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    warn!(file = %url_file.display(), error = %e, "Cannot note where a local function answers.");
                }
                self.report.pid = p.pid;
                self.report.url = Some(url);
            }
            None => {
                let _ = tokio::fs::remove_file(&url_file).await;
                self.report.pid = None;
                self.report.url = None;
            }
        }
    }

    /// Stops a replaced process once the requests sent to it have finished (or its timeout and a
    /// margin have passed).
    fn retire(&mut self, old: Serving) {
        let key = self.key.clone();
        self.retiring.spawn(async move {
            let deadline = tokio::time::Instant::now() + old.timeout + DRAIN_MARGIN;
            // The process holds one reference; every request in flight to it holds another.
            while Arc::strong_count(&old.process.endpoint) > 1 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let pid = old.process.pid;
            old.process.stop().await;
            info!(function = %key, pid = ?pid, "Replaced local function process stopped.");
        });
    }

    async fn publish(&mut self, state: LocalState, label: &str, problem: Option<String>) {
        self.report.state = label.to_string();
        self.report.problem = problem;
        self.shared.report(&self.function, Some(state), Some(self.report.clone())).await;
    }
}

/// Resolves when the serving process exits; never if none serves.
async fn exit_of(serving: &mut Option<Serving>) -> std::process::ExitStatus {
    match serving {
        Some(s) => s.process.exited().await,
        None => std::future::pending().await,
    }
}

/// Waits `delay`; false if the keeper must end instead (its Function gone, or the daemon stopping).
/// A changed Function ends the wait early.
async fn wait(delay: Duration, desired: &mut watch::Receiver<Desired>, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        changed = desired.changed() => changed.is_ok(),
        () = stop.cancelled() => false,
    }
}
