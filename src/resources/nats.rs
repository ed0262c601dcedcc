//! `NATSTrigger`: Kubeless's NATS trigger (same shape as KafkaTrigger), plus JetStream.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::delivery::{DeadLetterTarget, DeliveryPolicy, DeliverySpec};
use super::status::TriggerStatus;
use super::validate::{check_object_name, check_required, check_selector, check_subject, Errors, FieldError};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeless.io",
    version = "v1beta1",
    kind = "NATSTrigger",
    namespaced,
    status = "TriggerStatus",
    derive = "PartialEq"
)]
#[kube(doc = "Delivers every message on a NATS subject to each Function the selector matches.")]
#[kube(printcolumn = r#"{"name":"Topic","type":"string","jsonPath":".spec.topic"}"#)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NATSTriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_selector: Option<LabelSelector>,
    /// A subject; wildcards allowed.
    #[serde(default)]
    pub topic: String,
    /// Server URL; default: env `NATS_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub url: Option<String>,
    /// Consume through an existing JetStream stream with a durable consumer (acknowledged after
    /// delivery, survives restarts). Without it: a core-NATS queue subscription (at-most-once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamSpec>,
    /// Credentials from a Secret in the trigger's namespace: key `token`, or `user` and
    /// `password`, or `creds` (the contents of a `.creds` file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SecretRef>,
    /// Require TLS; `caSecret` names a Secret whose `ca.crt` is a CA to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTlsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JetStreamSpec {
    /// The stream (it must exist and capture the trigger's subject).
    pub stream: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    pub secret: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsTlsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub ca_secret: Option<String>,
}

impl NATSTrigger {
    pub fn validate(&self) -> Result<DeliveryPolicy, Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        match &self.spec.function_selector {
            Some(sel) => check_selector(&mut errors, "spec.functionSelector", sel),
            None => errors.push("spec.functionSelector", "is required"),
        }
        check_required(&mut errors, "spec.topic", &self.spec.topic);
        if !self.spec.topic.trim().is_empty() {
            check_subject(&mut errors, "spec.topic", &self.spec.topic);
        }
        if let Some(url) = &self.spec.url {
            if !url.split(',').all(|u| u.trim().parse::<url::Url>().is_ok_and(|u| u.host_str().is_some())) {
                errors.push("spec.url", format!("{url:?} is not a NATS URL (e.g. nats://nats:4222)"));
            }
        }
        if let Some(js) = &self.spec.jetstream {
            let bad = js.stream.is_empty() || js.stream.contains(['.', '*', '>', ' ', '/']);
            if bad {
                errors.push("spec.jetstream.stream", format!("{:?} is not a stream name", js.stream));
            }
        }
        if let Some(a) = &self.spec.auth {
            check_object_name(&mut errors, "spec.auth.secret", &a.secret);
        }
        if let Some(ca) = self.spec.tls.as_ref().and_then(|t| t.ca_secret.as_deref()) {
            check_object_name(&mut errors, "spec.tls.caSecret", ca);
        }
        let policy = self.spec.delivery.clone().unwrap_or_default().resolve(&mut errors, "spec.delivery");
        if let Some(DeadLetterTarget::Kafka { .. }) = policy.dead_letter {
            errors
                .push("spec.delivery.deadLetter.topic", "is for KafkaTrigger; a NATSTrigger dead-letters to a subject");
        }
        errors.into_result(policy)
    }
}
