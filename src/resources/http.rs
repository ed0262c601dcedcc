//! `HTTPTrigger`: Kubeless's Ingress trigger. Parsed and validated here; it carries no messages
//! through the broker, and its Ingress reconciler is not part of this build yet.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::TriggerStatus;
use super::validate::{check_object_name, check_required, Errors, FieldError};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeless.io",
    version = "v1beta1",
    kind = "HTTPTrigger",
    namespaced,
    status = "TriggerStatus",
    derive = "PartialEq"
)]
#[kube(doc = "Exposes a Function through an Ingress.")]
#[kube(printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host-name"}"#)]
#[kube(printcolumn = r#"{"name":"Function","type":"string","jsonPath":".spec.function-name"}"#)]
#[kube(
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[kube(
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
#[kube(printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#)]
pub struct HTTPTriggerSpec {
    #[serde(rename = "function-name", default)]
    pub function_name: String,
    #[serde(rename = "host-name", default, skip_serializing_if = "String::is_empty")]
    pub host_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    #[serde(rename = "tls-secret", default, skip_serializing_if = "String::is_empty")]
    pub tls_secret: String,
    #[serde(rename = "basic-auth-secret", default, skip_serializing_if = "String::is_empty")]
    pub basic_auth_secret: String,
    /// nginx, traefik or kong.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "cors-enable", default, skip_serializing_if = "std::ops::Not::not")]
    pub cors_enable: bool,
    /// Origins allowed when `cors-enable` is set (Kubeless's `corsDomain`; kept so that installing
    /// this CRD over Kubeless's does not prune it).
    #[serde(rename = "cors-domain", default, skip_serializing_if = "String::is_empty")]
    pub cors_domain: String,
    /// Fields of Kubeless's older in-tree HTTPTrigger, kept so that stored objects are not pruned.
    #[serde(rename = "route-name", default, skip_serializing_if = "String::is_empty")]
    pub route_name: String,
    #[serde(rename = "ingress-enabled", default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::function::any_object")]
    pub service: Option<serde_json::Value>,
}

impl HTTPTrigger {
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        check_object_name(&mut errors, "metadata.name", self.metadata.name.as_deref().unwrap_or_default());
        check_required(&mut errors, "spec.function-name", &self.spec.function_name);
        if !matches!(self.spec.gateway.as_str(), "" | "nginx" | "traefik" | "kong") {
            errors
                .push("spec.gateway", format!("{:?} is not a gateway (use nginx, traefik or kong)", self.spec.gateway));
        }
        errors.into_result(())
    }
}
