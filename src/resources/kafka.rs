//! `KafkaTrigger`: one Kafka topic (or several) feeding every Function its selector matches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::delivery::{DeadLetterTarget, DeliveryPolicy, DeliverySpec};
use super::nats::SecretRef;
use super::status::TriggerStatus;
use super::validate::{check_brokers, check_object_name, check_selector, check_topic, Errors, FieldError};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeless.io",
    version = "v1beta1",
    kind = "KafkaTrigger",
    namespaced,
    status = "TriggerStatus",
    derive = "PartialEq"
)]
#[kube(doc = "Delivers every message of a Kafka topic to each Function the selector matches.")]
#[kube(printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".spec.topic"}"#)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaTriggerSpec {
    /// Selects the Functions to deliver to (Kubeless: `matchLabels`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_selector: Option<LabelSelector>,
    /// The topic (Kubeless).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub topic: Option<String>,
    /// More topics, beside or instead of `topic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// Consumer group id for every selected function; default `<ns>_<trigger>_<function>_<topic>`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub consumer_group: Option<String>,
    /// `host:port[,host:port…]`; default: env `KAFKA_BROKERS`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub brokers: Option<String>,
    /// Credentials of this trigger's own: a Secret in its namespace with `username` and
    /// `password` (SASL; `mechanism` PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), `ca.crt`, `tls.crt` and
    /// `tls.key`, or `tls: "true"`. Used instead of the cluster's Kafka credentials, which go only
    /// to the cluster's own brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SecretRef>,
    /// Where a new consumer group starts: `earliest` (default) or `latest` (Kubeless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_offset: Option<InitialOffsetSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InitialOffsetSpec {
    #[default]
    Earliest,
    Latest,
}

impl KafkaTrigger {
    /// Every topic, `topic` first, without repeats.
    pub fn topics(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.spec.topic.iter().chain(self.spec.topics.iter().flatten()) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

    /// Checks every field; on success returns the resolved delivery policy.
    pub fn validate(&self) -> Result<DeliveryPolicy, Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        match &self.spec.function_selector {
            Some(sel) => check_selector(&mut errors, "spec.functionSelector", sel),
            None => errors.push("spec.functionSelector", "is required (e.g. matchLabels: {function: my-fn})"),
        }
        if let Some(t) = &self.spec.topic {
            check_topic(&mut errors, "spec.topic", t);
        }
        for (i, t) in self.spec.topics.iter().flatten().enumerate() {
            check_topic(&mut errors, &format!("spec.topics[{i}]"), t);
        }
        if self.topics().is_empty() {
            errors.push("spec.topic", "is required (or list them in spec.topics)");
        }
        if let Some(g) = &self.spec.consumer_group {
            if g.trim().is_empty() {
                errors.push("spec.consumerGroup", "must not be empty when set");
            }
        }
        if let Some(b) = &self.spec.brokers {
            check_brokers(&mut errors, "spec.brokers", b);
        }
        if let Some(auth) = &self.spec.auth {
            check_object_name(&mut errors, "spec.auth.secret", &auth.secret);
        }
        let policy = self.spec.delivery.clone().unwrap_or_default().resolve(&mut errors, "spec.delivery");
        if let Some(DeadLetterTarget::Nats { .. }) = policy.dead_letter {
            errors
                .push("spec.delivery.deadLetter.subject", "is for NATSTrigger; a KafkaTrigger dead-letters to a topic");
        }
        errors.into_result(policy)
    }
}
