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
        // Both become Ingress annotations: a Secret of this namespace only (nginx would take
        // `other-namespace/name`), and origins without anything an annotation value could smuggle.
        for (field, secret) in
            [("spec.basic-auth-secret", &self.spec.basic_auth_secret), ("spec.tls-secret", &self.spec.tls_secret)]
        {
            if !secret.is_empty() {
                check_object_name(&mut errors, field, secret);
            }
        }
        let origin_char = |c: char| c.is_ascii_alphanumeric() || ".-:/*, ".contains(c);
        if !self.spec.cors_domain.chars().all(origin_char) {
            errors.push(
                "spec.cors-domain",
                format!(
                    "{:?} is not a list of origins (e.g. https://example.com, https://*.example.com)",
                    self.spec.cors_domain
                ),
            );
        }
        errors.into_result(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(spec: &str) -> HTTPTrigger {
        serde_yaml::from_str(&format!(
            "apiVersion: kubeless.io/v1beta1\nkind: HTTPTrigger\nmetadata: {{name: web, namespace: ns}}\nspec: {spec}"
        ))
        .expect("HTTPTrigger")
    }

    #[test]
    fn secrets_of_other_namespaces_and_odd_origins_are_refused() {
        assert!(trigger(
            "{function-name: f, basic-auth-secret: users, cors-domain: 'https://a.example, https://*.b.example'}"
        )
        .validate()
        .is_ok());
        let errors = trigger(
            "{function-name: f, basic-auth-secret: other-ns/htpasswd, cors-domain: \"x\\\"\\nmore_set_headers\"}",
        )
        .validate()
        .expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.basic-auth-secret", "spec.cors-domain"]);
    }
}
