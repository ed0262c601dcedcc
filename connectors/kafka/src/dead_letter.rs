//! Dead letters written to a Kafka topic, with headers naming why and where from.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use kubeless_connector::{DeadLetter, DeadLetterError, DeadLetterSink};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// A write that librdkafka has not confirmed within this time fails, and the caller retries it;
/// the original message stays uncommitted meanwhile.
const DEAD_LETTER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes dead letters to one topic. Shared by every delivery of one consumer.
pub struct KafkaDeadLetter {
    producer: FutureProducer,
    brokers: String,
    topic: String,
}

impl KafkaDeadLetter {
    pub fn new(brokers: &str, topic: &str, properties: &BTreeMap<String, String>) -> Result<Self, KafkaError> {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", brokers)
            .set("client.id", "kubeless-broker-dead-letter")
            .set("acks", "all")
            .set("message.timeout.ms", DEAD_LETTER_WRITE_TIMEOUT.as_millis().to_string());
        for (k, v) in properties {
            cfg.set(k, v);
        }
        Ok(Self { producer: cfg.create()?, brokers: brokers.to_string(), topic: topic.to_string() })
    }
}

/// Header names written on every dead letter, beside the original message's own headers.
pub mod headers {
    pub const REASON: &str = "kubeless-dead-letter-reason";
    pub const STATUS: &str = "kubeless-dead-letter-status";
    pub const ATTEMPTS: &str = "kubeless-dead-letter-attempts";
    pub const ERROR: &str = "kubeless-dead-letter-error";
    pub const TOPIC: &str = "kubeless-original-topic";
    pub const PARTITION: &str = "kubeless-original-partition";
    pub const OFFSET: &str = "kubeless-original-offset";
    pub const TRIGGER: &str = "kubeless-trigger";
    pub const FUNCTION: &str = "kubeless-function";
}

impl DeadLetterSink for KafkaDeadLetter {
    fn describe(&self) -> String {
        format!("kafka topic {} on {}", self.topic, self.brokers)
    }

    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            let msg = letter.message;
            let status = letter.status.map(|s| s.to_string()).unwrap_or_default();
            let attempts = letter.attempts.to_string();
            let partition = msg.origin.partition.to_string();
            let offset = msg.origin.offset.to_string();
            let mut hs = OwnedHeaders::new_with_capacity(msg.headers.len() + 9);
            for (k, v) in &msg.headers {
                hs = hs.insert(Header { key: k, value: Some(v.as_ref()) });
            }
            for (key, value) in [
                (headers::REASON, letter.reason.as_str()),
                (headers::STATUS, &status),
                (headers::ATTEMPTS, &attempts),
                (headers::ERROR, letter.error),
                (headers::TOPIC, &msg.origin.source),
                (headers::PARTITION, &partition),
                (headers::OFFSET, &offset),
                (headers::TRIGGER, letter.trigger),
                (headers::FUNCTION, letter.function),
            ] {
                hs = hs.insert(Header { key, value: Some(value) });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).payload(msg.payload.as_ref()).headers(hs);
            if let Some(key) = &msg.key {
                record = record.key(key.as_ref());
            }
            self.producer
                .send(record, DEAD_LETTER_WRITE_TIMEOUT)
                .await
                .map(|_| ())
                .map_err(|(err, _)| DeadLetterError::WriteFailed { target: self.describe(), reason: err.to_string() })
        })
    }
}
