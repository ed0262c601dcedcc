//! A version's directory, as a pod's `/kubeless` would be: the code file, and the dependencies
//! installed by the catalogue's own install command (pip into a prefix, npm into `node_modules`)
//! from the ordinary registries. Dependencies are installed once per dependency file and
//! language, into a directory every version with the same file links to; the install's output is
//! kept beside it (`install.log`) and a failed install is tried again only for a later version or
//! after a backoff.
//!
//! ```text
//! <state-dir>/local/deps/<deps hash>/            install volume: deps file, what the install left, install.log
//! <state-dir>/local/functions/<ns>/<name>/<checksum>/   code file, deps file, links to what the install left
//! <state-dir>/local/functions/<ns>/<name>/output.log   the processes' output (`kubeless function logs`)
//! <state-dir>/local/functions/<ns>/<name>/url          where it answers now (`kubeless function call`)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::plan::{ArchiveKind, Plan};
use super::process::{command, GroupGuard};

/// How long a dependency install may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// The marker of a finished install.
const INSTALLED: &str = ".installed";
/// The install's output, kept for the user.
pub const INSTALL_LOG: &str = "install.log";
/// A function's processes' output, in its directory.
pub const LOG_FILE: &str = "output.log";
/// Where a function answers now, in its directory.
pub const URL_FILE: &str = "url";

/// Why a version's directory could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot write {path}: {why}")]
    Write { path: String, why: String },
    #[error("spec.function: the archive cannot be unpacked: {0}")]
    Unpack(String),
    #[error("spec.function: the archive has no {0} (the module spec.handler names)")]
    NoModule(String),
    #[error("installing the dependencies ({dep_name}) failed ({outcome}); its output is in {log}{}", last_lines(.tail))]
    Install { dep_name: String, outcome: String, log: String, tail: Vec<String> },
}

fn last_lines(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(", ending: {}", tail.join(" | "))
    }
}

/// Where local functions keep their files, under `--state-dir`.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path) -> Self {
        Self { root: state_dir.join("local") }
    }

    /// The directory of one function (`namespace/name`), holding its versions and logs.
    pub fn function_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join("functions").join(namespace).join(name)
    }

    fn deps_dir(&self, hash: &str) -> PathBuf {
        self.root.join("deps").join(hash)
    }
}

/// Installs that run one at a time per dependency hash.
#[derive(Debug, Default, Clone)]
pub struct InstallLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl InstallLocks {
    fn lock_for(&self, hash: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).entry(hash.to_string()).or_default().clone()
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |e| PrepareError::Write { path: path.display().to_string(), why: e.to_string() }
}

/// Makes the version's directory (once) and returns it.
pub async fn prepare(
    layout: &Layout,
    function_dir: &Path,
    plan: &Plan,
    runtimes: &Path,
    locks: &InstallLocks,
) -> Result<PathBuf, PrepareError> {
    let dir = function_dir.join(&plan.checksum[..16]);
    if tokio::fs::try_exists(dir.join(&plan.file_name)).await.unwrap_or(false) {
        return Ok(dir);
    }
    let deps = if plan.deps.trim().is_empty() { None } else { Some(install(layout, plan, runtimes, locks).await?) };
    let staging = function_dir.join(format!(".{}.new", &plan.checksum[..16]));
    let _ = tokio::fs::remove_dir_all(&staging).await;
    tokio::fs::create_dir_all(&staging).await.map_err(write_err(&staging))?;
    match plan.archive {
        None => {
            let code = staging.join(&plan.file_name);
            tokio::fs::write(&code, &plan.code).await.map_err(write_err(&code))?;
        }
        Some(kind) => unpack(kind, &plan.code, &staging, &plan.file_name).await?,
    }
    if let Some(deps) = deps {
        // Beside the code, as in a pod (an empty one would be an invalid package.json to Node).
        let dep_file = staging.join(&plan.dep_name);
        tokio::fs::write(&dep_file, &plan.deps).await.map_err(write_err(&dep_file))?;
        // The runtimes look for what was installed under their code directory (lib/,
        // node_modules/, ruby/ and Gemfile.lock, …): everything the install left, linked.
        let mut entries = tokio::fs::read_dir(&deps).await.map_err(write_err(&deps))?;
        while let Some(entry) = entries.next_entry().await.map_err(write_err(&deps))? {
            let name = entry.file_name();
            if [plan.dep_name.as_str(), INSTALLED, INSTALL_LOG].iter().any(|n| name == *n) {
                continue;
            }
            let link = staging.join(&name);
            tokio::fs::symlink(entry.path(), &link).await.map_err(write_err(&link))?;
        }
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;
    tokio::fs::rename(&staging, &dir).await.map_err(write_err(&dir))?;
    Ok(dir)
}

/// Unpacks the Function's archive into `dir`, which must then hold the handler's module. A zip is
/// read by the `zip` crate, whose paths stay inside `dir`; a compressed tar by GNU tar (gzip,
/// bzip2 or xz, found by their magic), which refuses members reaching out of `dir`.
async fn unpack(kind: ArchiveKind, bytes: &[u8], dir: &Path, module_file: &str) -> Result<(), PrepareError> {
    match kind {
        ArchiveKind::Zip => {
            let (bytes, dir) = (bytes.to_vec(), dir.to_path_buf());
            tokio::task::spawn_blocking(move || {
                zip::ZipArchive::new(std::io::Cursor::new(bytes))
                    .and_then(|mut archive| archive.extract(&dir))
                    .map_err(|e| PrepareError::Unpack(e.to_string()))
            })
            .await
            .map_err(|e| PrepareError::Unpack(e.to_string()))??;
        }
        ArchiveKind::Tar => {
            let file = dir.join(".function.tar");
            tokio::fs::write(&file, bytes).await.map_err(write_err(&file))?;
            let out = tokio::process::Command::new("tar")
                .arg("-xf")
                .arg(&file)
                .arg("-C")
                .arg(dir)
                .args(["--no-same-owner", "--no-same-permissions"])
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| PrepareError::Unpack(format!("cannot run tar: {e}")))?;
            let _ = tokio::fs::remove_file(&file).await;
            if !out.status.success() {
                return Err(PrepareError::Unpack(format!(
                    "tar {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
    }
    if !tokio::fs::try_exists(dir.join(module_file)).await.unwrap_or(false) {
        return Err(PrepareError::NoModule(module_file.to_string()));
    }
    Ok(())
}

/// Installs the plan's dependencies once per hash; returns the install volume.
async fn install(layout: &Layout, plan: &Plan, runtimes: &Path, locks: &InstallLocks) -> Result<PathBuf, PrepareError> {
    let hash = plan.deps_hash();
    let lock = locks.lock_for(&hash);
    let _one_at_a_time = lock.lock().await;
    let volume = layout.deps_dir(&hash);
    if tokio::fs::try_exists(volume.join(INSTALLED)).await.unwrap_or(false) {
        return Ok(volume);
    }
    let _ = tokio::fs::remove_dir_all(&volume).await;
    tokio::fs::create_dir_all(&volume).await.map_err(write_err(&volume))?;
    let dep_file = volume.join(&plan.dep_name);
    tokio::fs::write(&dep_file, &plan.deps).await.map_err(write_err(&dep_file))?;
    let log = volume.join(INSTALL_LOG);
    let env = [
        ("KUBELESS_INSTALL_VOLUME".to_string(), volume.display().to_string()),
        ("KUBELESS_DEPS_FILE".to_string(), dep_file.display().to_string()),
    ];
    let run = runtimes.join("run");
    let failed = |outcome: String, output: &str| PrepareError::Install {
        dep_name: plan.dep_name.clone(),
        outcome,
        log: log.display().to_string(),
        tail: output.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().map(str::to_string).collect(),
    };
    let mut child = command(&run, &[plan.language.id(), "sh", "-c", &plan.install], env, &volume)
        .spawn()
        .map_err(|e| failed(format!("cannot start {}: {e}", run.display()), ""))?;
    let _group = GroupGuard::new(child.id());
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        let status = child.wait().await;
        out.extend_from_slice(&err);
        (status, out)
    };
    let (status, output) = match tokio::time::timeout(INSTALL_TIMEOUT, work).await {
        Ok((status, output)) => (status.map_err(|e| e.to_string()), output),
        Err(_) => (Err(format!("still running after {INSTALL_TIMEOUT:?}, stopped")), Vec::new()),
    };
    let output = String::from_utf8_lossy(&output).into_owned();
    tokio::fs::write(&log, &output).await.map_err(write_err(&log))?;
    match status {
        Ok(s) if s.success() => {
            let marker = volume.join(INSTALLED);
            tokio::fs::write(&marker, b"").await.map_err(write_err(&marker))?;
            Ok(volume)
        }
        Ok(s) => Err(failed(s.to_string(), &output)),
        Err(why) => Err(failed(why, &output)),
    }
}
