//! `Function`: Kubeless's function resource. The broker reads its labels (for trigger selectors),
//! its timeout, its Service port and the `kubeless.io/url` annotation.

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::Condition;
use super::validate::{check_object_name, Errors, FieldError};

/// Annotation holding the full URL of a function, winning over the URL template.
pub const URL_ANNOTATION: &str = "kubeless.io/url";
/// Kubeless's finalizer on the Functions its controller managed.
pub const KUBELESS_FINALIZER: &str = "kubeless.io/function";
/// Kubeless's default `spec.timeout`.
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(180);
/// The port Kubeless runtimes listen on when the Service names none.
pub const DEFAULT_FUNCTION_PORT: i32 = 8080;

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeless.io",
    version = "v1beta1",
    kind = "Function",
    namespaced,
    shortname = "fn",
    derive = "PartialEq"
)]
#[kube(doc = "A Kubeless function: code, runtime and the Deployment/Service that run it.")]
#[kube(status = "FunctionStatus")]
#[kube(printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".spec.runtime"}"#)]
#[kube(printcolumn = r#"{"name":"Handler","type":"string","jsonPath":".spec.handler"}"#)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
pub struct FunctionSpec {
    /// `file.function`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handler: String,
    /// The code, or a URL to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// `text`, `base64` or `url`, optionally with `+zip`, `+compressedtar` or `+deps`.
    #[serde(rename = "function-content-type", default, skip_serializing_if = "String::is_empty")]
    pub function_content_type: String,
    /// `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checksum: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    /// Seconds, as a string (Kubeless) or a number. Default 180.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub timeout: Option<IntOrString>,
    /// Contents of the runtime's dependency file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub deps: String,
    /// A full `apps/v1` Deployment merged into the generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub deployment: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
    /// An autoscaling HorizontalPodAutoscaler spec.
    #[serde(rename = "horizontalPodAutoscaler", default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub horizontal_pod_autoscaler: Option<serde_json::Value>,
    /// Kubeless's pre-trigger fields (`type`, `topic`, `schedule`): kept so that installing these
    /// CRDs over Kubeless's does not prune them from stored objects; triggers do this job now.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub legacy_type: String,
    #[serde(rename = "topic", default, skip_serializing_if = "String::is_empty")]
    pub legacy_topic: String,
    #[serde(rename = "schedule", default, skip_serializing_if = "String::is_empty")]
    pub legacy_schedule: String,
}

/// Written by the Function reconciler (Kubernetes mode).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// `Ready`: the Deployment is available; else why not (unknown runtime, bad checksum, a
    /// conflicting object, image pull, crash loop, rolling out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where triggers deliver to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

pub(super) fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

pub(super) fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true})
}

impl Function {
    /// Checks the fields the broker relies on.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        if let Err(e) = timeout_of(&self.spec) {
            errors.0.push(e);
        }
        if let Some(url) = self.metadata.annotations.as_ref().and_then(|a| a.get(URL_ANNOTATION)) {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => errors.push(
                    format!("metadata.annotations.{URL_ANNOTATION}"),
                    format!("{url:?} has scheme {:?}; use http or https", u.scheme()),
                ),
                Err(e) => {
                    errors.push(format!("metadata.annotations.{URL_ANNOTATION}"), format!("{url:?} is not a URL: {e}"))
                }
            }
        }
        if let Some(port) = self.spec.service.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p.first()) {
            if !(1..=65535).contains(&port.port) {
                errors.push("spec.service.ports[0].port", format!("{} is not a TCP port", port.port));
            }
        }
        errors.into_result(())
    }

    /// The per-request timeout from `spec.timeout`.
    /// The `kubeless.io/url` annotation: where the function is reached instead of its Service
    /// (or, in standalone mode, instead of a process the daemon runs).
    pub fn url(&self) -> Option<&str> {
        self.metadata.annotations.as_ref()?.get(URL_ANNOTATION).map(String::as_str)
    }

    /// `spec.timeout` as the runtimes' `FUNC_TIMEOUT` reads it: as written, else Kubeless's 180.
    pub fn func_timeout(&self) -> String {
        match &self.spec.timeout {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => DEFAULT_FUNCTION_TIMEOUT.as_secs().to_string(),
        }
    }

    pub fn timeout(&self) -> Duration {
        timeout_of(&self.spec).unwrap_or(DEFAULT_FUNCTION_TIMEOUT)
    }

    /// The Service port: `spec.service.ports[0].port`, else 8080 (Kubeless).
    pub fn port(&self) -> i32 {
        self.spec
            .service
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .map_or(DEFAULT_FUNCTION_PORT, |p| p.port)
    }
}

fn timeout_of(spec: &FunctionSpec) -> Result<Duration, FieldError> {
    let secs = match &spec.timeout {
        None => return Ok(DEFAULT_FUNCTION_TIMEOUT),
        Some(IntOrString::Int(n)) => i64::from(*n),
        Some(IntOrString::String(s)) if s.trim().is_empty() => return Ok(DEFAULT_FUNCTION_TIMEOUT),
        Some(IntOrString::String(s)) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| FieldError::new("spec.timeout", format!("{s:?} is not a whole number of seconds")))?,
    };
    u64::try_from(secs)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| FieldError::new("spec.timeout", format!("{secs} must be a positive number of seconds")))
}
