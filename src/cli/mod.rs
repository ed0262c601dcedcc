//! The `kubeless` CLI: Kubeless's command tree and flags (`cmd/kubeless`), against the Kubernetes
//! API or a manifest directory (`--manifests`/`KUBELESS_MANIFESTS`, the directory
//! `kubeless-broker --manifests` reads), and publishing to Kafka, NATS and Kinesis.
//!
//! A module per command group, with its flags, the objects it builds and what it does: `function`,
//! `trigger` (a file per kind), `topic` and `autoscale`. `common` and `selector` hold what several
//! of them use; `publish` the publishing engine each bus's sink plugs into.

mod autoscale;
mod common;
mod function;
mod publish;
mod selector;
pub mod store;
mod table;
#[cfg(test)]
mod test_support;
mod topic;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use self::autoscale::AutoscaleCommand;
use self::common::{catalogue, open};
use self::function::FunctionCommand;
use self::topic::TopicCommand;
use self::trigger::TriggerCommand;

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
    /// With --manifests: the broker's `--state-dir`, where the functions it runs keep their logs
    /// and addresses (`function logs`, `call`). Default: as the broker's.
    #[arg(long, global = true, env = "KUBELESS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
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
    /// yaml or json instead of a table (`--out`, Kubeless's name, works too).
    #[arg(short = 'o', long, visible_alias = "out", value_parser = ["yaml", "json"])]
    pub output: Option<String>,
}

/// How long a message may wait for the broker's acknowledgement, unless `--timeout` says.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn main(cli: Cli) -> ExitCode {
    crate::app::install_crypto_provider();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Function(c) => function::run(&g, c).await,
        Command::Trigger(c) => trigger::run(&g, c).await,
        Command::Topic(c) => topic::run(c).await,
        Command::Autoscale(c) => autoscale::run(&g, c).await,
        Command::GetServerConfig => {
            let store = open(&g).await?;
            let catalogue = catalogue(&store).await?;
            println!("Supported runtimes are: {}", catalogue.known().join(", "));
            Ok(())
        }
        Command::Version => {
            println!("kubeless {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Completion { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "kubeless", &mut std::io::stdout());
            Ok(())
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
