//! What an HTTPTrigger becomes: a `networking.k8s.io/v1` Ingress routing `host-name` and `path`
//! to its Function's Service, with TLS, basic auth, CORS and the gateway's class and annotations,
//! as Kubeless's http-trigger controller made them (`pkg/utils/k8sutil.go CreateIngress`). Pure.
//!
//! Differences from Kubeless, on purpose:
//! - `networking.k8s.io/v1` with `pathType: Prefix` (Kubeless wrote `extensions/v1beta1`, gone
//!   since Kubernetes 1.22);
//! - the gateway is `spec.ingressClassName` (the `kubernetes.io/ingress.class` annotation is
//!   deprecated, and the API server refuses both together); an annotation the user set wins;
//! - the backend is the Service's port (Kubeless used its *target* port, which routes only when the
//!   two are equal);
//! - `tls: true` also names a cert-manager ClusterIssuer when one is configured, beside Kubeless's
//!   `kubernetes.io/tls-acme` (which cert-manager's ingress-shim honours with its default issuer).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::objects::{CREATED_BY, LAST_APPLIED};
use crate::resources::{Function, HTTPTrigger};

const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Why an HTTPTrigger cannot become an Ingress.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngressError {
    #[error("spec.tls-secret and spec.tls (ACME) are both set; choose one")]
    BothTls,
    #[error("spec.basic-auth-secret is not supported with the kong gateway (use a KongPlugin and the konghq.com/plugins annotation)")]
    KongBasicAuth,
}

/// An HTTPTrigger's Ingress, routing to `function`'s Service and owned by `owner`.
pub fn build_ingress(
    trigger: &HTTPTrigger,
    function: &Function,
    acme_cluster_issuer: Option<&str>,
    owner: &OwnerReference,
) -> Result<Ingress, IngressError> {
    let spec = &trigger.spec;
    let gateway = spec.gateway.as_str();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    if gateway == "nginx" {
        annotations.insert("nginx.ingress.kubernetes.io/rewrite-target".to_string(), "/".to_string());
    }
    let user: BTreeMap<String, String> = trigger.metadata.annotations.clone().unwrap_or_default();
    annotations.extend(user.into_iter().filter(|(k, _)| k != LAST_APPLIED));
    let prefix = if gateway == "nginx" { "nginx.ingress.kubernetes.io" } else { "ingress.kubernetes.io" };
    if spec.cors_enable {
        annotations.insert(format!("{prefix}/enable-cors"), "true".to_string());
        if !spec.cors_domain.is_empty() {
            annotations.insert(format!("{prefix}/cors-allow-origin"), spec.cors_domain.clone());
        }
    }
    if !spec.basic_auth_secret.is_empty() {
        if gateway == "kong" {
            return Err(IngressError::KongBasicAuth);
        }
        annotations.insert(format!("{prefix}/auth-type"), "basic".to_string());
        annotations.insert(format!("{prefix}/auth-secret"), spec.basic_auth_secret.clone());
    }
    if spec.tls && !spec.tls_secret.is_empty() {
        return Err(IngressError::BothTls);
    }
    let hosts = Some(vec![spec.host_name.clone()]).filter(|_| !spec.host_name.is_empty());
    let name = trigger.metadata.name.clone().unwrap_or_default();
    let tls = if !spec.tls_secret.is_empty() {
        Some(vec![IngressTLS { hosts: hosts.clone(), secret_name: Some(spec.tls_secret.clone()) }])
    } else if spec.tls {
        annotations.insert("kubernetes.io/tls-acme".to_string(), "true".to_string());
        annotations.insert("nginx.ingress.kubernetes.io/ssl-redirect".to_string(), "true".to_string());
        if let Some(issuer) = acme_cluster_issuer {
            annotations.insert("cert-manager.io/cluster-issuer".to_string(), issuer.to_string());
        }
        Some(vec![IngressTLS { hosts: hosts.clone(), secret_name: Some(format!("{name}-tls")) }])
    } else {
        None
    };
    let class =
        (!gateway.is_empty() && !annotations.contains_key(INGRESS_CLASS_ANNOTATION)).then(|| gateway.to_string());
    let mut labels = trigger.metadata.labels.clone().unwrap_or_default();
    labels.insert(CREATED_BY.0.to_string(), CREATED_BY.1.to_string());
    let path = format!("/{}", spec.path.trim_start_matches('/'));
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: function.metadata.name.clone().unwrap_or_default(),
            port: Some(ServiceBackendPort { number: Some(function.port()), name: None }),
        }),
        resource: None,
    };
    Ok(Ingress {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: trigger.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: class,
            rules: Some(vec![IngressRule {
                host: Some(spec.host_name.clone()).filter(|h| !h.is_empty()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath { path: Some(path), path_type: "Prefix".to_string(), backend }],
                }),
            }]),
            tls,
            default_backend: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(spec: &str, annotations: &str) -> HTTPTrigger {
        serde_yaml::from_str(&format!(
            "metadata: {{name: web, namespace: ns, labels: {{app: shop}}, annotations: {annotations}}}\nspec: {spec}"
        ))
        .expect("trigger")
    }

    fn function() -> Function {
        serde_yaml::from_str(
            "metadata: {name: get-python, namespace: ns}\nspec: {service: {ports: [{port: 9000, targetPort: 8080}]}}",
        )
        .expect("function")
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            kind: "HTTPTrigger".to_string(),
            name: "web".to_string(),
            uid: "u".to_string(),
            ..OwnerReference::default()
        }
    }

    fn json(i: &Ingress) -> serde_json::Value {
        serde_json::to_value(i).expect("json")
    }

    #[test]
    fn an_nginx_trigger_with_tls_basic_auth_and_cors_is_the_ingress_ingress_nginx_expects() {
        let t = trigger(
            "{function-name: get-python, host-name: example.com, path: echo, tls-secret: cert, basic-auth-secret: users, gateway: nginx, cors-enable: true, cors-domain: 'https://a.example'}",
            "{team: a, kubectl.kubernetes.io/last-applied-configuration: '{}'}",
        );
        let i = json(&build_ingress(&t, &function(), None, &owner()).expect("ingress"));
        assert_eq!(i["spec"]["ingressClassName"], "nginx");
        let rule = &i["spec"]["rules"][0];
        assert_eq!(rule["host"], "example.com");
        assert_eq!(rule["http"]["paths"][0]["path"], "/echo");
        assert_eq!(rule["http"]["paths"][0]["pathType"], "Prefix");
        assert_eq!(
            rule["http"]["paths"][0]["backend"]["service"],
            serde_json::json!({"name": "get-python", "port": {"number": 9000}})
        );
        assert_eq!(i["spec"]["tls"], serde_json::json!([{"hosts": ["example.com"], "secretName": "cert"}]));
        let a = &i["metadata"]["annotations"];
        assert_eq!(a["nginx.ingress.kubernetes.io/rewrite-target"], "/");
        assert_eq!(a["nginx.ingress.kubernetes.io/auth-type"], "basic");
        assert_eq!(a["nginx.ingress.kubernetes.io/auth-secret"], "users");
        assert_eq!(a["nginx.ingress.kubernetes.io/enable-cors"], "true");
        assert_eq!(a["nginx.ingress.kubernetes.io/cors-allow-origin"], "https://a.example");
        assert_eq!(a["team"], "a");
        assert!(a.get(LAST_APPLIED).is_none());
        assert_eq!(i["metadata"]["labels"], serde_json::json!({"app": "shop", "created-by": "kubeless"}));
    }

    #[test]
    fn acme_tls_names_the_secret_and_issuer_and_the_gateways_differ_only_where_they_must() {
        let t = trigger("{function-name: get-python, host-name: example.com, tls: true, gateway: traefik, basic-auth-secret: users}", "{}");
        let i = json(&build_ingress(&t, &function(), Some("letsencrypt"), &owner()).expect("ingress"));
        assert_eq!(i["spec"]["ingressClassName"], "traefik");
        assert_eq!(i["spec"]["tls"][0]["secretName"], "web-tls");
        let a = &i["metadata"]["annotations"];
        assert_eq!(a["kubernetes.io/tls-acme"], "true");
        assert_eq!(a["cert-manager.io/cluster-issuer"], "letsencrypt");
        assert_eq!(a["ingress.kubernetes.io/auth-type"], "basic");
        assert!(a.get("nginx.ingress.kubernetes.io/rewrite-target").is_none());
        assert_eq!(i["spec"]["rules"][0]["http"]["paths"][0]["path"], "/");

        let t = trigger("{function-name: get-python, gateway: kong, basic-auth-secret: users}", "{}");
        assert_eq!(build_ingress(&t, &function(), None, &owner()).expect_err("kong"), IngressError::KongBasicAuth);
        let t = trigger("{function-name: get-python, tls: true, tls-secret: cert}", "{}");
        assert_eq!(build_ingress(&t, &function(), None, &owner()).expect_err("both"), IngressError::BothTls);
        // A class annotation set by the user wins: the API server refuses it beside ingressClassName.
        let t = trigger("{function-name: get-python, gateway: nginx}", "{kubernetes.io/ingress.class: internal}");
        let i = json(&build_ingress(&t, &function(), None, &owner()).expect("ingress"));
        assert!(i["spec"]["ingressClassName"].is_null());
        assert_eq!(i["metadata"]["annotations"][INGRESS_CLASS_ANNOTATION], "internal");
    }
}
