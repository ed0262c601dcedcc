//! `kubeless topic`: Kafka topics, created, deleted and listed straight on the brokers, and
//! publishing to them through the kafka connector's publisher.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::publish::{self, Message, Outcome, Pending, Sink, Source};
use super::table;
use crate::config::DEFAULT_KAFKA_BROKERS;

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
    /// List topics: their names, one per line, as Kubeless printed them (scripts grep them).
    #[command(alias = "ls")]
    List {
        /// A table with each topic's partitions and replication instead.
        #[arg(long)]
        details: bool,
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

fn kafka_props() -> anyhow::Result<BTreeMap<String, String>> {
    Ok(kubeless_kafka::security_properties(|k| std::env::var(k).ok())?.into_inner())
}

fn note_kafka_namespace(k: &KafkaFlags) {
    if k.kafka_namespace.is_some() {
        eprintln!(
            "note: --kafka-namespace is ignored: this CLI talks to the brokers at {} (--brokers, KAFKA_BROKERS)",
            k.brokers
        );
    }
}

/// The setting that named the brokers, for errors (which themselves name the address).
const KAFKA_SETTING: &str = "--brokers (or KAFKA_BROKERS)";

pub async fn run(c: TopicCommand) -> anyhow::Result<()> {
    let props = kafka_props()?;
    match c {
        TopicCommand::Create { topic_name, partitions, replication_factor, kafka } => {
            note_kafka_namespace(&kafka);
            kubeless_kafka::create_topic(&kafka.brokers, &props, &topic_name, partitions, replication_factor)
                .await
                .context(KAFKA_SETTING)?;
            eprintln!("Topic {topic_name} ready ({partitions} partitions, replication {replication_factor}).");
        }
        TopicCommand::Delete { topic_name, kafka } => {
            note_kafka_namespace(&kafka);
            kubeless_kafka::delete_topic(&kafka.brokers, &props, &topic_name).await.context(KAFKA_SETTING)?;
            eprintln!("Topic {topic_name} deleted.");
        }
        TopicCommand::List { details, kafka } => {
            note_kafka_namespace(&kafka);
            let topics = kubeless_kafka::list_topics(&kafka.brokers, &props).await.context(KAFKA_SETTING)?;
            if details {
                let rows: Vec<Vec<String>> = topics
                    .iter()
                    .map(|t| vec![t.name.clone(), t.partitions.to_string(), t.replication.to_string()])
                    .collect();
                print!("{}", table::render(&["NAME", "PARTITIONS", "REPLICATION"], &rows));
            } else {
                for t in &topics {
                    println!("{}", t.name);
                }
            }
        }
        TopicCommand::Publish { topic, input, kafka } => {
            note_kafka_namespace(&kafka);
            let source = Source::open(&input, Vec::new()).await?;
            let publisher = kubeless_kafka::BulkPublisher::connect(&kafka.brokers, &props, &topic, input.timeout)
                .await
                .context(KAFKA_SETTING)?;
            let headers = input.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
            let sink = KafkaSink { publisher, headers, timeout: input.timeout };
            let target = format!("Kafka topic {topic} at {}", kafka.brokers);
            publish::publish(sink, source, &input, &target).await?;
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}

/// Kafka through librdkafka: every record acknowledged on its own.
pub struct KafkaSink {
    pub publisher: kubeless_kafka::BulkPublisher,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timeout: Duration,
}

impl Sink for KafkaSink {
    async fn send(&mut self, msg: Message) -> Result<Option<Pending>, String> {
        let delivery =
            self.publisher.enqueue(msg.key.as_deref(), &msg.value, &self.headers).await.map_err(|e| e.to_string())?;
        Ok(Some(Box::pin(async move {
            match delivery.await {
                Ok(()) => Outcome::acked(1),
                Err(e) => Outcome::failed(1, e),
            }
        })))
    }

    async fn finish(&mut self) -> Option<Pending> {
        self.publisher.flush(self.timeout).await;
        None
    }
}
