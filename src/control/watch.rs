//! Standalone mode's watch: re-reads the manifest directory when a file is added, changed or
//! removed, and hands the new desired state to the supervisor.
//!
//! It compares file names, sizes and modification times every `interval` and reads the files only
//! when those change. Polling a small directory is cheap, needs no inotify limits, and sees
//! Kubernetes ConfigMap volume updates (a symlink swap) like any other edit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::index::{desired, IndexSettings, TriggerProblem};
use super::manifests::{manifest_files, parse_files, ManifestSet};
use super::supervisor::Supervisor;

/// What the last load of the directory found, for `/readyz` and `/status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// False until the directory was read once.
    pub loaded: bool,
    pub resources: usize,
    pub manifest_errors: Vec<String>,
    pub trigger_problems: Vec<String>,
    pub idle_triggers: Vec<String>,
    pub unserved: Vec<String>,
}

pub type SharedReport = Arc<Mutex<Report>>;

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> std::io::Result<Fingerprint> {
    Ok(manifest_files(dir)?
        .into_iter()
        .map(|p| {
            // Follow symlinks: a ConfigMap volume's files are links to a directory that is swapped.
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
            let modified = meta.and_then(|m| m.modified().ok());
            (p, len, modified)
        })
        .collect())
}

fn read_all(dir: &Path) -> std::io::Result<(Fingerprint, Vec<(PathBuf, String)>)> {
    let fp = fingerprint(dir)?;
    let mut files = Vec::with_capacity(fp.len());
    for (path, ..) in &fp {
        match std::fs::read(path) {
            Ok(bytes) => files.push((path.clone(), String::from_utf8_lossy(&bytes).into_owned())),
            // Removed between listing and reading: the next scan sees it gone.
            Err(e) => warn!(file = %path.display(), error = %e, "Cannot read manifest file."),
        }
    }
    Ok((fp, files))
}

/// Watches `dir` until `shutdown`.
pub async fn run(
    dir: PathBuf,
    interval: Duration,
    settings: IndexSettings,
    supervisor: Arc<Supervisor>,
    report: SharedReport,
    shutdown: CancellationToken,
) {
    let mut last: Option<Fingerprint> = None;
    let mut last_set: Option<ManifestSet> = None;
    let mut dir_error_logged = false;
    while !shutdown.is_cancelled() {
        let scan_dir = dir.clone();
        let current = tokio::task::spawn_blocking(move || fingerprint(&scan_dir)).await;
        match current {
            Ok(Ok(fp)) if last.as_ref() == Some(&fp) => {}
            Ok(Ok(_)) => {
                let read_dir = dir.clone();
                if let Ok(Ok((fp, files))) = tokio::task::spawn_blocking(move || read_all(&read_dir)).await {
                    let set = parse_files(&files);
                    if last_set.as_ref() != Some(&set) {
                        apply(&set, &settings, &supervisor, &report).await;
                        last_set = Some(set);
                    }
                    last = Some(fp);
                    dir_error_logged = false;
                }
            }
            Ok(Err(e)) => {
                if !dir_error_logged {
                    error!(dir = %dir.display(), error = %e, "Cannot read the manifest directory; retrying.");
                    dir_error_logged = true;
                }
                let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                r.manifest_errors = vec![format!("{}: cannot read the directory: {e}", dir.display())];
            }
            Err(e) => error!(error = %e, "Manifest scan task failed."),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

async fn apply(set: &ManifestSet, settings: &IndexSettings, supervisor: &Supervisor, report: &SharedReport) {
    for e in &set.errors {
        error!(error = %e, "Manifest rejected.");
    }
    let d = desired(&set.resources, settings);
    let problem = |p: &TriggerProblem| format!("{}: {}", p.trigger, p.problem);
    for p in &d.problems {
        error!(trigger = %p.trigger, problem = %p.problem, "Trigger cannot run.");
    }
    for t in &d.idle_triggers {
        warn!(trigger = %t, "Trigger selects no function; it will start when one matches.");
    }
    for u in &d.unserved {
        warn!(resource = %u, "Valid, but this build does not run this kind yet.");
    }
    info!(
        resources = set.resources.len(),
        errors = set.errors.len(),
        consumers = d.consumers.len(),
        "Manifests loaded."
    );
    metrics::gauge!(crate::telemetry::MANIFEST_ERRORS).set(set.errors.len() as f64);
    supervisor.apply(&d.consumers).await;
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
    *r = Report {
        loaded: true,
        resources: set.resources.len(),
        manifest_errors: set.errors.iter().map(ToString::to_string).collect(),
        trigger_problems: d.problems.iter().map(problem).collect(),
        idle_triggers: d.idle_triggers,
        unserved: d.unserved,
    };
}
