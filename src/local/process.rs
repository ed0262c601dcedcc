//! One process of a local function: started through `runtimes/run` on a free loopback port with
//! Kubeless's `FUNC_*` environment and nothing of the daemon's own (its credentials stay its own),
//! its output copied line by line to the daemon's log and to the function's log file, awaited on
//! `/healthz`, and stopped with its whole process group.
//!
//! It dies with the daemon, even a `kill -9`'d one: `setpriv --pdeathsig KILL` (util-linux) asks
//! the kernel to kill it when the thread that started it ends. That thread is a runtime worker,
//! which lives as long as the daemon (never a blocking-pool thread, which may end when idle).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Uri;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::delivery::route::Endpoint;
use crate::delivery::HttpClient;

/// How long a new process has to answer `/healthz`.
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stopped process has to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Output lines kept to explain an early exit.
const TAIL_LINES: usize = 10;
/// A line of output longer than this is cut into several.
const LINE_LIMIT: u64 = 64 << 10;
/// A log file past this size is moved to `<name>.1` (one kept).
const LOG_ROTATE_BYTES: u64 = 16 << 20;
/// Environment variables passed from the daemon to its functions and installs: where things are,
/// and how to reach the package registries. Nothing else of the daemon's environment (its
/// credentials) reaches a function.
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "KUBELESS_DEPS_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_CACHE_DIR",
    "npm_config_registry",
    "npm_config_cache",
];

/// Why a process did not start serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("{0} is not on the daemon's PATH")]
    MissingBinary(&'static str),
    #[error("cannot start {command}: {why}")]
    Spawn { command: String, why: String },
    #[error("exited ({status}) before answering /healthz{}", tail_text(.tail))]
    Exited { status: String, tail: Vec<String> },
    #[error("did not answer /healthz within {0:?}")]
    Unhealthy(Duration),
    #[error("another process took port {0} before it could; trying another")]
    PortTaken(u16),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its last output: {}", tail.join(" | "))
    }
}

/// The daemon's environment that a child may see.
pub fn passed_env() -> impl Iterator<Item = (String, String)> {
    PASSED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
}

/// Whether `binary` is an executable file in a directory of PATH.
pub fn on_path(binary: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(binary)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// A command run in its own process group, killed with the daemon, with only `env` (plus the
/// passed part of the daemon's) as its environment.
pub fn command(program: &Path, args: &[&str], env: impl IntoIterator<Item = (String, String)>, dir: &Path) -> Command {
    let mut cmd = if on_path("setpriv") {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--"]).arg(program);
        c
    } else {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            warn!("setpriv (util-linux) is not on PATH: local functions are stopped with the daemon, but would outlive a kill -9 of it.");
        });
        Command::new(program)
    };
    cmd.args(args)
        .env_clear()
        .envs(passed_env())
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// Kills a process group when dropped: an install that timed out or was cancelled takes the
/// processes it started (pip's, npm's) with it.
pub struct GroupGuard(Option<i32>);

impl GroupGuard {
    pub fn new(pid: Option<u32>) -> Self {
        Self(pid.and_then(|p| i32::try_from(p).ok()))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        }
    }
}

/// What a process needs to start.
pub struct Launch<'a> {
    /// `namespace/name`, for the daemon's log.
    pub function: &'a str,
    pub runtimes: &'a Path,
    pub language: &'a str,
    pub binary: &'static str,
    pub code_dir: &'a Path,
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub log_file: &'a Path,
}

/// A started process of a local function.
pub struct Process {
    child: Child,
    pub pid: Option<u32>,
    pub endpoint: Arc<Endpoint>,
    pub started: tokio::time::Instant,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Process {
    /// Starts the runtime and waits until `/healthz` answers 200.
    pub async fn start(launch: &Launch<'_>, http: &HttpClient) -> Result<Self, StartError> {
        if !on_path(launch.binary) {
            return Err(StartError::MissingBinary(launch.binary));
        }
        let port =
            free_port().map_err(|e| StartError::Spawn { command: "a loopback port".into(), why: e.to_string() })?;
        let run = launch.runtimes.join("run");
        let mut env = launch.env.clone();
        env.insert("FUNC_PORT".into(), port.to_string());
        env.insert("FUNC_ADDR".into(), "127.0.0.1".into());
        env.insert("KUBELESS_DIR".into(), launch.code_dir.display().to_string());
        env.insert("KUBELESS_INSTALL_VOLUME".into(), launch.code_dir.display().to_string());
        env.insert("PYTHONUNBUFFERED".into(), "1".into());
        let mut child = command(&run, &[launch.language], env, launch.code_dir)
            .spawn()
            .map_err(|e| StartError::Spawn { command: run.display().to_string(), why: e.to_string() })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        copy_output(&mut child, launch.function, launch.log_file, &tail);
        let uri: Uri = format!("http://127.0.0.1:{port}/")
            .parse()
            .map_err(|e: http::uri::InvalidUri| StartError::Spawn { command: "a URL".into(), why: e.to_string() })?;
        let mut process = Self {
            pid: child.id(),
            child,
            endpoint: Arc::new(Endpoint { uri }),
            started: tokio::time::Instant::now(),
            tail,
        };
        let deadline = tokio::time::Instant::now() + HEALTH_DEADLINE;
        loop {
            if let Ok(Some(status)) = process.child.try_wait() {
                // Let the output copier catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(StartError::Exited { status: status.to_string(), tail: process.tail() });
            }
            if healthy(http, port).await {
                // Another process could have taken the port between its pick and the runtime's
                // bind, and answered instead: deliveries would then go to it.
                if process.pid.is_some_and(|pid| owns_listener(pid, port) == Some(false)) {
                    process.stop().await;
                    return Err(StartError::PortTaken(port));
                }
                return Ok(process);
            }
            if tokio::time::Instant::now() >= deadline {
                process.stop().await;
                return Err(StartError::Unhealthy(HEALTH_DEADLINE));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of its output.
    pub fn tail(&self) -> Vec<String> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Resolves when the process exits; whatever it left running in its group is killed.
    pub async fn exited(&mut self) -> ExitStatus {
        match self.child.wait().await {
            Ok(status) => {
                if let Some(group) = self.pid.take().and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
                }
                status
            }
            Err(e) => {
                warn!(error = %e, "Cannot wait for a local function's process; taking it as gone.");
                std::future::pending().await
            }
        }
    }

    /// SIGTERM to its process group, SIGKILL after a grace.
    pub async fn stop(mut self) {
        let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) else { return };
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Whatever it forked and left behind in its group.
        let _ = killpg(group, Signal::SIGKILL);
        self.pid = None;
    }
}

/// Whether process `pid` holds the socket listening on IPv4 `port` (none: /proc cannot say).
fn owns_listener(pid: u32, port: u16) -> Option<bool> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let sockets: std::collections::HashSet<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let listening = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok())?;
        // State 0A: LISTEN; the inode is the tenth field.
        (local_port == port && fields.get(3) == Some(&"0A")).then(|| fields.get(9).map(|i| i.to_string()))?
    })?;
    Some(sockets.contains(&listening))
}

/// A free loopback port (the runtime binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

async fn healthy(http: &HttpClient, port: u16) -> bool {
    let Ok(request) = http::Request::get(format!("http://127.0.0.1:{port}/healthz"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
    else {
        return false;
    };
    matches!(http.fetch(request, Duration::from_secs(2), 1024).await, Ok((200, _)))
}

/// Copies stdout and stderr, line by line, to the daemon's log (prefixed with the function) and
/// to the log file `kubeless function logs` reads; keeps the last lines.
fn copy_output(child: &mut Child, function: &str, log_file: &Path, tail: &Arc<Mutex<VecDeque<String>>>) {
    let log = Arc::new(tokio::sync::Mutex::new(LogFile::new(log_file.to_path_buf())));
    let streams: [Option<Box<dyn AsyncRead + Send + Unpin>>; 2] = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
    ];
    for stream in streams.into_iter().flatten() {
        let (log, tail, function) = (log.clone(), tail.clone(), function.to_string());
        tokio::spawn(async move {
            // Bytes, not text: a line that is not UTF-8 is shown as well as it can be, and the
            // pipe is read to its end whatever comes (a reader that stopped would leave the
            // function failing on every write). An endless line is cut at LINE_LIMIT.
            let mut reader = BufReader::new(stream).take(u64::MAX);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                reader.set_limit(LINE_LIMIT);
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                info!(function = %function, "{line}");
                log.lock().await.write(line).await;
                let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }
        });
    }
}

/// A function's log file, appended to and rotated once past `LOG_ROTATE_BYTES`.
struct LogFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    written: u64,
    warned: bool,
}

impl LogFile {
    fn new(path: PathBuf) -> Self {
        Self { path, file: None, written: 0, warned: false }
    }

    async fn write(&mut self, line: &str) {
        if let Err(e) = self.try_write(line).await {
            self.file = None;
            if !self.warned {
                self.warned = true;
                warn!(file = %self.path.display(), error = %e, "Cannot write a local function's log file; its output goes to this log only.");
            }
        }
    }

    async fn try_write(&mut self, line: &str) -> std::io::Result<()> {
        if self.written > LOG_ROTATE_BYTES {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            tokio::fs::rename(&self.path, old).await?;
        }
        if self.file.is_none() {
            let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await?;
            self.written = file.metadata().await?.len();
            self.file = Some(file);
        }
        if let Some(file) = self.file.as_mut() {
            file.write_all(format!("{line}\n").as_bytes()).await?;
            self.written += line.len() as u64 + 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_told_apart_from_another_process_on_its_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(owns_listener(std::process::id(), port), Some(true));
        let mut other = std::process::Command::new("sleep").arg("5").spawn().expect("sleep");
        assert_eq!(owns_listener(other.id(), port), Some(false), "another process does not hold it");
        let _ = other.kill();
        let _ = other.wait();
        drop(listener);
        assert_eq!(owns_listener(std::process::id(), port), None, "nobody listens there any more");
    }
}
