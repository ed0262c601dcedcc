//! The daemon fixture: the kubeless-broker binary run as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kafka::SESSION_TIMEOUT_MS;
use super::server::free_port;

/// What a test acting as the cluster's admin allows in Kubernetes mode: functions, the Kinesis
/// emulator (with the test's own AWS keys) and second-granularity cron schedules on loopback, and
/// any Ingress annotation but snippets.
pub const ADMIN_LOOPBACK_POLICY: [(&str, &str); 5] = [
    ("KUBELESS_FUNCTION_URL_ALLOW", "*"),
    ("KUBELESS_KINESIS_ENDPOINT_ALLOW", "*"),
    ("KUBELESS_KINESIS_AMBIENT_IDENTITY", "true"),
    ("KUBELESS_MIN_CRON_INTERVAL", "1s"),
    ("KUBELESS_INGRESS_ANNOTATION_ALLOW", "*"),
];

/// The daemon, run from its binary.
pub struct Daemon {
    child: Option<Child>,
    pub admin: String,
    /// `--status-addr`, where `/status` is served (loopback, no token).
    pub status_url: String,
    /// `--gateway-addr` (standalone mode), where HTTPTriggers are served.
    pub gateway_url: String,
    pub log: PathBuf,
    /// `--manifests DIR`, or `--kubeconfig FILE` (Kubernetes mode).
    source: Vec<String>,
    brokers: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// Kept across restarts, like a real state volume.
    state: tempfile::TempDir,
}

impl Daemon {
    pub async fn start(dir: &Path, brokers: &str, extra: &[&str]) -> Self {
        Self::start_with_env(dir, brokers, extra, &[]).await
    }

    /// Like `start`, with these environment variables set for the daemon.
    pub async fn start_with_env(dir: &Path, brokers: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let source = vec!["--manifests".to_string(), dir.display().to_string()];
        Self::start_from(source, brokers, extra, env)
    }

    /// The daemon in Kubernetes mode, reading resources from the API server `kubeconfig` points at.
    /// The test is the cluster's admin and its functions, Kinesis emulator and cron schedules are on
    /// loopback and fast: it lets triggers reach them (`env` may say otherwise).
    pub fn start_kube(kubeconfig: &Path, brokers: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let source = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
        let mut all: Vec<(&str, &str)> = ADMIN_LOOPBACK_POLICY.to_vec();
        all.extend(env);
        Self::start_from(source, brokers, extra, &all)
    }

    /// The daemon in Kubernetes mode under the shared-cluster defaults alone.
    pub fn start_kube_with_defaults(kubeconfig: &Path, brokers: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let source = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
        Self::start_from(source, brokers, extra, env)
    }

    fn start_from(source: Vec<String>, brokers: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut d = Self {
            child: None,
            admin: String::new(),
            status_url: String::new(),
            gateway_url: String::new(),
            log: PathBuf::new(),
            source,
            brokers: brokers.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            state: tempfile::tempdir().expect("state dir"),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let port = free_port();
        self.admin = format!("http://127.0.0.1:{port}");
        let status_port = free_port();
        self.status_url = format!("http://127.0.0.1:{status_port}");
        self.log = std::env::temp_dir().join(format!("kubeless-broker-{port}.log"));
        let log = std::fs::File::create(&self.log).expect("log");
        // Standalone mode serves HTTPTriggers on a port of its own.
        let gateway: Vec<String> = if self.source.first().is_some_and(|s| s == "--manifests") {
            let gateway_port = free_port();
            self.gateway_url = format!("http://127.0.0.1:{gateway_port}");
            vec!["--gateway-addr".to_string(), format!("127.0.0.1:{gateway_port}")]
        } else {
            Vec::new()
        };
        let child = Command::new(env!("CARGO_BIN_EXE_kubeless-broker"))
            .args(&self.source)
            .args(&gateway)
            .args(["--admin-addr", &format!("127.0.0.1:{port}")])
            .args(["--status-addr", &format!("127.0.0.1:{status_port}")])
            .args(["--kafka-brokers", &self.brokers])
            .args(["--kafka-property", &format!("session.timeout.ms={SESSION_TIMEOUT_MS}")])
            .args(["--scan-interval", "100ms"])
            .arg("--state-dir")
            .arg(self.state.path())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            // The daemon embeds the AWS SDK: it must never look for an instance identity off this
            // machine, whatever a test's triggers ask for.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .expect("start kubeless-broker");
        self.child = Some(child);
    }

    /// The daemon's `--state-dir`.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon before restarting it");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `path` on the admin address, or `/status` on the status address.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let base = if path == "/status" { &self.status_url } else { &self.admin };
        let resp = reqwest::get(format!("{base}{path}")).await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// Waits until `/readyz` answers 200 and every consumer in `/status` is ready (has its
    /// partitions). `/readyz` alone is the daemon's own readiness, whatever its triggers do.
    pub async fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = self.get("/readyz").await {
                let status = self.status().await;
                let consumers = status["consumers"].as_array().cloned().unwrap_or_default();
                if !status.is_null() && consumers.iter().all(|c| c["ready"] == true) {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon not ready after 60 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/status` as JSON (`null` while the admin server is not up yet).
    pub async fn status(&self) -> serde_json::Value {
        match self.get("/status").await {
            Some((_, body)) => serde_json::from_str(&body).expect("status JSON"),
            None => serde_json::Value::Null,
        }
    }

    /// The `/status` state of the consumer delivering to `function` ("" while there is none).
    pub async fn consumer_state(&self, function: &str) -> String {
        let status = self.status().await;
        status["consumers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .find(|c| c["function"] == function)
            .and_then(|c| c["state"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Polls `/status` until `done` holds for the states of `functions` (in that order); panics
    /// with those states after 30 s.
    pub async fn wait_states(&self, functions: &[&str], done: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        loop {
            let mut states = Vec::with_capacity(functions.len());
            for f in functions {
                states.push(self.consumer_state(f).await);
            }
            if done(&states) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "consumer states of {functions:?}: {states:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.map(|(_, b)| b).unwrap_or_default()
    }

    /// The value of a metric line starting with `prefix` (summed over label sets).
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Resident memory of the daemon in MiB, from /proc.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = child.wait().expect("wait");
        assert!(status.success(), "daemon exited with {status} after SIGTERM; log:\n{}", self.log_text());
    }

    /// Sends SIGTERM and waits up to `grace` (a pod's termination grace period) for a clean exit;
    /// past it the daemon is killed, as the kubelet would, and this returns false.
    pub fn terminate_within(&mut self, grace: Duration) -> bool {
        let mut child = self.child.take().expect("running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
