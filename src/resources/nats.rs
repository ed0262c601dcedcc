//! `NATSTrigger`: Kubeless's NATS trigger (same shape as KafkaTrigger). Parsed and validated here;
//! its source is not part of this build yet.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::delivery::DeliverySpec;
use super::status::TriggerStatus;
use super::validate::{check_object_name, check_required, check_selector, Errors, FieldError};

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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NATSTriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_selector: Option<LabelSelector>,
    /// A subject; wildcards allowed.
    #[serde(default)]
    pub topic: String,
    /// Server URL; default: env `NATS_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

impl NATSTrigger {
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        match &self.spec.function_selector {
            Some(sel) => check_selector(&mut errors, "spec.functionSelector", sel),
            None => errors.push("spec.functionSelector", "is required"),
        }
        check_required(&mut errors, "spec.topic", &self.spec.topic);
        if self.spec.topic.contains(char::is_whitespace) {
            errors.push("spec.topic", format!("{:?} is not a NATS subject (no spaces allowed)", self.spec.topic));
        }
        self.spec.delivery.clone().unwrap_or_default().resolve(&mut errors, "spec.delivery");
        errors.into_result(())
    }
}
