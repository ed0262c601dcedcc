//! `loadtest`: the load tests of kubeless-broker. `loadtests/run` builds it and calls `loadtest run`;
//! the pieces also run alone: `sink` (the stand-in function), `ceiling` (the plain HTTP load
//! generator) and `produce` (the message generator).

mod ceiling;
mod kube;
mod payload;
mod procs;
mod produce;
mod report;
mod run;
mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "loadtest", about = "Load tests for kubeless-broker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario and write results/<date>.{json,md,svg}.
    Run {
        /// Where results go.
        #[arg(long, default_value = "loadtests/results")]
        out: PathBuf,
        /// Small counts: checks the harness, not the daemon. Results go to <out>/quick-<date>.*.
        #[arg(long)]
        quick: bool,
        /// Only scenarios whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Rate (msgs/s) of kafka-key-half-rate instead of 50% of kafka-key-flat-out's.
        #[arg(long)]
        half_rate: Option<f64>,
        /// Extra daemon flag (repeatable), e.g. --daemon-arg=--kafka-property=fetch.wait.max.ms=10.
        #[arg(long = "daemon-arg", allow_hyphen_values = true)]
        daemon_args: Vec<String>,
    },
    /// The stand-in function: answers any path, records counts and latency (GET /_stats).
    Sink {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Share of requests answered 500 (0..1).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
    },
    /// Drive a URL with keep-alive POSTs at a concurrency; print requests per second.
    Ceiling {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, value_enum, default_value_t = ceiling::ClientKind::Hyper)]
        client: ceiling::ClientKind,
    },
    /// Produce stamped messages to Kafka, NATS JetStream or Kinesis.
    Produce {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Messages per second; flat out without it.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 1000)]
        keys: u64,
    },
}

/// One of --kafka, --nats or --kinesis (each with its topic, subject or stream).
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(false).args(["kafka", "nats", "kinesis"])))]
struct TargetArgs {
    /// Kafka brokers; with --topic.
    #[arg(long, requires = "topic")]
    kafka: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    /// NATS URL; with --subject (a JetStream stream must capture it).
    #[arg(long, requires = "subject")]
    nats: Option<String>,
    #[arg(long)]
    subject: Option<String>,
    /// Kinesis endpoint; with --stream.
    #[arg(long, requires = "stream")]
    kinesis: Option<String>,
    #[arg(long)]
    stream: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The AWS SDK and async-nats enable different rustls providers; pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match Cli::parse().command {
        Cmd::Sink { addr, latency_ms, error_rate } => {
            sink::serve(addr, sink::Behaviour { latency_ms, error_rate }).await
        }
        Cmd::Ceiling { url, concurrency, size, seconds, client } => {
            let m = ceiling::measure(&url, concurrency, size, Duration::from_secs(seconds), client).await?;
            println!(
                "{:.0} requests/s at {concurrency} in flight, {:.1} µs of client CPU per request",
                m.rate, m.client_cpu_us
            );
            Ok(())
        }
        Cmd::Produce { target, count, rate, size, keys } => {
            let target = match (target.kafka, target.topic, target.nats, target.subject, target.kinesis, target.stream)
            {
                (Some(brokers), Some(topic), ..) => produce::Target::Kafka { brokers, topic },
                (_, _, Some(url), Some(subject), ..) => produce::Target::Nats { url, subject },
                (.., Some(endpoint), Some(stream)) => produce::Target::Kinesis { endpoint, stream },
                _ => anyhow::bail!("give --kafka with --topic, --nats with --subject, or --kinesis with --stream"),
            };
            let sent = produce::produce(&target, produce::Load { count, rate, size, keys }).await?;
            println!("{count} messages at {sent:.0}/s");
            Ok(())
        }
        Cmd::Run { out, quick, only, half_rate, daemon_args } => run(out, quick, only, half_rate, daemon_args).await,
    }
}

async fn run(
    out: PathBuf,
    quick: bool,
    only: Option<String>,
    half_rate: Option<f64>,
    daemon_args: Vec<String>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = run::root_dir()?;
    let sizes = if quick { run::Sizes::quick() } else { run::Sizes::full() };
    let mut env = run::Env::start(&root, daemon_args).await?;
    eprintln!("servers up; logs in {}", env.logs().display());
    let results = run::run_all(&mut env, sizes, only.as_deref(), half_rate).await;
    let (mut scenarios, mut failed) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(s) => scenarios.push(s),
            Err((name, error)) => failed.push(report::Failed { name, error }),
        }
    }
    let date = chrono::Local::now().format("%Y-%m-%d").to_string();
    let report = report::Report {
        date: date.clone(),
        commit: report::commit(&root),
        machine: report::machine(),
        seconds: started.elapsed().as_secs_f64(),
        ceilings: env.ceilings().to_vec(),
        scenarios,
        failed,
    };
    std::fs::create_dir_all(&out)?;
    let stem = if quick { format!("quick-{date}") } else { date };
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(&report)?)?;
    let table = report::markdown(&report);
    std::fs::write(out.join(format!("{stem}.md")), &table)?;
    report::chart(&report, &out.join(format!("{stem}.svg")))?;
    println!("{table}");
    println!("wrote {}/{stem}.json, .md and .svg", out.display());
    if !report.failed.is_empty() {
        anyhow::bail!("{} scenario(s) failed; logs kept in {}", report.failed.len(), env.logs().display());
    }
    Ok(())
}
