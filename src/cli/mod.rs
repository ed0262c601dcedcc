//! The `kubeless` CLI. This build has the `topic` commands, publishing straight to Kafka instead of
//! exec'ing into a broker pod as Kubeless did; the function and trigger commands come later.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_KAFKA_BROKERS;

#[derive(Debug, Parser)]
#[command(name = "kubeless", version, about = "Kubeless-compatible CLI for the trigger broker.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage Kafka topics.
    #[command(subcommand)]
    Topic(TopicCommand),
}

#[derive(Debug, clap::Args)]
pub struct KafkaFlags {
    /// Kafka brokers (comma-separated).
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_KAFKA_BROKERS)]
    pub brokers: String,
    /// Accepted for compatibility with Kubeless (which exec'd into a pod there); unused.
    #[arg(long, default_value = "kubeless", hide = true)]
    pub kafka_namespace: String,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (idempotent).
    Create {
        topic_name: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        #[command(flatten)]
        kafka: KafkaFlags,
    },
    /// Publish one message to a topic.
    Publish {
        #[arg(long, default_value = "kubeless")]
        topic: String,
        #[arg(long)]
        data: String,
        /// Message key (Kubeless sent none).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        kafka: KafkaFlags,
    },
}

pub async fn main(cli: Cli) -> ExitCode {
    crate::app::install_crypto_provider();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let props: BTreeMap<String, String> = kubeless_kafka::security_properties(|k| std::env::var(k).ok())?;
    match cli.command {
        Command::Topic(TopicCommand::Create { topic_name, partitions, kafka }) => {
            kubeless_kafka::create_topic(&kafka.brokers, &props, &topic_name, partitions).await?;
            println!("Topic {topic_name} ready ({partitions} partitions).");
        }
        Command::Topic(TopicCommand::Publish { topic, data, key, kafka }) => {
            let publisher = kubeless_kafka::Publisher::new(&kafka.brokers, &props)?;
            let (partition, offset) =
                publisher.publish(&topic, key.as_deref().map(str::as_bytes), data.as_bytes(), &[]).await?;
            println!("Published to {topic} partition {partition} offset {offset}.");
        }
    }
    Ok(())
}
