//! Topic helpers for the `kubeless topic` commands and the tests: create a topic, publish records.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot create a Kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("creating topic {topic} failed: {reason}")]
    Create { topic: String, reason: String },
    #[error("publishing to topic {topic} failed: {source}")]
    Publish {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

fn client_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers).set("client.id", "kubeless-cli");
    for (k, v) in properties {
        cfg.set(k, v);
    }
    cfg
}

/// Creates a topic; an existing topic is not an error (the call is idempotent).
pub async fn create_topic(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    partitions: i32,
) -> Result<(), TopicError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, properties)
        .create()
        .map_err(|source| TopicError::Client { brokers: brokers.to_string(), source })?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &opts)
        .await
        .map_err(|e| TopicError::Create { topic: topic.to_string(), reason: e.to_string() })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(TopicError::Create { topic: name, reason: code.to_string() }),
        }
    }
    Ok(())
}

/// A producer for `kubeless topic publish` and the tests.
pub struct Publisher {
    producer: FutureProducer,
}

impl Publisher {
    pub fn new(brokers: &str, properties: &BTreeMap<String, String>) -> Result<Self, TopicError> {
        let mut cfg = client_config(brokers, properties);
        cfg.set("linger.ms", "5").set("message.timeout.ms", "30000");
        let producer = cfg.create().map_err(|source| TopicError::Client { brokers: brokers.to_string(), source })?;
        Ok(Self { producer })
    }

    /// Publishes one record and waits for the broker to confirm it.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(i32, i64), TopicError> {
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            hs = hs.insert(Header { key: k, value: Some(*v) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload).headers(hs);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(source, _)| TopicError::Publish { topic: topic.to_string(), source })
    }
}
