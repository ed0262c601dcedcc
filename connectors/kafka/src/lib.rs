//! Kafka for the Kubeless trigger broker: a consumer-group source that commits only what was
//! delivered, a dead-letter producer, and the topic helpers the CLI uses.
//!
//! The source runs librdkafka's consumer on a dedicated thread, because partition revocation must
//! block the rebalance until in-flight work for those partitions is finished and committed, and a
//! blocking callback has no place on an async executor.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod dead_letter;
mod properties;
mod source;

pub use admin::{create_topic, delete_topic, list_topics, BulkPublisher, Publisher, TopicError, TopicInfo};
pub use config::{security_properties, InitialOffset, KafkaSourceConfig, SecurityError};
pub use dead_letter::KafkaDeadLetter;
pub use properties::{
    is_security_property, is_sensitive_property, secret_properties, Properties, SecretPropertiesError,
};
pub use source::{creation_reason, run_source, KafkaSourceError};
