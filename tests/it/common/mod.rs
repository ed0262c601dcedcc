//! Test harness: a real tansu broker on loopback, HTTP functions with scripted behaviour, and the
//! daemon binary run as a child process (so it can be killed with -9 or SIGTERM).

pub mod fake_kafka;
pub mod kubeapi;
pub mod proxy;

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use futures::StreamExt;

/// Session timeout that makes tansu groups join in ~3 s.
pub const SESSION_TIMEOUT_MS: &str = "6000";

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Polls `f` every 100 ms until it returns true or `limit` passes; panics with `what` on timeout.
/// (A bound on how long to wait for an outcome, not a timing assertion.)
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for`] with a condition that must ask a server.
pub async fn wait_for_async<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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

    /// Starts the server again and waits until it listens.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill {} before restarting it", self.name);
        let path = std::env::temp_dir().join(format!("{}-{}.log", self.name, self.port));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("log file");
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

/// A tansu broker, killed on drop: in memory, or on S3 (a moto_server of its own) so that it can
/// be killed and restarted without losing its log.
pub struct Kafka {
    server: Server,
    pub brokers: String,
    _storage: Option<Server>,
}

impl Kafka {
    pub async fn start() -> Self {
        Self::start_on("memory://tansu/", Vec::new(), None).await
    }

    /// A broker whose topics, offsets and groups survive [`Kafka::kill`] and [`Kafka::restart`].
    pub async fn start_durable() -> Self {
        let port = free_port();
        let moto = ["moto_server", "-H", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec();
        let moto = Server::start("moto-s3", moto, Vec::new(), port).await;
        let bucket = reqwest::Client::new().put(format!("http://127.0.0.1:{port}/tansu")).send().await.expect("bucket");
        assert!(bucket.status().is_success(), "create the S3 bucket: {}", bucket.status());
        let env = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT", &format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        Self::start_on("s3://tansu/", env, Some(moto)).await
    }

    async fn start_on(storage: &str, env: Vec<(String, String)>, backing: Option<Server>) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let port = free_port();
        let tansu = root.join("scripts/tansu").display().to_string();
        let server = Server::start("tansu", vec![tansu, port.to_string(), storage.to_string()], env, port).await;
        Self { server, brokers: format!("127.0.0.1:{port}"), _storage: backing }
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) {
        self.server.restart().await;
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        kubeless_kafka::create_topic(&self.brokers, &BTreeMap::new(), topic, partitions, 1)
            .await
            .expect("create topic");
    }

    pub fn publisher(&self) -> kubeless_kafka::Publisher {
        kubeless_kafka::Publisher::new(&self.brokers, &BTreeMap::new()).expect("publisher")
    }

    /// Publishes `(key, payload)` pairs, many in flight at once, in order per key.
    pub async fn publish_all(&self, topic: &str, records: Vec<(Option<String>, Vec<u8>)>) {
        let publisher = self.publisher();
        // Records of one key go to one partition; librdkafka keeps their order within it.
        futures::stream::iter(records)
            .map(|(key, payload)| {
                let publisher = &publisher;
                async move {
                    publisher.publish(topic, key.as_deref().map(str::as_bytes), &payload, &[]).await.expect("publish")
                }
            })
            .buffered(2000)
            .collect::<Vec<_>>()
            .await;
    }

    /// Committed offsets of `group` for partitions `0..partitions` of `topic` (None: nothing committed).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// Every record of `topic` partition `partition`, with headers.
    pub fn read_all(&self, topic: &str, partition: i32, expect: usize) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning).expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < expect && start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        out
    }
}

/// One request a function received.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub body: String,
    pub headers: HashMap<String, String>,
}

/// How a function answers.
#[derive(Clone)]
pub enum Behaviour {
    Ok,
    /// Answers 200 after this long.
    Slow(Duration),
    /// Answers each status in turn for every new body, then 200.
    FailFirst(Vec<u16>),
    /// Always answers this status.
    Status(u16),
    /// Answers 503 to this body until [`Function::heal`], 200 to every other.
    Poison(String),
}

/// An HTTP function on loopback that records what it receives.
pub struct Function {
    pub url: String,
    state: Arc<FnState>,
}

struct FnState {
    behaviour: Behaviour,
    received: Mutex<Vec<Received>>,
    /// Requests answered 2xx.
    delivered: AtomicUsize,
    /// Requests being handled (a handler dropped mid-way counts down too).
    in_flight: AtomicUsize,
    /// Requests seen per body, for FailFirst.
    attempts: Mutex<HashMap<String, usize>>,
    healed: std::sync::atomic::AtomicBool,
}

/// Counts a request as in flight until its handler ends or is dropped.
struct InFlight(Arc<FnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(s): State<Arc<FnState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(s.clone());
    let body = String::from_utf8_lossy(&body).into_owned();
    let status = match &s.behaviour {
        Behaviour::Ok => 200,
        Behaviour::Slow(d) => {
            tokio::time::sleep(*d).await;
            200
        }
        Behaviour::Status(code) => *code,
        Behaviour::Poison(poison) if *poison == body && !s.healed.load(Ordering::SeqCst) => 503,
        Behaviour::Poison(_) => 200,
        Behaviour::FailFirst(script) => {
            let mut attempts = s.attempts.lock().expect("lock");
            let n = attempts.entry(body.clone()).or_default();
            *n += 1;
            script.get(*n - 1).copied().unwrap_or(200)
        }
    };
    let headers: HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let key = headers.get("event-key").cloned().unwrap_or_default();
    s.received.lock().expect("lock").push(Received { key, body, headers });
    if (200..300).contains(&status) {
        s.delivered.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

impl Function {
    pub async fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(FnState {
            behaviour,
            received: Mutex::new(Vec::new()),
            delivered: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            attempts: Mutex::new(HashMap::new()),
            healed: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // No request size limit: tests send bodies of many MiB.
        let app =
            Router::new().fallback(handle).with_state(state.clone()).layer(axum::extract::DefaultBodyLimit::disable());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// Everything received, in arrival order (failed attempts included).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    /// How many times each body arrived.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for r in self.state.received.lock().expect("lock").iter() {
            *c.entry(r.body.clone()).or_default() += 1;
        }
        c
    }

    /// Requests that arrived and are not yet answered (or abandoned).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// A [`Behaviour::Poison`] function accepts its poison from now on.
    pub fn heal(&self) {
        self.state.healed.store(true, Ordering::SeqCst);
    }

    pub fn delivered(&self) -> usize {
        self.state.delivered.load(Ordering::SeqCst)
    }
}

/// A Function manifest pointing at a local URL.
pub fn function_yaml(name: &str, labels: &str, url: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {labels}\n  annotations: {{kubeless.io/url: \"{url}\"}}\nspec: {{runtime: python3.7, handler: h.f, timeout: \"30\"}}\n"
    )
}

/// A CronJobTrigger on `schedule` (seconds field first) calling `function`; `extra` is added to its spec.
pub fn cron_yaml(name: &str, function: &str, schedule: &str, extra: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  function-name: {function}\n  schedule: '{schedule}'\n{extra}"
    )
}

/// A KafkaTrigger manifest; `extra` is added to its spec (YAML lines indented by two spaces).
pub fn trigger_yaml(name: &str, topic: &str, selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  topic: {topic}\n  functionSelector:\n    matchLabels: {selector}\n{extra}"
    )
}

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
        let child = Command::new(env!("CARGO_BIN_EXE_kubeless-broker"))
            .args(&self.source)
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

/// A nats-server with JetStream (file store in a temp dir), killed on drop.
pub struct Nats {
    server: Server,
    _store: tempfile::TempDir,
    pub url: String,
    auth: kubeless_nats::NatsAuth,
    /// CA the test's own client trusts, for a TLS server.
    client_ca: Option<String>,
}

impl Nats {
    pub async fn start() -> Self {
        Self::start_with(&[], kubeless_nats::NatsAuth::None).await
    }

    /// A server started with extra flags (e.g. `--user u --pass p`); `auth` is what the test's
    /// own client uses.
    pub async fn start_with(flags: &[&str], auth: kubeless_nats::NatsAuth) -> Self {
        let port = free_port();
        let store = tempfile::tempdir().expect("store");
        let bin = if Path::new("/usr/sbin/nats-server").exists() { "/usr/sbin/nats-server" } else { "nats-server" };
        let mut command = [bin, "-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"].map(String::from).to_vec();
        command.push(store.path().display().to_string());
        command.extend(flags.iter().map(|f| f.to_string()));
        let server = Server::start("nats", command, Vec::new(), port).await;
        Self { server, _store: store, url: format!("nats://127.0.0.1:{port}"), auth, client_ca: None }
    }

    /// Kills the server; JetStream's store stays on disk for [`Nats::restart`].
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) {
        self.server.restart().await;
    }

    pub async fn client(&self) -> async_nats::Client {
        kubeless_broker::app::install_crypto_provider();
        kubeless_nats::connect(&self.url, &self.auth, self.client_ca.is_some(), self.client_ca.as_deref())
            .await
            .expect("connect")
    }

    /// Publishes `bodies` to `subject`; through JetStream (each confirmed) when `jetstream`.
    pub async fn publish_all(&self, subject: &str, bodies: impl IntoIterator<Item = String>, jetstream: bool) {
        let client = self.client().await;
        if jetstream {
            let js = async_nats::jetstream::new(client.clone());
            let acks: Vec<_> = futures::future::join_all(bodies.into_iter().map(|b| {
                let js = js.clone();
                async move { js.publish(subject.to_string(), b.into()).await.expect("publish") }
            }))
            .await;
            for ack in acks {
                ack.await.expect("stored");
            }
        } else {
            for b in bodies {
                client.publish(subject.to_string(), b.into()).await.expect("publish");
            }
            client.flush().await.expect("flush");
        }
    }
}

impl Nats {
    /// Makes the test's own client use TLS, trusting `ca_pem`.
    pub fn with_client_tls(mut self, ca_pem: String) -> Self {
        self.client_ca = Some(ca_pem);
        self
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it, made with openssl:
/// returns (dir holding ca.crt, server.crt, server.key; the CA in PEM).
pub fn make_test_certificates() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("cert dir");
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl (run scripts/install-deps)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=kubeless-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.path().join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("ca.crt");
    (dir, ca)
}

/// Terminates TLS on a new loopback port with `cert`/`key` (PEM files) and passes each connection
/// through to `plain` (`http://host:port`); returns the `https://` URL.
pub async fn tls_front(plain: &str, cert: &Path, key: &Path) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("read cert").collect::<Result<_, _>>().expect("parse cert");
    let key = PrivateKeyDer::from_pem_file(key).expect("read key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let backend = plain.trim_start_matches("http://").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                // A client that rejects our certificate ends the handshake; nothing to pass on then.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&backend).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    url
}

/// A NATSTrigger manifest; `extra` is added to its spec.
pub fn nats_trigger_yaml(name: &str, subject: &str, selector: &str, extra: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  topic: '{subject}'\n  functionSelector:\n    matchLabels: {selector}\n{extra}"
    )
}

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

/// A KinesisTrigger reading `stream` on an emulator with the Secret `aws` (keys `testing`).
pub fn kinesis_yaml(name: &str, function: &str, stream: &str, endpoint: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: aws-{name}, namespace: default}}\nstringData: {{aws_access_key_id: testing, aws_secret_access_key: testing}}\n---\napiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  function-name: {function}\n  aws-region: us-east-1\n  stream: {stream}\n  secret: aws-{name}\n  endpoint: {endpoint}\n{extra}"
    )
}
