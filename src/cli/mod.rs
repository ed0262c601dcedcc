//! The `kubeless` CLI: Kubeless's command tree and flags (`cmd/kubeless`), against the Kubernetes
//! API or a manifest directory (`--manifests`/`KUBELESS_MANIFESTS`, the directory
//! `kubeless-broker --manifests` reads), and publishing to Kafka, NATS and Kinesis.

mod commands;
mod function;
pub mod objects;
mod publish;
pub mod store;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{DEFAULT_KAFKA_BROKERS, DEFAULT_NATS_URL};

#[derive(Debug, Parser)]
#[command(name = "kubeless", version, about = "Kubeless-compatible CLI for the trigger broker.")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where objects are read and written.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// A manifest directory instead of a cluster: objects are YAML files there, as
    /// `kubeless-broker --manifests DIR` reads them.
    #[arg(long, global = true, env = "KUBELESS_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig file. Default: `KUBECONFIG`, else `~/.kube/config`, else in-cluster.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context. Default: the current context.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace. Default: the kubeconfig context's, else `default`.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy, update, call and inspect functions.
    #[command(subcommand)]
    Function(FunctionCommand),
    /// Kafka, NATS, Kinesis, cron and HTTP triggers.
    #[command(subcommand)]
    Trigger(TriggerCommand),
    /// Kafka topics (straight to the brokers).
    #[command(subcommand)]
    Topic(TopicCommand),
    /// A function's horizontal pod autoscaler.
    #[command(subcommand)]
    Autoscale(AutoscaleCommand),
    /// The runtimes the cluster's kubeless-config allows.
    GetServerConfig,
    /// Print the version.
    Version,
    /// Shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

/// `--dryrun` and `-o`.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Print the object instead of writing it.
    #[arg(long)]
    pub dryrun: bool,
    /// Output format of the object: yaml or json (with --dryrun, or after writing).
    #[arg(short = 'o', long, value_parser = ["yaml", "json"])]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ListOutput {
    /// yaml or json instead of a table.
    #[arg(short = 'o', long, value_parser = ["yaml", "json"])]
    pub output: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct FunctionFlags {
    /// Runtime (e.g. python3.9, nodejs14).
    #[arg(short = 'r', long)]
    pub runtime: Option<String>,
    /// Handler: file.function.
    #[arg(long)]
    pub handler: Option<String>,
    /// Code file, or a URL to it.
    #[arg(short = 'f', long)]
    pub from_file: Option<String>,
    /// Dependencies file (requirements.txt, package.json).
    #[arg(short = 'd', long)]
    pub dependencies: Option<String>,
    /// Labels, `k=v` or `k:v`, comma-separated or repeated.
    #[arg(short = 'l', long = "label", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Environment variables, `k=v` or `k:v`.
    #[arg(short = 'e', long = "env", value_delimiter = ',')]
    pub env: Vec<String>,
    /// Secrets mounted at /<secret>.
    #[arg(long, value_delimiter = ',')]
    pub secrets: Vec<String>,
    /// Node selectors, `k=v` or `k:v`.
    #[arg(long, value_delimiter = ',')]
    pub node_selectors: Vec<String>,
    #[arg(long)]
    pub service_account: Option<String>,
    /// Memory request and limit (e.g. 128Mi).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU request and limit (e.g. 100m).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Custom runtime image.
    #[arg(long)]
    pub runtime_image: Option<String>,
    /// IfNotPresent, Always (deploy's default) or Never.
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// Seconds a call may take (deploy's default: 180).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Port the function listens on (deploy's default: 8080).
    #[arg(long)]
    pub port: Option<i32>,
    /// Port of the Service (default: --port).
    #[arg(long = "servicePort")]
    pub service_port: Option<i32>,
    /// A headless Service (no cluster IP).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub headless: Option<bool>,
    /// Where the broker reaches the function (the `kubeless.io/url` annotation): for a function
    /// run outside the cluster, e.g. with --manifests.
    #[arg(long)]
    pub url: Option<String>,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Subcommand)]
pub enum FunctionCommand {
    /// Deploy a function.
    Deploy {
        name: String,
        #[command(flatten)]
        flags: FunctionFlags,
        /// Also create a CronJobTrigger of this name with this schedule.
        #[arg(long)]
        schedule: Option<String>,
    },
    /// Change a function: only the flags given change.
    Update {
        name: String,
        #[command(flatten)]
        flags: FunctionFlags,
    },
    /// Delete functions.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List functions (all, or the ones named).
    #[command(alias = "ls")]
    List {
        names: Vec<String>,
        #[command(flatten)]
        out: ListOutput,
    },
    /// Show a function.
    Describe {
        name: String,
        #[command(flatten)]
        out: ListOutput,
    },
    /// Call a function: GET without data, POST with it.
    Call {
        name: String,
        #[arg(short = 'd', long)]
        data: Option<String>,
    },
    /// Print the logs of a function's pods.
    Logs {
        name: String,
        /// Keep streaming.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Calls, failures and durations from each function's /metrics.
    #[command(alias = "stats")]
    Top {
        /// One function; default: all.
        #[arg(short = 'f', long)]
        function: Option<String>,
        #[command(flatten)]
        out: ListOutput,
    },
}

#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Kafka triggers: a topic delivered to the functions a selector picks.
    #[command(subcommand)]
    Kafka(TriggerCrud<SelectorFlags>),
    /// NATS triggers, and publishing to NATS.
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Kinesis triggers, streams and publishing.
    #[command(subcommand)]
    Kinesis(KinesisCommand),
    /// Cron triggers: a function called on a schedule.
    #[command(subcommand)]
    Cronjob(TriggerCrud<CronJobFlags>),
    /// HTTP triggers: an Ingress to a function.
    #[command(subcommand)]
    Http(TriggerCrud<HttpFlags>),
}

#[derive(Debug, Clone, Args)]
pub struct SelectorFlags {
    /// Topic (subject) to listen to.
    #[arg(long)]
    pub trigger_topic: Option<String>,
    /// Functions to deliver to: a label selector (k=v,k2=v2).
    #[arg(long)]
    pub function_selector: Option<String>,
    #[command(flatten)]
    pub out: Output,
}

/// The commands every trigger kind has; `F` is its flags (all optional on `update`).
#[derive(Debug, Subcommand)]
pub enum TriggerCrud<F: Args> {
    /// Create a trigger.
    Create {
        name: String,
        #[command(flatten)]
        flags: F,
    },
    /// Change a trigger: only the flags given change.
    Update {
        name: String,
        #[command(flatten)]
        flags: F,
    },
    /// Delete a trigger.
    Delete { name: String },
    /// List the triggers of the namespace.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        out: ListOutput,
    },
}

#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    #[command(flatten)]
    Trigger(TriggerCrud<SelectorFlags>),
    /// Publish to a NATS subject (JetStream when a stream captures it).
    Publish {
        /// NATS server.
        #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
        url: String,
        /// Subject.
        #[arg(long, default_value = "kubeless")]
        topic: String,
        /// One message (Kubeless's flag; same as --data).
        #[arg(long, conflicts_with = "data")]
        message: Option<String>,
        #[command(flatten)]
        input: publish::Input,
    },
}

#[derive(Debug, Clone, Args)]
pub struct KinesisFlags {
    #[arg(long)]
    pub stream: Option<String>,
    #[arg(long)]
    pub aws_region: Option<String>,
    #[arg(long)]
    pub shard_id: Option<String>,
    #[arg(long)]
    pub function_name: Option<String>,
    /// Secret with aws_access_key_id and aws_secret_access_key.
    #[arg(long)]
    pub secret: Option<String>,
    /// Endpoint override (an emulator).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub out: Output,
}

/// Where Kinesis is and how to sign in.
#[derive(Debug, Clone, Args)]
pub struct AwsFlags {
    #[arg(long)]
    pub aws_region: String,
    /// Endpoint override (an emulator).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Kubernetes Secret with aws_access_key_id and aws_secret_access_key; without it, the AWS
    /// SDK's own chain (AWS_ACCESS_KEY_ID, profiles, …).
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KinesisCommand {
    #[command(flatten)]
    Trigger(TriggerCrud<KinesisFlags>),
    /// Create a stream (for trying things out).
    CreateStream {
        #[arg(long)]
        stream_name: String,
        #[arg(long, default_value_t = 1)]
        shard_count: i32,
        #[command(flatten)]
        aws: AwsFlags,
    },
    /// Put records on a stream.
    Publish {
        #[arg(long)]
        stream: String,
        /// Partition key of every record (unless --key-separator gives one per line).
        #[arg(long)]
        partition_key: Option<String>,
        /// Records (repeatable), as Kubeless's flag.
        #[arg(long)]
        records: Vec<String>,
        #[command(flatten)]
        aws: AwsFlags,
        #[command(flatten)]
        input: publish::Input,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CronJobFlags {
    /// Function to call (must exist).
    #[arg(long)]
    pub function: Option<String>,
    /// Cron schedule (5 fields, or @hourly-style).
    #[arg(long)]
    pub schedule: Option<String>,
    /// JSON payload.
    #[arg(short = 'p', long, conflicts_with = "payload_from_file")]
    pub payload: Option<String>,
    /// A .json file holding the payload.
    #[arg(short = 'f', long)]
    pub payload_from_file: Option<PathBuf>,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Clone, Args)]
pub struct HttpFlags {
    #[arg(long)]
    pub function_name: Option<String>,
    /// Ingress path.
    #[arg(long)]
    pub path: Option<String>,
    /// Host name (with nginx, default: <function>.<API server address>.nip.io).
    #[arg(long)]
    pub hostname: Option<String>,
    /// TLS from cert-manager (ACME).
    #[arg(long = "enableTLSAcme", num_args = 0..=1, default_missing_value = "true")]
    pub enable_tls_acme: Option<bool>,
    /// nginx (default), traefik or kong.
    #[arg(long)]
    pub gateway: Option<String>,
    #[arg(long)]
    pub basic_auth_secret: Option<String>,
    #[arg(long)]
    pub tls_secret: Option<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub cors_enable: Option<bool>,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Clone, Args)]
pub struct KafkaFlags {
    /// Kafka brokers (comma-separated).
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_KAFKA_BROKERS)]
    pub brokers: String,
    /// Accepted for compatibility: Kubeless exec'd into a broker pod in this namespace; this CLI
    /// talks to --brokers.
    #[arg(long)]
    pub kafka_namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (idempotent).
    Create {
        topic_name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[arg(long, default_value_t = 1)]
        replication_factor: i32,
        #[command(flatten)]
        kafka: KafkaFlags,
    },
    /// Delete a topic.
    Delete {
        topic_name: String,
        #[command(flatten)]
        kafka: KafkaFlags,
    },
    /// List topics.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        kafka: KafkaFlags,
    },
    /// Publish messages to a topic.
    Publish {
        #[arg(long, default_value = "kubeless")]
        topic: String,
        #[command(flatten)]
        input: publish::Input,
        #[command(flatten)]
        kafka: KafkaFlags,
    },
}

#[derive(Debug, Subcommand)]
pub enum AutoscaleCommand {
    /// Autoscale a function.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        min: i32,
        #[arg(long, default_value_t = 1)]
        max: i32,
        /// cpu or qps.
        #[arg(long, default_value = "cpu")]
        metric: String,
        /// CPU percentage, or calls per second (a quantity).
        #[arg(long)]
        value: String,
    },
    /// Stop autoscaling a function.
    Delete { name: String },
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        out: ListOutput,
    },
}

/// How long a message may wait for the broker's acknowledgement, unless `--timeout` says.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn main(cli: Cli) -> ExitCode {
    crate::app::install_crypto_provider();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause its parent already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
    }
    line.replace('\n', " ")
}

/// A command line clap refused: its first line (what is wrong) and where to look, on one line;
/// help and version go out whole.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.exit_code() == 0 { ExitCode::SUCCESS } else { ExitCode::from(2) };
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("error: invalid command line").trim();
    eprintln!("{first} (see `kubeless --help`)");
    ExitCode::from(2)
}
