//! `CronJobTrigger`: Kubeless's scheduled trigger. Parsed and validated here; the scheduler is not
//! part of this build yet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::TriggerStatus;
use super::validate::{check_object_name, check_required, Errors, FieldError};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeless.io",
    version = "v1beta1",
    kind = "CronJobTrigger",
    namespaced,
    status = "TriggerStatus",
    derive = "PartialEq"
)]
#[kube(doc = "Calls a Function on a cron schedule.")]
#[kube(printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#)]
#[kube(printcolumn = r#"{"name":"Function","type":"string","jsonPath":".spec.function-name"}"#)]
pub struct CronJobTriggerSpec {
    #[serde(rename = "function-name", default)]
    pub function_name: String,
    /// Standard 5-field cron.
    #[serde(default)]
    pub schedule: String,
    /// Sent as the JSON body of each call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::function::any_value")]
    pub payload: Option<serde_json::Value>,
}

impl CronJobTrigger {
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        check_required(&mut errors, "spec.function-name", &self.spec.function_name);
        check_required(&mut errors, "spec.schedule", &self.spec.schedule);
        errors.into_result(())
    }
}
