//! Child processes for a run: the servers (tansu, nats-server, moto_server), the sink and the daemon,
//! each logging to a file in the run's work directory and killed when dropped; plus what the run
//! reads about the daemon from /proc (peak RSS, CPU time).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A free port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    /// Spawns `command` with its output in `<logs>/<name>.log`.
    pub fn spawn(name: &str, command: &mut Command, logs: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = command
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} (run scripts/install-deps)"))?;
        Ok(Self { name: name.to_string(), child })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); see its log", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts TCP connections.
pub async fn wait_listening(proc: &mut Proc, addr: &str, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        proc.check_alive()?;
        if start.elapsed() > limit {
            bail!("{} did not listen on {addr} within {limit:?}", proc.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Spawns `command` as `spawn` does and waits until it accepts connections on `addr`.
pub async fn spawn_listening(
    name: &str,
    command: &mut Command,
    logs: &Path,
    addr: &str,
    limit: Duration,
) -> anyhow::Result<Proc> {
    let mut proc = Proc::spawn(name, command, logs)?;
    wait_listening(&mut proc, addr, limit).await?;
    Ok(proc)
}

/// The path of a sibling binary of this one (same target directory).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} not found; build it (loadtests/run does: cargo build --release)", path.display());
    }
    Ok(path)
}

/// CPU seconds (user + system) the process has used.
pub fn cpu_seconds(pid: i32) -> anyhow::Result<f64> {
    let stat = procfs::process::Process::new(pid)?.stat()?;
    Ok((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

/// Peak resident set size (VmHWM) in MiB.
pub fn peak_rss_mib(pid: i32) -> anyhow::Result<f64> {
    let status = procfs::process::Process::new(pid)?.status()?;
    Ok(status.vmhwm.unwrap_or(0) as f64 / 1024.0)
}

/// Current resident set size (VmRSS) in MiB.
pub fn rss_mib(pid: i32) -> anyhow::Result<f64> {
    let status = procfs::process::Process::new(pid)?.status()?;
    Ok(status.vmrss.unwrap_or(0) as f64 / 1024.0)
}

/// CPU use of a process over a window of wall time, in percent of one core.
pub struct CpuWindow {
    pid: i32,
    cpu: f64,
    start: Instant,
}

impl CpuWindow {
    pub fn open(pid: i32) -> anyhow::Result<Self> {
        Ok(Self { pid, cpu: cpu_seconds(pid)?, start: Instant::now() })
    }

    /// (CPU percent, wall seconds) since `open`.
    pub fn close(&self) -> anyhow::Result<(f64, f64)> {
        let wall = self.start.elapsed().as_secs_f64();
        Ok((100.0 * (cpu_seconds(self.pid)? - self.cpu) / wall.max(1e-9), wall))
    }
}
