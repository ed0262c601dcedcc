//! The unit of work that flows from a source to the dispatcher.

use std::sync::Arc;

use bytes::Bytes;

use crate::{AckHandle, Charge, ConsumerBudget};

/// Where a message came from: enough to name it in headers, logs and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic, subject or stream. Shared, so a busy partition does not allocate a name per message.
    pub source: Arc<str>,
    /// Partition (Kafka) or shard index; 0 where the bus has no such notion.
    pub partition: i32,
    /// Offset (Kafka) or sequence (JetStream, Kinesis).
    pub offset: i64,
    /// Broker timestamp in milliseconds since the epoch, when the broker gives one.
    pub timestamp_ms: Option<i64>,
}

/// One record to deliver.
#[derive(Debug)]
pub struct Message {
    pub payload: Bytes,
    pub key: Option<Bytes>,
    /// Broker headers, forwarded to the function where they are valid HTTP headers.
    pub headers: Vec<(String, Bytes)>,
    pub origin: Origin,
    /// Delivery attempt as the broker counts it (1 for the first delivery; JetStream counts
    /// redeliveries), so retry limits hold across redeliveries.
    pub attempt: u32,
    pub ack: AckHandle,
    /// Its bytes, charged to its consumer's part of the memory budget until it is dropped.
    pub charge: Charge,
}

impl Message {
    /// The bytes it holds: payload, key and headers.
    pub fn size(&self) -> usize {
        self.payload.len()
            + self.key.as_ref().map_or(0, |k| k.len())
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    /// Charged to `budget` until dropped.
    pub fn charged(mut self, budget: &ConsumerBudget) -> Self {
        self.charge = budget.charge(self.size());
        self
    }
}
