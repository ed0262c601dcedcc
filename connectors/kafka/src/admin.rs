//! Topic helpers for the `kubeless topic` commands and the tests: create, delete and list topics,
//! publish one record or many.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
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
    #[error("the metadata request's task failed: {0}")]
    Task(String),
    #[error("deleting topic {topic} failed: {reason}")]
    Delete { topic: String, reason: String },
    #[error("cannot reach Kafka at {brokers}: {source}")]
    Unreachable {
        brokers: String,
        #[source]
        source: KafkaError,
    },
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

/// Creates a topic with `partitions` partitions of `replication` replicas each; an existing topic
/// is not an error (the call is idempotent).
pub async fn create_topic(
    brokers: &str,
    properties: &BTreeMap<String, String>,
    topic: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), TopicError> {
    probe(brokers, properties).await?;
    let admin = admin_client(brokers, properties)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))], &opts)
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

fn admin_client(
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> Result<AdminClient<DefaultClientContext>, TopicError> {
    client_config(brokers, properties)
        .create()
        .map_err(|source| TopicError::Client { brokers: brokers.to_string(), source })
}

/// Deletes a topic.
pub async fn delete_topic(brokers: &str, properties: &BTreeMap<String, String>, topic: &str) -> Result<(), TopicError> {
    probe(brokers, properties).await?;
    let admin = admin_client(brokers, properties)?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .delete_topics(&[topic], &opts)
        .await
        .map_err(|e| TopicError::Delete { topic: topic.to_string(), reason: e.to_string() })?;
    for result in results {
        if let Err((name, code)) = result {
            return Err(TopicError::Delete { topic: name, reason: code.to_string() });
        }
    }
    Ok(())
}

/// One topic as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: usize,
    /// Replicas of the first partition.
    pub replication: usize,
}

/// Every topic (internal ones, starting with `__`, left out), sorted by name.
pub async fn list_topics(brokers: &str, properties: &BTreeMap<String, String>) -> Result<Vec<TopicInfo>, TopicError> {
    let mut topics: Vec<TopicInfo> =
        probe(brokers, properties).await?.into_iter().filter(|t| !t.name.starts_with("__")).collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// Every topic the brokers know, read with `producer`'s connection.
async fn fetch_metadata(producer: &FutureProducer, brokers: &str) -> Result<Vec<TopicInfo>, TopicError> {
    let producer = producer.clone();
    let result = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(10)))
        .await
        .map_err(|e| TopicError::Task(e.to_string()))?;
    let metadata = result.map_err(|source| TopicError::Unreachable { brokers: brokers.to_string(), source })?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| TopicInfo {
            name: t.name().to_string(),
            partitions: t.partitions().len(),
            replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
        })
        .collect())
}

/// Fails fast, naming the brokers, when none answers (librdkafka would otherwise retry until each
/// request or message times out).
async fn probe(brokers: &str, properties: &BTreeMap<String, String>) -> Result<Vec<TopicInfo>, TopicError> {
    let producer: FutureProducer = client_config(brokers, properties)
        .create()
        .map_err(|source| TopicError::Client { brokers: brokers.to_string(), source })?;
    fetch_metadata(&producer, brokers).await
}

/// A producer for many records (`kubeless topic publish --file`): `enqueue` hands a record to
/// librdkafka, waiting while its queue is full, and returns a future of the broker's
/// acknowledgement, so that thousands are in flight at once.
pub struct BulkPublisher {
    producer: FutureProducer,
    topic: String,
}

impl BulkPublisher {
    /// Connects and checks that a broker answers. A record not acknowledged within `timeout`
    /// (librdkafka's `message.timeout.ms`) fails.
    pub async fn connect(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, TopicError> {
        let mut cfg = client_config(brokers, properties);
        cfg.set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", timeout.as_millis().max(1).to_string());
        let producer: FutureProducer =
            cfg.create().map_err(|source| TopicError::Client { brokers: brokers.to_string(), source })?;
        fetch_metadata(&producer, brokers).await?;
        Ok(Self { producer, topic: topic.to_string() })
    }

    /// Queues one record; the returned future resolves when the broker acknowledged it (or it
    /// failed: the error is librdkafka's).
    pub async fn enqueue(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<impl Future<Output = Result<(), String>> + Send + 'static, TopicError> {
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            hs = hs.insert(Header { key: k, value: Some(v) });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).payload(payload).headers(hs);
        if let Some(key) = key {
            record = record.key(key);
        }
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((source, _)) => return Err(TopicError::Publish { topic: self.topic.clone(), source }),
            }
        };
        Ok(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("the producer stopped before the broker answered".to_string()),
            }
        })
    }

    /// Waits (up to `timeout`) for every queued record to be acknowledged or to fail.
    pub async fn flush(&self, timeout: Duration) {
        // Each record's own future reports its outcome; a flush error only means some are still
        // queued, and those futures resolve as failed when the producer is dropped.
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
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
