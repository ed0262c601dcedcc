//! The librdkafka context of the consumer: lag from statistics, client errors before the first
//! assignment, and the rebalance callbacks that drain and commit revoked partitions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kubeless_connector::{Failure, SourceState};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tracing::{info, warn};

use super::reason_of;
use super::shared::Shared;

pub(super) struct SourceCtx {
    pub(super) shared: Arc<Shared>,
}

impl ClientContext for SourceCtx {
    fn stats(&self, statistics: Statistics) {
        let lag = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.shared.health.set_lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(group = %self.shared.group, error = %error, reason, "Kafka client error.");
        if !self.shared.assigned.load(Ordering::Relaxed) {
            let detail = format!("Kafka group {}: {reason}", self.shared.group);
            self.shared.health.set(SourceState::Failed(Failure::new(reason_of(&error), detail)));
        }
    }
}

impl ConsumerContext for SourceCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.shared.rebalancing.store(true, Ordering::Relaxed);
                let mut inner = self.shared.lock();
                let slots = inner.slots_of(tpl);
                info!(group = %self.shared.group, partitions = tpl.count(), "Partitions revoked: draining before release.");
                inner.release(consumer, &slots, Instant::now() + self.shared.drain_timeout, &self.shared.group);
            }
            Rebalance::Error(err) => warn!(group = %self.shared.group, error = %err, "Rebalance error."),
            Rebalance::Assign(tpl) => self.shared.lock().commit_unsaved(consumer, tpl, &self.shared.group),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.lock().assign(tpl);
            self.shared.assigned.store(true, Ordering::Relaxed);
            self.shared.rebalancing.store(false, Ordering::Relaxed);
            self.shared.health.set(SourceState::Ready);
            info!(group = %self.shared.group, partitions = tpl.count(), "Partitions assigned.");
        }
    }
}
