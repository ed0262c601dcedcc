//! Trigger status: what `kubectl get kafkatriggers` shows.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Status written back to a trigger (Kubernetes mode).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Messages behind the end of the log, over every function and partition (Kafka, Kinesis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// The consumer of each selected function, as the broker writing the status sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionConsumer>,
    /// CronJobTrigger: the last tick fired (written by the scheduler, claimed once per tick).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
}

/// A standard Kubernetes-style condition (`Ready` with a reason a person can act on).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

impl Condition {
    /// The `Ready` condition, keeping `previous`'s transition time while its status holds (else
    /// `now`).
    pub fn ready(status: &str, reason: &str, message: String, previous: &[Condition], now: &str) -> Self {
        let since = previous
            .iter()
            .find(|c| c.type_ == "Ready")
            .filter(|c| c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        Self {
            type_: "Ready".to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: Some(since),
        }
    }
}

/// One selected function's consumer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionConsumer {
    pub name: String,
    /// `Starting`, `Ready`, or `Failed: <why>`.
    pub state: String,
    /// Why it failed, in a word: the reasons are listed in docs/operations.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Consumer group, durable, checkpoint key or schedule.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}
