//! The generic server process fixture: a command run on a loopback port, killed on drop.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command};
use std::time::Duration;

use super::wait_for;

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A server process listening on a loopback port, killed on drop; a test may kill it and start it
/// again with the same command (its storage, if any, outlives it). Its output goes to
/// `$TMPDIR/<name>-<port>.log`, appended across restarts.
pub struct Server {
    name: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    pub async fn start(name: &str, command: Vec<String>, env: Vec<(String, String)>, port: u16) -> Self {
        let mut server = Self { name: name.to_string(), command, env, port, child: None };
        server.restart().await;
        server
    }

    /// Kills the server (SIGKILL: no clean shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_path(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-{}.log", self.name, self.port))
    }

    /// What the server printed (stdout and stderr), across restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the server again and waits until it listens.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill {} before restarting it", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {} (run scripts/install-deps): {e}", self.name));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_for(&format!("{} to listen", self.name), Duration::from_secs(60), || {
            std::net::TcpStream::connect(&addr).is_ok()
        })
        .await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
