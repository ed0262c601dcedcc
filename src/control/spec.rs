//! What one consumer is: a (trigger, function, group) and everything needed to run it, as the index
//! computes it from the resources. `dispatch` runs them and `cron` fires them; neither is named here.

use std::path::PathBuf;
use std::time::Duration;

use kubeless_kafka::KafkaSourceConfig;
use kubeless_kinesis::KinesisSourceConfig;
use kubeless_nats::NatsSourceConfig;

use crate::resources::{ConcurrencyPolicy, DeliveryPolicy};
use crate::resources::{Kind, ObjectRef};

/// The prefix of the URL the index gives a consumer whose function the daemon runs itself (a
/// local function): `local://<namespace>/<name>`; the address is looked up on every attempt.
pub const LOCAL_URL_PREFIX: &str = "local://";

/// The consumer URL of a local function.
pub fn local_url(namespace: &str, name: &str) -> String {
    format!("{LOCAL_URL_PREFIX}{namespace}/{name}")
}

/// Where a consumer's messages come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Kafka(KafkaSourceConfig),
    Nats(NatsSourceConfig),
    Kinesis(KinesisSourceConfig),
    Cron(CronSource),
}

/// A cron trigger's schedule and policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSource {
    pub schedule: String,
    pub timezone: Option<String>,
    /// The JSON body of each tick; none means a GET.
    pub payload: Option<serde_json::Value>,
    pub concurrency: ConcurrencyPolicy,
    pub starting_deadline: Option<Duration>,
    pub state_dir: PathBuf,
}

impl SourceSpec {
    /// The consumer group, or what stands for it: for cron, the schedule.
    pub fn id(&self) -> &str {
        match self {
            Self::Kafka(k) => &k.group_id,
            Self::Nats(n) => &n.group,
            Self::Kinesis(k) => &k.checkpoint_key,
            Self::Cron(c) => &c.schedule,
        }
    }

    pub fn topics(&self) -> Vec<String> {
        match self {
            Self::Kafka(k) => k.topics.clone(),
            Self::Nats(n) => vec![n.subject.clone()],
            Self::Kinesis(k) => vec![k.stream.clone()],
            Self::Cron(_) => Vec::new(),
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        match self {
            Self::Kafka(k) => k.drain_timeout,
            Self::Nats(n) => n.drain_timeout,
            Self::Kinesis(k) => k.drain_timeout,
            Self::Cron(_) => Duration::ZERO,
        }
    }
}

/// One consumer: a (trigger, function, group) and everything needed to run it. Two equal specs
/// mean "nothing changed"; any difference restarts the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The trigger's kind.
    pub kind: Kind,
    /// `namespace/trigger`.
    pub trigger: String,
    pub function: String,
    pub event_namespace: &'static str,
    pub source: SourceSpec,
    pub url: String,
    /// Per-request timeout: `spec.delivery.timeout`, else the Function's `spec.timeout`.
    pub timeout: Duration,
    pub delivery: DeliveryPolicy,
}

impl ConsumerSpec {
    /// Unique among all consumers. A Kinesis trigger's reader is the same reader whichever function
    /// it feeds (its checkpoints are the trigger's): a `function-name` edit replaces it only once
    /// the old one has drained and saved them.
    pub fn key(&self) -> String {
        match &self.source {
            SourceSpec::Kinesis(_) => format!("{}/{}//{}", self.kind, self.trigger, self.source.id()),
            _ => format!("{}/{}/{}/{}", self.kind, self.trigger, self.function, self.source.id()),
        }
    }

    /// The trigger this consumer serves.
    pub fn trigger_ref(&self) -> ObjectRef {
        let (ns, name) = self.trigger.split_once('/').unwrap_or(("", &self.trigger));
        ObjectRef::new(self.kind, ns, name)
    }
}
