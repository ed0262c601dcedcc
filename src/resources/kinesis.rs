//! `KinesisTrigger`: Kubeless's Kinesis trigger, one stream to one function. Parsed and validated
//! here; its source is not part of this build yet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::delivery::{DeliveryPolicy, DeliverySpec};
use super::status::TriggerStatus;
use super::validate::{check_object_name, check_required, Errors, FieldError};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeless.io",
    version = "v1beta1",
    kind = "KinesisTrigger",
    namespaced,
    status = "TriggerStatus",
    derive = "PartialEq"
)]
#[kube(doc = "Delivers every record of a Kinesis stream to one Function.")]
#[kube(printcolumn = r#"{"name":"Stream","type":"string","jsonPath":".spec.stream"}"#)]
#[kube(printcolumn = r#"{"name":"Function","type":"string","jsonPath":".spec.function-name"}"#)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.lag"}"#)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
#[serde(deny_unknown_fields)]
pub struct KinesisTriggerSpec {
    #[serde(rename = "function-name", default)]
    pub function_name: String,
    #[serde(rename = "aws-region", default)]
    pub aws_region: String,
    #[serde(default)]
    pub stream: String,
    /// Secret with keys `aws_access_key_id` and `aws_secret_access_key`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub secret: Option<String>,
    /// One shard id; without it, every shard.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub shard: Option<String>,
    /// Endpoint override, for emulators.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub endpoint: Option<String>,
    /// Where a shard without a checkpoint starts: `LATEST` (default, as Kubeless),
    /// `TRIM_HORIZON`, or `AT_TIMESTAMP` with `timestamp`.
    #[serde(rename = "startingPosition", default, skip_serializing_if = "Option::is_none")]
    pub starting_position: Option<StartingPositionSpec>,
    /// RFC 3339 time for `AT_TIMESTAMP`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StartingPositionSpec {
    #[default]
    Latest,
    TrimHorizon,
    AtTimestamp,
}

impl KinesisTrigger {
    /// `spec.timestamp` in seconds since the epoch, for `AT_TIMESTAMP`.
    pub fn timestamp_secs(&self) -> Option<i64> {
        self.spec.timestamp.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp())
    }

    pub fn validate(&self) -> Result<DeliveryPolicy, Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        check_required(&mut errors, "spec.function-name", &self.spec.function_name);
        check_required(&mut errors, "spec.stream", &self.spec.stream);
        check_required(&mut errors, "spec.aws-region", &self.spec.aws_region);
        let region = &self.spec.aws_region;
        if !region.is_empty() && !region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            errors.push("spec.aws-region", format!("{region:?} is not an AWS region (e.g. us-west-2)"));
        }
        if let Some(e) = &self.spec.endpoint {
            if !e.parse::<url::Url>().is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                errors.push("spec.endpoint", format!("{e:?} is not an http(s) URL"));
            }
        }
        if let Some(t) = &self.spec.timestamp {
            if self.timestamp_secs().is_none() {
                errors.push("spec.timestamp", format!("{t:?} is not an RFC 3339 time (e.g. 2026-11-21T10:00:00Z)"));
            }
        }
        if self.spec.starting_position == Some(StartingPositionSpec::AtTimestamp) && self.spec.timestamp.is_none() {
            errors.push("spec.timestamp", "is required with startingPosition AT_TIMESTAMP");
        }
        let policy = self.spec.delivery.clone().unwrap_or_default().resolve(&mut errors, "spec.delivery");
        if policy.dead_letter.is_some() {
            errors.push("spec.delivery.deadLetter", "is not supported for KinesisTrigger yet");
        }
        errors.into_result(policy)
    }
}
