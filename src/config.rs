//! Process flags (with environment fallbacks). Pipeline settings live in the resources, not here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::control::index::{IndexSettings, DEFAULT_URL_TEMPLATE};
use crate::kubernetes::KubeSettings;
use crate::policy::PolicyArgs;

/// Kubeless's default for `KAFKA_BROKERS`.
pub const DEFAULT_KAFKA_BROKERS: &str = "kafka.kubeless:9092";
/// Kubeless's default for `NATS_URL`.
pub const DEFAULT_NATS_URL: &str = "nats://nats.nats-io.svc.cluster.local:4222";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kubeless-broker",
    version,
    about = "Kubeless-compatible trigger broker: delivers Kafka messages to functions over HTTP, at least once."
)]
pub struct Args {
    /// Directory of Kubeless manifests (`*.yaml`, `*.yml`; multi-document files too), watched for
    /// changes (standalone mode). Without it, resources come from the Kubernetes API server.
    #[arg(long, env = "KUBELESS_MANIFESTS")]
    pub manifests: Option<PathBuf>,

    /// Kubeconfig file (Kubernetes mode). Default: the in-cluster service account, else
    /// `KUBECONFIG`, else `~/.kube/config`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use (Kubernetes mode). Default: the current context.
    #[arg(long)]
    pub context: Option<String>,

    /// Namespace to watch (Kubernetes mode); repeatable, or comma-separated in the environment.
    /// Default: every namespace.
    #[arg(long = "namespace", env = "KUBELESS_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Field manager of the status this daemon writes, and the reporter of its Events.
    #[arg(long, env = "KUBELESS_FIELD_MANAGER", default_value = "kubeless-broker")]
    pub field_manager: String,

    /// Namespace of the Leases (Kubernetes mode): the cron leader's and each Kinesis shard's.
    /// Default: the pod's namespace (env `POD_NAMESPACE`), else the kubeconfig's namespace.
    #[arg(long)]
    pub leader_election_namespace: Option<String>,

    /// Run the Function and HTTPTrigger reconcilers (Kubernetes mode, on the leader): each
    /// Function's ConfigMap, Deployment, Service and HPA, each HTTPTrigger's Ingress. Turn off
    /// while Kubeless's own controllers still run.
    #[arg(long, env = "KUBELESS_FUNCTION_CONTROLLER", default_value_t = true, action = clap::ArgAction::Set)]
    pub function_controller: bool,

    /// cert-manager ClusterIssuer named on the Ingress of an HTTPTrigger with `tls: true`
    /// (`cert-manager.io/cluster-issuer`). Without it, `kubernetes.io/tls-acme` alone asks
    /// cert-manager's default issuer, as with Kubeless.
    #[arg(long, env = "KUBELESS_ACME_CLUSTER_ISSUER")]
    pub acme_cluster_issuer: Option<String>,

    /// Address of the admin server (`/metrics`, `/healthz`, `/readyz`, `/status`).
    #[arg(long, env = "KUBELESS_ADMIN_ADDR", default_value = "0.0.0.0:9095")]
    pub admin_addr: SocketAddr,

    /// Where a function without a `kubeless.io/url` annotation is reached; `{name}`, `{namespace}`
    /// and `{port}` are filled in.
    #[arg(long, env = "KUBELESS_FUNCTION_URL_TEMPLATE", default_value = DEFAULT_URL_TEMPLATE)]
    pub function_url_template: String,

    /// Kafka brokers for triggers without `spec.brokers` (comma-separated).
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_KAFKA_BROKERS)]
    pub kafka_brokers: String,

    /// NATS server for triggers without `spec.url`.
    #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats_url: String,

    /// Extra librdkafka property for every Kafka client, `key=value`; repeatable.
    #[arg(long = "kafka-property", value_parser = parse_property)]
    pub kafka_properties: Vec<KafkaProperty>,

    /// How long a stopping or rebalancing consumer waits for in-flight messages before committing
    /// what finished.
    #[arg(long, env = "KUBELESS_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Where state that must survive a restart is kept (the last fired cron tick of each trigger).
    /// Default: `$XDG_STATE_HOME/kubeless-broker`, else `~/.local/state/kubeless-broker`.
    #[arg(long, env = "KUBELESS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// How often the manifest directory is checked for changes.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub scan_interval: Duration,

    /// Log format.
    #[arg(long, env = "KUBELESS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Where `/status` is served to whoever reaches the address: loopback by default (processes of
    /// the pod, `kubectl port-forward`), as it lists every tenant's triggers, groups and function URLs.
    #[arg(long, env = "KUBELESS_STATUS_ADDR", default_value = "127.0.0.1:9096")]
    pub status_addr: SocketAddr,

    /// A file holding a bearer token: with it, `/status` is also served on `--admin-addr` to
    /// requests carrying `Authorization: Bearer <token>`.
    #[arg(long, env = "KUBELESS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// The bytes of messages every consumer together may hold in memory (channels, waiting, in
    /// flight), shared fairly: a consumer at its share pauses its source, the others go on. E.g.
    /// `256MiB`, `1GiB`. Default: a quarter of the container's memory limit (cgroup v1/v2), else
    /// 256 MiB.
    #[arg(long, env = "KUBELESS_MEMORY_BUDGET", value_parser = parse_size)]
    pub memory_budget: Option<u64>,

    /// How long a keep-alive connection to a function is reused before new requests open new ones
    /// (`0s`: for ever). kube-proxy balances per connection, so without a bound the pods an HPA adds
    /// get no traffic from connections opened before them.
    #[arg(long, env = "KUBELESS_CONNECTION_LIFETIME", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connection_lifetime: Duration,

    /// Standalone mode: run each Function without a `kubeless.io/url` annotation as a child
    /// process (a local function) and deliver to it. Off: such a Function is reached at
    /// `--function-url-template`.
    #[arg(long, env = "KUBELESS_LOCAL_FUNCTIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub local_functions: bool,

    /// The runtimes local functions run on (`runtimes/`, with its `run` script). Default:
    /// `runtimes/` beside the executable, two levels up (a cargo build), or in
    /// `../share/kubeless-broker/` from it (an installed one).
    #[arg(long, env = "KUBELESS_RUNTIMES_DIR")]
    pub runtimes_dir: Option<PathBuf>,

    /// Standalone mode: where HTTPTriggers are served, as a cluster's Ingress would serve them
    /// (`host-name` and `path` to the function); `off` for none.
    #[arg(long, env = "KUBELESS_GATEWAY_ADDR", default_value = "127.0.0.1:9097")]
    pub gateway_addr: String,

    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Without a container memory limit, the budget of message bytes.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// `1048576`, `512KiB`, `256MiB`, `1GiB` (also `K`/`M`/`G`/`KB`/`MB`/`GB`, binary).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{s:?} is not a size such as 256MiB or 1GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = number.checked_shl(shift).filter(|b| b >> shift == number).ok_or(format!("{s:?} is too large"))?;
    if bytes < 1 << 20 {
        return Err(format!("{s:?} is less than 1MiB"));
    }
    Ok(bytes)
}

/// One `--kafka-property key=value`; printed with a credential's value redacted.
#[derive(Clone)]
pub struct KafkaProperty(pub String, pub String);

impl std::fmt::Debug for KafkaProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if kubeless_kafka::is_sensitive_property(&self.0) { "[redacted]" } else { &self.1 };
        write!(f, "{}={value}", self.0)
    }
}

fn parse_property(s: &str) -> Result<KafkaProperty, String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok(KafkaProperty(k.trim().to_string(), v.to_string())),
        // The value is not echoed: it may be a password.
        _ => Err("must be key=value, e.g. session.timeout.ms=6000".to_string()),
    }
}

/// Where resources come from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A manifest directory, checked every `scan_interval`.
    Standalone { manifests: PathBuf, scan_interval: Duration },
    /// The API server.
    Kubernetes(KubeSettings),
}

/// Settings checked and ready to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub index: IndexSettings,
    /// `--admin-token-file`'s token.
    pub admin_token: Option<crate::admin::AdminToken>,
    /// `--memory-budget`, or its default from the container's limit.
    pub memory_budget: u64,
    /// `--connection-lifetime`; none: for ever.
    pub connection_lifetime: Option<Duration>,
    /// Standalone mode with `--local-functions`: where local functions keep their files and which
    /// runtimes they run on.
    pub local: Option<crate::local::LocalSettings>,
    /// Standalone mode: `--gateway-addr`, unless `off`.
    pub gateway_addr: Option<SocketAddr>,
}

impl Args {
    /// Checks the flags and the Kubeless environment (`KAFKA_ENABLE_TLS`, `KAFKA_ENABLE_SASL`…).
    pub fn settings(&self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let Args {
            manifests,
            kubeconfig,
            context,
            namespaces,
            field_manager,
            leader_election_namespace,
            function_controller,
            acme_cluster_issuer,
            admin_addr: _,
            status_addr: _,
            function_url_template,
            kafka_brokers,
            nats_url,
            kafka_properties,
            drain_timeout,
            state_dir,
            scan_interval,
            log_format: _,
            admin_token_file,
            memory_budget,
            connection_lifetime,
            local_functions,
            runtimes_dir,
            gateway_addr,
            policy,
        } = self;
        let memory_budget = memory_budget
            .or_else(|| kubeless_connector::cgroup_memory_limit().map(|limit| limit / 4))
            .unwrap_or(DEFAULT_MEMORY_BUDGET);
        let admin_token = match admin_token_file {
            None => None,
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", path.display()))?;
                if token.trim().is_empty() {
                    anyhow::bail!("--admin-token-file {}: the file is empty", path.display());
                }
                Some(crate::admin::AdminToken::new(&token))
            }
        };
        let policy = policy.policy(manifests.is_some())?;
        let mode = match manifests.clone() {
            Some(manifests) => Mode::Standalone { manifests, scan_interval: *scan_interval },
            None => {
                let namespaces: Vec<String> =
                    namespaces.iter().map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect();
                for ns in &namespaces {
                    if !crate::resources::validate::is_dns1123_label(ns) {
                        anyhow::bail!("--namespace {ns:?} is not a namespace name");
                    }
                }
                let identity = env("POD_NAME")
                    .or_else(|| env("HOSTNAME"))
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "kubeless-broker".to_string());
                let lease_namespace = leader_election_namespace.clone().or_else(|| env("POD_NAMESPACE"));
                if let Some(ns) =
                    lease_namespace.as_deref().filter(|ns| !crate::resources::validate::is_dns1123_label(ns))
                {
                    anyhow::bail!("--leader-election-namespace {ns:?} is not a namespace name");
                }
                Mode::Kubernetes(KubeSettings {
                    kubeconfig: kubeconfig.clone(),
                    context: context.clone(),
                    namespaces,
                    field_manager: field_manager.clone(),
                    identity,
                    lease_namespace,
                    function_controller: *function_controller,
                    config_namespace: env("KUBELESS_NAMESPACE").filter(|v| !v.is_empty()),
                    config_name: env("KUBELESS_CONFIG").filter(|v| !v.is_empty()),
                    acme_cluster_issuer: acme_cluster_issuer.clone().filter(|v| !v.is_empty()),
                })
            }
        };
        let sample =
            function_url_template.replace("{name}", "f").replace("{namespace}", "ns").replace("{port}", "8080");
        url::Url::parse(&sample).map_err(|e| {
            anyhow::anyhow!("--function-url-template {function_url_template:?} does not give a URL: {e}")
        })?;
        let state_dir = match state_dir {
            Some(dir) => dir.clone(),
            None => default_state_dir(&env)?,
        };
        let default_max_backoff = kubeless_environment(&env)?;
        let mut props = kubeless_kafka::security_properties(&env)?;
        props.extend(kafka_properties.iter().map(|KafkaProperty(k, v)| (k.clone(), v.clone())));
        if let Some(strategy) = props.get("partition.assignment.strategy").filter(|s| s.contains("cooperative")) {
            // Incremental assignment would need pause state per partition; the consumer keeps one
            // per member, so partitions paused under backpressure could stay paused for good.
            anyhow::bail!(
                "--kafka-property partition.assignment.strategy={strategy}: cooperative (incremental) rebalancing is not supported; use range or roundrobin (the default)"
            );
        }
        // Without runtimes (an image without them, a binary copied alone), functions without a
        // URL are reached at the template, as before local functions.
        let runtimes = runtimes_dir.clone().or_else(default_runtimes_dir);
        if *local_functions && manifests.is_some() && runtimes.is_none() {
            tracing::warn!("No runtimes directory found (--runtimes-dir): local functions are off; Functions without kubeless.io/url are reached at --function-url-template.");
        }
        let local = (*local_functions && manifests.is_some() && runtimes.is_some())
            .then(|| crate::local::LocalSettings { state_dir: state_dir.clone(), runtimes_dir: runtimes });
        if let Some(dir) = runtimes_dir.as_ref().filter(|d| !d.join("run").is_file()) {
            anyhow::bail!(
                "--runtimes-dir {}: no run script there (it is the project's runtimes/ directory)",
                dir.display()
            );
        }
        let gateway_addr = match gateway_addr.trim() {
            _ if manifests.is_none() => None,
            "off" | "" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!("--gateway-addr {addr:?} is not an address such as 127.0.0.1:9097 (or off): {e}")
            })?),
        };
        Ok(Settings {
            gateway_addr,
            admin_token,
            memory_budget,
            connection_lifetime: (!connection_lifetime.is_zero()).then_some(*connection_lifetime),
            mode,
            index: IndexSettings {
                kafka_brokers: kafka_brokers.split(',').map(str::trim).collect::<Vec<_>>().join(","),
                url_template: function_url_template.clone(),
                kafka_properties: props,
                drain_timeout: *drain_timeout,
                state_dir,
                nats_url: nats_url.clone(),
                default_max_backoff,
                policy,
                local_functions: local.is_some(),
            },
            local,
        })
    }
}

/// Kubeless controller settings in the environment: `BACKOFF_INTERVAL` is honoured (the longest wait
/// between retries of triggers that set none); `KUBELESS_NAMESPACE`/`KUBELESS_CONFIG` say where the
/// Function reconciler finds `kubeless-config`; the API token path is reported as not used, never
/// silently ignored.
fn kubeless_environment(env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Duration>> {
    if env("KUBELESS_TOKEN_FILE_PATH").is_some_and(|v| !v.is_empty()) {
        tracing::warn!(
            variable = "KUBELESS_TOKEN_FILE_PATH",
            "Kubeless setting not used: the broker uses its kubeconfig or service account."
        );
    }
    let Some(value) = env("BACKOFF_INTERVAL").filter(|v| !v.trim().is_empty()) else { return Ok(None) };
    let interval = humantime::parse_duration(value.trim())
        .map_err(|e| anyhow::anyhow!("BACKOFF_INTERVAL={value:?} is not a duration such as 5s or 1m30s: {e}"))?;
    if interval.is_zero() {
        anyhow::bail!("BACKOFF_INTERVAL={value:?} must be longer than 0");
    }
    tracing::info!(backoff_interval = ?interval, "BACKOFF_INTERVAL: retries of triggers without delivery.retry.maxBackoff wait at most this long.");
    Ok(Some(interval))
}

/// `runtimes/` beside the executable, two levels up from it (`target/debug/`), or in
/// `../share/kubeless-broker/` from it; the first with a `run` script.
fn default_runtimes_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    // `../../runtimes` only from a cargo target directory (`target/debug`), never `/runtimes`.
    let cargo_build = bin.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "target");
    let from_build = cargo_build.then(|| bin.join("../../runtimes"));
    [Some(bin.join("runtimes")), from_build, Some(bin.join("../share/kubeless-broker/runtimes"))]
        .into_iter()
        .flatten()
        .find(|d| d.join("run").is_file())
        .and_then(|d| d.canonicalize().ok())
}

pub fn default_state_dir(env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = env("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("kubeless-broker"));
    }
    match env("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/kubeless-broker")),
        None => anyhow::bail!("no HOME or XDG_STATE_HOME to put state in; pass --state-dir"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::*;

    /// The `## Flags` table of `docs/running.md`: each row's flag (the first cell's leading
    /// backticked `--name`) and its first cell.
    fn documented_flags() -> BTreeMap<String, String> {
        let doc = include_str!("../docs/running.md");
        let table = doc.split("\n## Flags\n").nth(1).expect("docs/running.md has a ## Flags section");
        let table = table.split("\n## ").next().unwrap_or(table);
        table
            .lines()
            .filter_map(|line| {
                let cell = line.strip_prefix("| `--")?.split(" |").next()?;
                let name = cell.split('`').next()?;
                Some((name.to_string(), cell.to_string()))
            })
            .collect()
    }

    #[test]
    fn the_flags_table_in_the_docs_lists_every_flag_with_its_environment_variable() {
        let documented = documented_flags();
        let command = Args::command();
        let mut flags = BTreeMap::new();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            flags.insert(long.to_string(), arg.get_env().map(|e| e.to_string_lossy().into_owned()));
        }
        let missing: Vec<&String> = flags.keys().filter(|f| !documented.contains_key(*f)).collect();
        let unknown: Vec<&String> = documented.keys().filter(|f| !flags.contains_key(*f)).collect();
        assert!(missing.is_empty(), "flags missing from docs/running.md#flags: {missing:?}");
        assert!(unknown.is_empty(), "docs/running.md#flags lists flags the daemon does not have: {unknown:?}");
        for (flag, env) in &flags {
            if let Some(env) = env {
                let cell = &documented[flag];
                assert!(cell.contains(&format!("`{env}`")), "--{flag}'s row does not name {env}: {cell}");
            }
        }
    }

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let args = Args::try_parse_from(["kubeless-broker", "--manifests", "/m"]).expect("flags");
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        args.settings(|k| vars.get(k).cloned().or_else(|| (k == "HOME").then(|| "/home/u".to_string())))
    }

    #[test]
    fn kafka_credentials_from_flags_and_environment_are_never_printed() {
        let args = Args::try_parse_from([
            "kubeless-broker",
            "--manifests",
            "/m",
            "--kafka-property",
            "sasl.password=flag-pw-3141",
        ])
        .expect("flags");
        let vars: BTreeMap<String, String> =
            [("KAFKA_ENABLE_SASL", "true"), ("KAFKA_USERNAME", "u"), ("KAFKA_PASSWORD", "env-pw-2718"), ("HOME", "/h")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let settings = args.settings(|k| vars.get(k).cloned()).expect("settings");
        assert_eq!(settings.index.kafka_properties["sasl.password"], "flag-pw-3141", "the flag wins");
        let printed = format!("{args:?}{settings:?}");
        assert!(!printed.contains("flag-pw-3141") && !printed.contains("env-pw-2718"), "{printed}");
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn memory_budgets_are_read_in_binary_units_and_nonsense_is_refused() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        for bad in ["lots", "12XB", "512KiB", "99999999999999GiB", ""] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cooperative_rebalancing_is_refused_with_what_to_use_instead() {
        let args = Args::try_parse_from([
            "kubeless-broker",
            "--manifests",
            "/m",
            "--kafka-property",
            "partition.assignment.strategy=cooperative-sticky",
        ])
        .expect("flags");
        let err = args.settings(|k| (k == "HOME").then(|| "/home/u".to_string())).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("cooperative-sticky") && err.contains("roundrobin"), "{err}");
        let ok = Args::try_parse_from([
            "kubeless-broker",
            "--manifests",
            "/m",
            "--kafka-property",
            "partition.assignment.strategy=roundrobin",
        ])
        .expect("flags");
        assert!(ok.settings(|k| (k == "HOME").then(|| "/home/u".to_string())).is_ok());
    }

    #[test]
    fn kubeless_backoff_interval_caps_retries_of_triggers_that_set_none() {
        use crate::resources::{DeliveryPolicy, RetryPolicy};
        let s = settings(&[("BACKOFF_INTERVAL", "5s")]).expect("settings");
        assert_eq!(s.index.default_max_backoff, Some(Duration::from_secs(5)));
        let unset = DeliveryPolicy::default();
        assert_eq!(s.index.with_defaults(&unset).retry.max_backoff, Duration::from_secs(5));
        let own = DeliveryPolicy {
            retry: RetryPolicy {
                max_backoff: Duration::from_secs(60),
                max_backoff_set: true,
                ..RetryPolicy::default()
            },
            ..DeliveryPolicy::default()
        };
        assert_eq!(s.index.with_defaults(&own).retry.max_backoff, Duration::from_secs(60), "the trigger's own wins");
        assert_eq!(settings(&[]).expect("settings").index.default_max_backoff, None);
        let err = settings(&[("BACKOFF_INTERVAL", "soon")]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("BACKOFF_INTERVAL") && err.contains("soon"), "{err}");
    }
}
