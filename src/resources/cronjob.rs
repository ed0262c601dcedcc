//! `CronJobTrigger`: Kubeless's scheduled trigger, run by the built-in scheduler (no CronJob pods).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::delivery::{DeliveryPolicy, DeliverySpec};
use super::status::TriggerStatus;
use super::validate::{check_object_name, check_required, Errors, FieldError};
use crate::schedule::{Schedule, ScheduleError};

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
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Last Schedule","type":"date","jsonPath":".status.lastScheduleTime"}"#)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[serde(deny_unknown_fields)]
pub struct CronJobTriggerSpec {
    #[serde(rename = "function-name", default)]
    pub function_name: String,
    /// Standard 5-field cron, or 6 fields with seconds first, or `@hourly`-style macros.
    #[serde(default)]
    pub schedule: String,
    /// Sent as the JSON body of each call (POST); without it each call is a GET, as in Kubeless.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::function::any_value")]
    pub payload: Option<serde_json::Value>,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub timezone: Option<String>,
    /// `Allow` (default): ticks may overlap. `Forbid`: skip a tick while the previous call runs.
    /// `Replace`: cancel the running call and start the new one.
    #[serde(rename = "concurrencyPolicy", default, skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<ConcurrencyPolicy>,
    /// After downtime, a missed tick younger than this still fires (once); unset: any age.
    #[serde(rename = "startingDeadlineSeconds", default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<u64>,
    /// Per-request timeout and retry policy (dead letters are not offered for ticks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    #[default]
    Allow,
    Forbid,
    Replace,
}

impl CronJobTrigger {
    pub fn validate(&self) -> Result<DeliveryPolicy, Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        check_required(&mut errors, "spec.function-name", &self.spec.function_name);
        check_required(&mut errors, "spec.schedule", &self.spec.schedule);
        if !self.spec.schedule.trim().is_empty() {
            match Schedule::parse(&self.spec.schedule, self.spec.timezone.as_deref()) {
                Ok(_) => {}
                Err(e @ ScheduleError::UnknownTimezone(_)) => errors.push("spec.timezone", e.to_string()),
                Err(e) => errors.push("spec.schedule", e.to_string()),
            }
        }
        let delivery = self.spec.delivery.clone().unwrap_or_default();
        if delivery.dead_letter.is_some() {
            errors.push(
                "spec.delivery.deadLetter",
                "is not supported for CronJobTrigger (a failed tick is logged and counted)",
            );
        }
        let policy = delivery.resolve(&mut errors, "spec.delivery");
        errors.into_result(policy)
    }
}
