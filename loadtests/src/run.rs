//! The scenario runner behind `loadtests/run`: starts tansu, nats-server, moto_server and the sink,
//! measures the HTTP ceiling, then runs each scenario against a fresh daemon in standalone mode and
//! collects msgs/s, latency percentiles, the daemon's peak RSS and CPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::procs::{self, CpuWindow, Proc};
use crate::produce::{self, Load, Target};
use crate::sink::Stats;

/// How big the run is. `quick` shrinks every count for a smoke run of the harness itself.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub flat_out: u64,
    pub partition_ordering: u64,
    pub nats: u64,
    pub kinesis: u64,
    pub backlog: u64,
    pub fan_out: u64,
    pub rate_seconds: u64,
    pub slow_seconds: u64,
    pub idle_triggers: usize,
    /// Triggers whose status is written in the Kubernetes-mode scenario.
    pub status_triggers: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            flat_out: 200_000,
            partition_ordering: 50_000,
            nats: 100_000,
            kinesis: 20_000,
            backlog: 1_000_000,
            fan_out: 20_000,
            rate_seconds: 20,
            slow_seconds: 30,
            idle_triggers: 100,
            status_triggers: 1000,
        }
    }

    pub fn quick() -> Self {
        Self {
            flat_out: 5_000,
            partition_ordering: 2_000,
            nats: 2_000,
            kinesis: 1_000,
            backlog: 20_000,
            fan_out: 1_000,
            rate_seconds: 3,
            slow_seconds: 5,
            idle_triggers: 10,
            status_triggers: 20,
        }
    }
}

const SIZE: usize = 1024;
const KEYS: u64 = 1000;
const PARTITIONS: i32 = 8;
const KINESIS_SHARDS: i32 = 4;
const MAX_IN_FLIGHT: usize = 64;
const SESSION_TIMEOUT_MS: u32 = 6000;
/// tansu answers a fetch that found nothing only when `fetch.wait.max.ms` runs out, where Kafka's
/// brokers answer as soon as data arrives (measured at 1,000 msg/s: p50 135 ms with librdkafka's
/// 500 ms default, 6.7 ms with 20 ms, 2.3 ms with 5 ms). Scenarios that carry Kafka traffic shorten
/// the wait so they measure the daemon rather than tansu's polling; the idle scenario keeps the
/// defaults. Not 1 ms: at 13,500 msg/s live the resulting fetch storm stalled tansu (70k of 270k
/// delivered in 2 minutes).
const TANSU_FETCH_WAIT: &str = "fetch.wait.max.ms=5";

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// `backlog`: the messages were in the broker before the daemon started and msgs/s is the drain
    /// rate (latency then includes the wait in the backlog); `rate`: produced live at a set rate;
    /// `idle`: no traffic.
    pub mode: &'static str,
    pub messages: u64,
    pub msgs_per_sec: f64,
    pub ceiling_msgs_per_sec: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    pub concurrency: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub peak_rss_mib: f64,
    /// The daemon's CPU over the measured window, in percent of one core.
    pub cpu_percent: f64,
    /// The broker's (tansu, nats-server or moto_server) and the sink's CPU over the same window:
    /// on a shared machine what they use is not available to the daemon.
    pub broker_cpu_percent: Option<f64>,
    pub sink_cpu_percent: Option<f64>,
    /// The daemon's CPU per delivered message, and the ceiling's load generator's per request: the
    /// machine-independent measure of what the dispatcher costs over a bare HTTP client.
    pub daemon_cpu_us_per_msg: Option<f64>,
    pub ceiling_client_cpu_us_per_req: Option<f64>,
    pub target: String,
    pub note: String,
}

impl Scenario {
    /// A scenario without traffic: the daemon measured at rest (or under control-plane work).
    pub fn without_traffic(name: &str, description: String, peak_rss_mib: f64, cpu_percent: f64) -> Self {
        Self {
            name: name.to_string(),
            description,
            mode: "idle",
            messages: 0,
            msgs_per_sec: 0.0,
            ceiling_msgs_per_sec: None,
            ratio_to_ceiling: None,
            concurrency: 0,
            p50_ms: None,
            p99_ms: None,
            p999_ms: None,
            peak_rss_mib,
            cpu_percent,
            broker_cpu_percent: None,
            sink_cpu_percent: None,
            daemon_cpu_us_per_msg: None,
            ceiling_client_cpu_us_per_req: None,
            target: String::new(),
            note: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub scenario: String,
    pub concurrency: usize,
    pub latency_ms: u64,
    pub msgs_per_sec: f64,
    pub client_cpu_us_per_req: f64,
}

/// What a scenario is, for its row in the report.
struct Spec<'a> {
    name: &'a str,
    description: String,
    mode: &'static str,
    target: &'a str,
}

/// CPU of the daemon, the broker and the sink over one window.
struct CpuWindows {
    daemon: CpuWindow,
    broker: CpuWindow,
    sink: CpuWindow,
}

#[derive(Debug, Clone, Copy)]
struct Cpus {
    daemon: f64,
    broker: f64,
    sink: f64,
}

impl CpuWindows {
    fn close(&self) -> anyhow::Result<Cpus> {
        Ok(Cpus { daemon: self.daemon.close()?.0, broker: self.broker.close()?.0, sink: self.sink.close()?.0 })
    }
}

pub struct Env {
    work: tempfile::TempDir,
    _servers: Vec<Proc>,
    brokers: String,
    nats_url: String,
    moto: String,
    sink_url: String,
    http: reqwest::Client,
    ceilings: Vec<Ceiling>,
    daemon_args: Vec<String>,
    tansu_pid: i32,
    nats_pid: i32,
    moto_pid: i32,
    sink_pid: i32,
}

impl Env {
    pub async fn start(root: &Path, daemon_args: Vec<String>) -> anyhow::Result<Self> {
        let work = tempfile::Builder::new().prefix("kubeless-loadtest-").tempdir()?;
        let logs = work.path().to_path_buf();

        let secs = Duration::from_secs;
        let port = procs::free_port()?;
        let brokers = format!("127.0.0.1:{port}");
        let tansu = procs::spawn_listening(
            "tansu",
            Command::new(root.join("scripts/tansu")).arg(port.to_string()),
            &logs,
            &brokers,
            secs(30),
        )
        .await?;

        let port = procs::free_port()?;
        let bin = if Path::new("/usr/sbin/nats-server").exists() { "/usr/sbin/nats-server" } else { "nats-server" };
        let store = logs.join("jetstream");
        let nats_addr = format!("127.0.0.1:{port}");
        let nats = procs::spawn_listening(
            "nats-server",
            Command::new(bin).args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(&store),
            &logs,
            &nats_addr,
            secs(30),
        )
        .await?;

        let port = procs::free_port()?;
        let moto_addr = format!("127.0.0.1:{port}");
        let moto = procs::spawn_listening(
            "moto_server",
            Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            &logs,
            &moto_addr,
            secs(60),
        )
        .await?;

        let port = procs::free_port()?;
        let sink_addr = format!("127.0.0.1:{port}");
        let exe = std::env::current_exe()?;
        let sink = procs::spawn_listening(
            "sink",
            Command::new(exe).args(["sink", "--addr", &sink_addr]),
            &logs,
            &sink_addr,
            secs(30),
        )
        .await?;

        let (tansu_pid, nats_pid, moto_pid, sink_pid) = (tansu.pid(), nats.pid(), moto.pid(), sink.pid());
        let servers = vec![tansu, nats, moto, sink];
        Ok(Self {
            work,
            _servers: servers,
            brokers,
            nats_url: format!("nats://{nats_addr}"),
            moto: format!("http://{moto_addr}"),
            sink_url: format!("http://{sink_addr}"),
            http: reqwest::Client::new(),
            ceilings: Vec::new(),
            daemon_args,
            tansu_pid,
            nats_pid,
            moto_pid,
            sink_pid,
        })
    }

    pub fn logs(&self) -> &Path {
        self.work.path()
    }

    pub fn ceilings(&self) -> &[Ceiling] {
        &self.ceilings
    }

    /// Opens CPU windows on the daemon, the broker the scenario reads from (by its name's prefix)
    /// and the sink.
    fn cpu_windows(&self, scenario: &str, daemon: &Daemon) -> anyhow::Result<CpuWindows> {
        let broker = match scenario.split('-').next() {
            Some("nats") => self.nats_pid,
            Some("kinesis") => self.moto_pid,
            _ => self.tansu_pid,
        };
        Ok(CpuWindows {
            daemon: CpuWindow::open(daemon.proc.pid())?,
            broker: CpuWindow::open(broker)?,
            sink: CpuWindow::open(self.sink_pid)?,
        })
    }

    async fn reset_sink(&self, latency_ms: u64) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_reset?latency_ms={latency_ms}&error_rate=0", self.sink_url))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn stats(&self) -> anyhow::Result<Stats> {
        Ok(self.http.get(format!("{}/_stats", self.sink_url)).send().await?.error_for_status()?.json().await?)
    }

    /// The ceiling at this concurrency and function latency, measured just before the scenario it
    /// is compared with (the rate of this shared machine drifts by ±20% over minutes).
    pub async fn ceiling(&mut self, scenario: &str, concurrency: usize, latency_ms: u64) -> anyhow::Result<Ceiling> {
        self.reset_sink(latency_ms).await?;
        let measured = crate::ceiling::measure(
            &format!("{}/ceiling", self.sink_url),
            concurrency,
            SIZE,
            Duration::from_secs(5),
            crate::ceiling::ClientKind::Hyper,
        )
        .await?;
        eprintln!(
            "{scenario}: ceiling {:.0} req/s at {concurrency} in flight, {latency_ms} ms function, {:.1} µs client CPU per request",
            measured.rate, measured.client_cpu_us
        );
        let ceiling = Ceiling {
            scenario: scenario.to_string(),
            concurrency,
            latency_ms,
            msgs_per_sec: measured.rate,
            client_cpu_us_per_req: measured.client_cpu_us,
        };
        self.ceilings.push(ceiling.clone());
        Ok(ceiling)
    }

    fn function_yaml(&self, name: &str, label: &str) -> String {
        format!(
            "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{bench: {label}}}\n  annotations: {{kubeless.io/url: \"{}/{name}\"}}\nspec: {{runtime: python3.7, handler: h.f, timeout: \"30\"}}\n",
            self.sink_url
        )
    }

    /// Starts the daemon on `manifests` and waits for /readyz.
    async fn daemon(&self, scenario: &str, manifests: &[String]) -> anyhow::Result<Daemon> {
        self.daemon_with(scenario, manifests, &[]).await
    }

    /// As `daemon`, with `extra` arguments after the run's own.
    async fn daemon_with(&self, scenario: &str, manifests: &[String], extra: &[&str]) -> anyhow::Result<Daemon> {
        let fetch_wait = if scenario.starts_with("kafka-") && !scenario.contains("idle") {
            vec!["--kafka-property", TANSU_FETCH_WAIT]
        } else {
            vec![]
        };
        let dir = self.work.path().join(scenario);
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        let manifest_dir = dir.join("manifests");
        std::fs::create_dir_all(&manifest_dir)?;
        std::fs::write(manifest_dir.join("bench.yaml"), manifests.join("---\n"))?;
        let admin = format!("127.0.0.1:{}", procs::free_port()?);
        let status = format!("127.0.0.1:{}", procs::free_port()?);
        let bin = procs::sibling_binary("kubeless-broker")?;
        let mut proc = Proc::spawn(
            &format!("daemon-{scenario}"),
            Command::new(bin)
                .arg("--manifests")
                .arg(&manifest_dir)
                .arg("--state-dir")
                .arg(&state)
                .args(["--admin-addr", &admin])
                .args(["--status-addr", &status])
                .args(["--kafka-brokers", &self.brokers])
                .args(["--nats-url", &self.nats_url])
                .args(["--kafka-property", &format!("session.timeout.ms={SESSION_TIMEOUT_MS}")])
                .args(&fetch_wait)
                .args(&self.daemon_args)
                .args(extra)
                .env("RUST_LOG", "warn")
                .env("AWS_EC2_METADATA_DISABLED", "true"),
            self.work.path(),
        )?;
        let start = Instant::now();
        loop {
            proc.check_alive()?;
            // The daemon is ready, and every consumer has its partitions (`/readyz` is the
            // daemon's own readiness; each consumer's is in `/status`).
            let ready = self.http.get(format!("http://{admin}/readyz")).send().await;
            if matches!(&ready, Ok(r) if r.status().is_success()) {
                let status = self.http.get(format!("http://{status}/status")).send().await;
                let body: serde_json::Value = match status {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                };
                let consumers = body["consumers"].as_array().cloned().unwrap_or_default();
                if !body.is_null() && consumers.iter().all(|c| c["ready"] == true) {
                    break;
                }
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("the daemon for {scenario} was not ready within 120 s; see {}", self.work.path().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Daemon { proc })
    }

    /// Waits until the sink has `expected` deliveries; measures CPU from the first delivery to the
    /// last (None if nothing was delivered).
    async fn drain(
        &self,
        scenario: &str,
        daemon: &mut Daemon,
        expected: u64,
        limit: Duration,
    ) -> anyhow::Result<(Stats, Option<Cpus>)> {
        let start = Instant::now();
        let mut window = None;
        loop {
            daemon.proc.check_alive()?;
            let stats = self.stats().await?;
            if window.is_none() && stats.received > 0 {
                window = Some(self.cpu_windows(scenario, daemon)?);
            }
            if stats.received >= expected {
                let cpus = window.as_ref().map(CpuWindows::close).transpose()?;
                return Ok((stats, cpus));
            }
            if start.elapsed() > limit {
                bail!("only {} of {expected} delivered within {limit:?}", stats.received);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        kubeless_kafka::create_topic(&self.brokers, &BTreeMap::new(), topic, partitions, 1).await?;
        Ok(())
    }

    fn kafka_trigger(&self, name: &str, topic: &str, label: &str, ordering: &str) -> String {
        format!(
            "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  topic: {topic}\n  functionSelector:\n    matchLabels: {{bench: {label}}}\n  delivery:\n    ordering: {ordering}\n    maxInFlight: {MAX_IN_FLIGHT}\n"
        )
    }

    /// A backlog scenario: `count` messages produced flat out before the daemon starts, then drained
    /// by `functions` functions.
    async fn backlog(
        &mut self,
        spec: &Spec<'_>,
        target: Target,
        count: u64,
        manifests: Vec<String>,
        functions: u64,
    ) -> anyhow::Result<Scenario> {
        let name = spec.name;
        let sent = produce::produce(&target, Load { count, rate: None, size: SIZE, keys: KEYS }).await?;
        eprintln!("{name}: {count} messages in the backlog ({sent:.0}/s produced)");
        let concurrency = MAX_IN_FLIGHT * functions as usize;
        let ceiling = self.ceiling(name, concurrency, 0).await?;
        self.reset_sink(0).await?;
        let mut daemon = self.daemon(name, &manifests).await?;
        let (stats, cpus) = self.drain(name, &mut daemon, count * functions, Duration::from_secs(600)).await?;
        scenario(spec, count * functions, &stats, &ceiling, concurrency, &daemon, cpus)
    }
}

struct Daemon {
    proc: Proc,
}

fn scenario(
    spec: &Spec<'_>,
    messages: u64,
    stats: &Stats,
    ceiling: &Ceiling,
    concurrency: usize,
    daemon: &Daemon,
    cpus: Option<Cpus>,
) -> anyhow::Result<Scenario> {
    let rate = stats.rate();
    let daemon_cpu = cpus.map_or(0.0, |c| c.daemon);
    let s = Scenario {
        name: spec.name.to_string(),
        description: spec.description.clone(),
        mode: spec.mode,
        messages,
        msgs_per_sec: rate,
        ceiling_msgs_per_sec: Some(ceiling.msgs_per_sec),
        ratio_to_ceiling: (ceiling.msgs_per_sec > 0.0).then(|| rate / ceiling.msgs_per_sec),
        concurrency,
        p50_ms: Some(stats.p50_us as f64 / 1000.0),
        p99_ms: Some(stats.p99_us as f64 / 1000.0),
        p999_ms: Some(stats.p999_us as f64 / 1000.0),
        peak_rss_mib: procs::peak_rss_mib(daemon.proc.pid())?,
        cpu_percent: daemon_cpu,
        broker_cpu_percent: cpus.map(|c| c.broker),
        sink_cpu_percent: cpus.map(|c| c.sink),
        daemon_cpu_us_per_msg: (rate > 0.0).then(|| daemon_cpu / 100.0 * 1e6 / rate),
        ceiling_client_cpu_us_per_req: Some(ceiling.client_cpu_us_per_req),
        target: spec.target.to_string(),
        note: String::new(),
    };
    eprintln!(
        "{}: {:.0} msg/s ({:.2} of ceiling {:.0}), p50 {:.2} ms p99 {:.2} ms p999 {:.2} ms, peak RSS {:.1} MiB, CPU daemon {:.0}% broker {:.0}% sink {:.0}%, {:.1} µs/msg (client {:.1} µs/req)",
        s.name,
        s.msgs_per_sec,
        s.ratio_to_ceiling.unwrap_or(0.0),
        ceiling.msgs_per_sec,
        s.p50_ms.unwrap_or(0.0),
        s.p99_ms.unwrap_or(0.0),
        s.p999_ms.unwrap_or(0.0),
        s.peak_rss_mib,
        s.cpu_percent,
        s.broker_cpu_percent.unwrap_or(0.0),
        s.sink_cpu_percent.unwrap_or(0.0),
        s.daemon_cpu_us_per_msg.unwrap_or(0.0),
        ceiling.client_cpu_us_per_req,
    );
    Ok(s)
}

/// Runs every scenario in order; a failing scenario is reported and the others still run.
pub async fn run_all(
    env: &mut Env,
    sizes: Sizes,
    only: Option<&str>,
    half_rate: Option<f64>,
) -> Vec<Result<Scenario, (String, String)>> {
    let mut out = Vec::new();
    let names = [
        "kafka-key-flat-out",
        "kafka-key-half-rate",
        "kafka-key-1k-rate",
        "kafka-partition-flat-out",
        "nats-jetstream-flat-out",
        "kinesis-flat-out",
        "kafka-slow-function-1m-backlog",
        "kafka-100-idle-triggers",
        "kafka-100-idle-triggers-no-lag",
        "kafka-fan-out-10-functions",
        "kube-1000-triggers-status-writes",
    ];
    let mut flat_rate = half_rate.map(|r| r * 2.0);
    for name in names {
        if only.is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let result = match name {
            "kafka-key-flat-out" => kafka_flat(env, name, "key", sizes.flat_out).await,
            "kafka-key-half-rate" => match flat_rate {
                Some(flat) => {
                    kafka_rate(
                        env,
                        name,
                        (flat / 2.0).max(1.0),
                        sizes.rate_seconds,
                        "50% of the flat-out rate",
                        "p99 added latency < 5 ms",
                    )
                    .await
                }
                None => Err(anyhow::anyhow!("needs kafka-key-flat-out's rate; run it first or give --half-rate")),
            },
            "kafka-key-1k-rate" => {
                kafka_rate(env, name, 1000.0, sizes.rate_seconds, "light load", "p99 added latency < 5 ms").await
            }
            "kafka-partition-flat-out" => kafka_flat(env, name, "partition", sizes.partition_ordering).await,
            "nats-jetstream-flat-out" => nats_flat(env, name, sizes.nats).await,
            "kinesis-flat-out" => kinesis_flat(env, name, sizes.kinesis).await,
            "kafka-slow-function-1m-backlog" => slow_backlog(env, name, sizes).await,
            "kafka-100-idle-triggers" => idle(env, name, sizes.idle_triggers, &[]).await,
            "kafka-100-idle-triggers-no-lag" => idle(env, name, sizes.idle_triggers, NO_LAG).await,
            "kube-1000-triggers-status-writes" => match root_dir() {
                Ok(root) => {
                    let args = env.daemon_args.clone();
                    let (work, nats, sink) = (env.work.path(), &env.nats_url, &env.sink_url);
                    crate::kube::status_writes(&root, work, name, sizes.status_triggers, nats, sink, &args).await
                }
                Err(e) => Err(e),
            },
            _ => fan_out(env, name, sizes.fan_out).await,
        };
        match result {
            Ok(s) => {
                if name == "kafka-key-flat-out" && half_rate.is_none() {
                    flat_rate = Some(s.msgs_per_sec);
                }
                out.push(Ok(s));
            }
            Err(e) => {
                eprintln!("{name}: FAILED: {e:#}");
                out.push(Err((name.to_string(), format!("{e:#}"))));
            }
        }
    }
    out
}

async fn kafka_flat(env: &mut Env, name: &str, ordering: &str, count: u64) -> anyhow::Result<Scenario> {
    let topic = name.to_string();
    env.create_topic(&topic, PARTITIONS).await?;
    let manifests = vec![env.function_yaml("f", name), env.kafka_trigger(name, &topic, name, ordering)];
    let description = format!(
        "Kafka → HTTP, {SIZE} B messages, {PARTITIONS} partitions, {KEYS} keys, ordering: {ordering}, maxInFlight {MAX_IN_FLIGHT}, {count} messages drained flat out"
    );
    let target =
        if ordering == "key" { "≥ 0.8 × ceiling" } else { "comparison (Kubeless: one in flight per partition)" };
    let spec = Spec { name, description, mode: "backlog", target };
    env.backlog(&spec, Target::Kafka { brokers: env.brokers.clone(), topic }, count, manifests, 1).await
}

/// Kafka → HTTP produced live at `rate` msgs/s for `seconds`: latency under load.
async fn kafka_rate(
    env: &mut Env,
    name: &str,
    rate: f64,
    seconds: u64,
    why: &str,
    target_text: &str,
) -> anyhow::Result<Scenario> {
    let count = (rate * seconds as f64) as u64;
    let topic = name.to_string();
    env.create_topic(&topic, PARTITIONS).await?;
    let manifests = vec![env.function_yaml("f", name), env.kafka_trigger(name, &topic, name, "key")];
    let ceiling = env.ceiling(name, MAX_IN_FLIGHT, 0).await?;
    let mut daemon = env.daemon(name, &manifests).await?;
    env.reset_sink(0).await?;
    let target = Target::Kafka { brokers: env.brokers.clone(), topic };
    let load = Load { count, rate: Some(rate), size: SIZE, keys: KEYS };
    let windows = env.cpu_windows(name, &daemon)?;
    let sent = produce::produce(&target, load).await?;
    let (stats, _) = env.drain(name, &mut daemon, count, Duration::from_secs(120)).await?;
    let cpus = windows.close()?;
    eprintln!("{name}: produced at {sent:.0}/s");
    let description = format!(
        "Kafka → HTTP as kafka-key-flat-out, produced live at {rate:.0} msg/s ({why}) for {seconds} s; producer linger 1 ms"
    );
    let spec = Spec { name, description, mode: "rate", target: target_text };
    let mut s = scenario(&spec, count, &stats, &ceiling, MAX_IN_FLIGHT, &daemon, Some(cpus))?;
    s.note = "CPU from the start of production to the last delivery; the producer also shares the cores".into();
    Ok(s)
}

async fn nats_flat(env: &mut Env, name: &str, count: u64) -> anyhow::Result<Scenario> {
    let client = async_nats::connect(&env.nats_url).await?;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        ..Default::default()
    })
    .await
    .context("creating the JetStream stream BENCH")?;
    let subject = "bench.events";
    let manifests = vec![
        env.function_yaml("f", name),
        format!(
            "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  topic: {subject}\n  functionSelector:\n    matchLabels: {{bench: {name}}}\n  jetstream:\n    stream: BENCH\n  delivery:\n    maxInFlight: {MAX_IN_FLIGHT}\n"
        ),
    ];
    let description =
        format!("NATS JetStream → HTTP, {SIZE} B messages, durable pull consumer, maxInFlight {MAX_IN_FLIGHT}, {count} messages drained flat out");
    let target = Target::Nats { url: env.nats_url.clone(), subject: subject.into() };
    let spec = Spec { name, description, mode: "backlog", target: "≥ 0.7 × ceiling" };
    env.backlog(&spec, target, count, manifests, 1).await
}

async fn kinesis_flat(env: &mut Env, name: &str, count: u64) -> anyhow::Result<Scenario> {
    let client = kubeless_kinesis::emulator_client(&env.moto).await;
    kubeless_kinesis::create_stream(&client, "bench", KINESIS_SHARDS).await.map_err(anyhow::Error::msg)?;
    let manifests = vec![
        env.function_yaml("f", name),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: aws, namespace: default}}\nstringData: {{aws_access_key_id: testing, aws_secret_access_key: testing}}\n---\napiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  function-name: f\n  aws-region: us-east-1\n  stream: bench\n  secret: aws\n  endpoint: {}\n  startingPosition: TRIM_HORIZON\n  delivery:\n    maxInFlight: {MAX_IN_FLIGHT}\n",
            env.moto
        ),
    ];
    let description = format!(
        "Kinesis (moto_server) → HTTP, {SIZE} B records, {KINESIS_SHARDS} shards, {KEYS} partition keys, maxInFlight {MAX_IN_FLIGHT}, {count} records drained flat out"
    );
    let target = Target::Kinesis { endpoint: env.moto.clone(), stream: "bench".into() };
    let spec = Spec { name, description, mode: "backlog", target: "≥ 0.7 × ceiling" };
    env.backlog(&spec, target, count, manifests, 1).await
}

async fn slow_backlog(env: &mut Env, name: &str, sizes: Sizes) -> anyhow::Result<Scenario> {
    const LATENCY_MS: u64 = 50;
    let topic = name.to_string();
    env.create_topic(&topic, PARTITIONS).await?;
    let count = sizes.backlog;
    let target = Target::Kafka { brokers: env.brokers.clone(), topic: topic.clone() };
    let sent = produce::produce(&target, Load { count, rate: None, size: SIZE, keys: KEYS }).await?;
    eprintln!("{name}: {count} messages in the backlog ({sent:.0}/s produced)");
    let ceiling = env.ceiling(name, MAX_IN_FLIGHT, LATENCY_MS).await?;
    env.reset_sink(LATENCY_MS).await?;
    let manifests = vec![env.function_yaml("f", name), env.kafka_trigger(name, &topic, name, "key")];
    let mut daemon = env.daemon(name, &manifests).await?;
    // Measure a fixed window once delivery has started; sample RSS to see that it stays flat.
    env.drain(name, &mut daemon, 1, Duration::from_secs(60)).await?;
    let windows = env.cpu_windows(name, &daemon)?;
    let mut rss = Vec::new();
    let end = Instant::now() + Duration::from_secs(sizes.slow_seconds);
    while Instant::now() < end {
        daemon.proc.check_alive()?;
        rss.push(procs::rss_mib(daemon.proc.pid())?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpus = windows.close()?;
    let stats = env.stats().await?;
    let description = format!(
        "Kafka → HTTP with a {LATENCY_MS} ms function, {count}-message backlog, maxInFlight {MAX_IN_FLIGHT}, measured for {} s (expected ≈ {} msg/s)",
        sizes.slow_seconds,
        MAX_IN_FLIGHT as u64 * 1000 / LATENCY_MS
    );
    let spec = Spec { name, description, mode: "backlog", target: "RSS < 256 MiB, flat" };
    let mut s = scenario(&spec, stats.received, &stats, &ceiling, MAX_IN_FLIGHT, &daemon, Some(cpus))?;
    let (first_half, second_half) = rss.split_at(rss.len() / 2);
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    s.note = format!(
        "RSS sampled every 0.5 s: max {:.1} MiB in the first half of the window, {:.1} MiB in the second",
        max(first_half),
        max(second_half)
    );
    Ok(s)
}

/// Turns off librdkafka's statistics, which the daemon reads consumer lag from: with them on,
/// librdkafka keeps latency histograms for every broker connection of every consumer.
const NO_LAG: &[&str] = &["--kafka-property", "statistics.interval.ms=0"];

async fn idle(env: &mut Env, name: &str, triggers: usize, extra: &[&str]) -> anyhow::Result<Scenario> {
    let mut manifests = vec![env.function_yaml("f", name)];
    for i in 0..triggers {
        let topic = format!("{name}-{i}");
        env.create_topic(&topic, 1).await?;
        manifests.push(env.kafka_trigger(&format!("{name}-{i}"), &topic, name, "key"));
    }
    let daemon = env.daemon_with(name, &manifests, extra).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let window = CpuWindow::open(daemon.proc.pid())?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu, _) = window.close()?;
    let rss = procs::rss_mib(daemon.proc.pid())?;
    let peak = procs::peak_rss_mib(daemon.proc.pid())?;
    eprintln!("{name}: RSS {rss:.1} MiB (peak {peak:.1}), CPU {cpu:.1}% at rest");
    let description = format!(
        "{triggers} Kafka triggers on {triggers} idle topics, one consumer group each; measured for 10 s at rest{}",
        if extra.is_empty() {
            String::new()
        } else {
            format!("; daemon run with `{}` (no consumer-lag metric)", extra.join(" "))
        }
    );
    Ok(Scenario {
        target: "RSS < 64 MiB".into(),
        note: format!("RSS at rest {rss:.1} MiB"),
        ..Scenario::without_traffic(name, description, peak, cpu)
    })
}

async fn fan_out(env: &mut Env, name: &str, count: u64) -> anyhow::Result<Scenario> {
    const FUNCTIONS: u64 = 10;
    let topic = name.to_string();
    env.create_topic(&topic, PARTITIONS).await?;
    let mut manifests: Vec<String> = (0..FUNCTIONS).map(|i| env.function_yaml(&format!("f{i}"), name)).collect();
    manifests.push(env.kafka_trigger(name, &topic, name, "key"));
    let description = format!(
        "one Kafka trigger selecting {FUNCTIONS} functions (a consumer group each), {count} messages × {FUNCTIONS} deliveries drained flat out; ceiling at {FUNCTIONS} × maxInFlight"
    );
    let target = Target::Kafka { brokers: env.brokers.clone(), topic };
    let spec = Spec { name, description, mode: "backlog", target: "≥ 0.8 × ceiling" };
    let mut s = env.backlog(&spec, target, count, manifests, FUNCTIONS).await?;
    let stats = env.stats().await?;
    let (least, most) = (stats.per_path.values().min().copied(), stats.per_path.values().max().copied());
    s.note = format!("{} functions served; deliveries per function {least:?}..{most:?}", stats.per_path.len());
    Ok(s)
}

pub fn root_dir() -> anyhow::Result<PathBuf> {
    let here = std::env::current_dir()?;
    for dir in here.ancestors() {
        if dir.join("scripts/tansu").exists() && dir.join("loadtests").is_dir() {
            return Ok(dir.to_path_buf());
        }
    }
    bail!("run from inside the kubeless-broker checkout (no scripts/tansu above {})", here.display())
}
