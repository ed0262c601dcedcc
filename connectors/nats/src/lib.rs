//! NATS for the Kubeless trigger broker: a core-NATS queue subscription (at-most-once, as NATS
//! itself), or a JetStream durable pull consumer that acknowledges only after delivery and hands
//! retries back to the server as delayed NAKs.

#![forbid(unsafe_code)]

mod admin;
mod config;
mod dead_letter;
mod source;

pub use admin::{connect, create_stream, delete_durable, owned_durables, publish, AdminError};
pub use config::{durable_name, legacy_durable_name, NatsAuth, NatsSourceConfig};
pub use dead_letter::NatsDeadLetter;
pub use source::{run_source, NatsSourceError};
