//! Standalone mode's source: re-reads the manifest directory when a file is added, changed or
//! removed, and replaces the store's contents with what it holds.
//!
//! It compares file names, sizes and modification times every `interval` and reads the files only
//! when those change. Polling a small directory is cheap, needs no inotify limits, and sees
//! Kubernetes ConfigMap volume updates (a symlink swap) like any other edit.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::manifests::{keep_last_good, manifest_files, parse_files, ManifestSet};
use super::store::{Change, Origin, Scope, Stored};
use super::{lock_report, SharedReport, SourceEvent};

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

/// Watches `dir` until `shutdown`, sending what it holds to `out`.
pub async fn run(
    dir: PathBuf,
    interval: Duration,
    out: mpsc::Sender<SourceEvent>,
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
                    let set = keep_last_good(parse_files(&files), last_set.as_ref());
                    if last_set.as_ref() != Some(&set) {
                        if publish(&set, &out, &report).await.is_err() {
                            return;
                        }
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
                let mut r = lock_report(&report);
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

async fn publish(
    set: &ManifestSet,
    out: &mpsc::Sender<SourceEvent>,
    report: &SharedReport,
) -> Result<(), mpsc::error::SendError<SourceEvent>> {
    for e in &set.errors {
        error!(error = %e, "Manifest rejected.");
    }
    info!(resources = set.resources.len(), errors = set.errors.len(), "Manifests loaded.");
    crate::telemetry::set_manifest_errors(set.errors.len());
    let objects = set
        .resources
        .iter()
        .map(|l| {
            let origin = Origin::File { file: l.file.clone(), doc: l.doc };
            (l.object.clone(), Stored { origin, resource: Ok(l.resource.clone()) })
        })
        .collect();
    out.send(SourceEvent::Change(Change::Reset(Scope::ALL, objects))).await?;
    out.send(SourceEvent::Loaded).await?;
    let mut r = lock_report(report);
    r.loaded = true;
    r.manifest_errors = set.errors.iter().map(ToString::to_string).collect();
    Ok(())
}
