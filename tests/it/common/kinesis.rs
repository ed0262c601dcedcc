//! The Kinesis fixture: moto_server or kinesalite on loopback.

use std::path::Path;
use std::process::Command;

use super::server::{free_port, Server};

/// A Kinesis emulator on loopback, killed on drop: moto_server, or kinesalite where a test needs
/// resharding as AWS does it (moto keeps routing records to split parents).
pub struct Kinesis {
    server: Server,
    pub endpoint: String,
    _store: Option<tempfile::TempDir>,
}

impl Kinesis {
    pub async fn moto() -> Self {
        let port = free_port();
        let command = ["moto_server", "-H", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec();
        Self::spawn("moto_server", command, port, None).await
    }

    pub async fn kinesalite() -> Self {
        Self::kinesalite_with(None).await
    }

    /// kinesalite keeping its streams on disk, so that it can be killed and restarted.
    pub async fn kinesalite_durable() -> Self {
        Self::kinesalite_with(Some(tempfile::tempdir().expect("store"))).await
    }

    async fn kinesalite_with(store: Option<tempfile::TempDir>) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(root.join("scripts/kinesalite-path")).output().expect("run scripts/kinesalite-path");
        assert!(out.status.success(), "kinesalite is not installed (run scripts/install-deps)");
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = free_port();
        // Stream state changes take 50 ms instead of kinesalite's default 500 ms.
        let mut command = [&bin, "--port", &port.to_string(), "--createStreamMs", "50", "--updateStreamMs", "50"]
            .map(String::from)
            .to_vec();
        if let Some(dir) = &store {
            command.extend(["--path".to_string(), dir.path().display().to_string()]);
        }
        Self::spawn("kinesalite", command, port, store).await
    }

    async fn spawn(name: &str, command: Vec<String>, port: u16, store: Option<tempfile::TempDir>) -> Self {
        let server = Server::start(name, command, Vec::new(), port).await;
        Self { server, endpoint: format!("http://127.0.0.1:{port}"), _store: store }
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) {
        self.server.restart().await;
    }

    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        kubeless_kinesis::emulator_client(&self.endpoint).await
    }
}
