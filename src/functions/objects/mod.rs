//! What a Function becomes: its ConfigMap, Service, Deployment and HorizontalPodAutoscaler, built
//! as Kubeless's controller built them (`pkg/utils/kubelessutil.go`), from the Function and the
//! `kubeless-config` settings. Pure: the reconciler applies what this returns.
//!
//! Where Kubeless went wrong this differs, each on purpose:
//! - the pod template carries a checksum of the code, so any code or dependency change rolls the
//!   Deployment (Kubeless rolled only when the `prepare` command happened to change);
//! - `spec.checksum` is checked here, before anything is created, as well as in `prepare`;
//! - env vars, mounts, ports and volumes are kept unique by name, the generated ones winning, so
//!   server-side apply never sees a duplicate key;
//! - a user's `strategy` and `replicas` are kept (Kubeless overwrote the one and, on update,
//!   reset the other); with an HPA, or without `replicas`, the field is left to the HPA;
//! - `kubectl`'s last-applied annotation is not copied onto the children.

mod autoscaler;
mod content;
mod deployment;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{json, Value};

use self::autoscaler::build_autoscaler;
pub use self::content::{code_of, Code};
use self::content::{content_type, verify_checksum};
pub use self::deployment::split_handler;
use self::deployment::{build_deployment, merge_template, PodInputs};
use super::catalogue::{Catalogue, CatalogueError, Resolved};
use crate::resources::{Function, DEFAULT_FUNCTION_PORT};

/// The label every object Kubeless made carries; an object without it is never touched.
pub const CREATED_BY: (&str, &str) = ("created-by", "kubeless");
/// The pod annotation holding the checksum of the function's code, dependencies and handler.
pub const CODE_CHECKSUM_ANNOTATION: &str = "kubeless.io/code-checksum";
/// Where the code and its installed dependencies live in the pod (an emptyDir).
pub const RUNTIME_DIR: &str = "/kubeless";
/// Where the ConfigMap is mounted for `prepare`.
const SOURCE_DIR: &str = "/src";
/// Where an init phase's secrets are mounted (Kubeless's path).
const SECRETS_DIR: &str = "/var/run/secrets/kubeless";
/// The default `provision-image`: it needs sh, base64, sha256sum, unzip, tar and wget or curl.
pub const DEFAULT_PROVISION_IMAGE: &str = "alpine:3.20";
/// kubectl's bookkeeping annotation, never copied onto what a resource becomes.
pub(crate) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The `kubeless-config` ConfigMap's settings that shape a Function's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    pub catalogue: Catalogue,
    /// `provision-image`: runs `prepare`.
    pub provision_image: String,
    /// `provision-image-secret`, `builder-image-secret`: pull secrets for every function pod.
    pub image_pull_secrets: Vec<String>,
    /// `deployment`: a Deployment whose fields fill in what `spec.deployment` leaves unset.
    pub deployment_template: Option<Value>,
    /// `service-type`: the Service type when `spec.service` names none.
    pub service_type: Option<String>,
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            catalogue: Catalogue::builtin(),
            provision_image: DEFAULT_PROVISION_IMAGE.to_string(),
            image_pull_secrets: Vec::new(),
            deployment_template: None,
            service_type: None,
        }
    }
}

/// A `kubeless-config` key that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl FunctionConfig {
    /// Reads the keys of a `kubeless-config` ConfigMap; a key left out keeps its default.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let get = |key: &str| data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let Some(images) = get("runtime-images") {
            config.catalogue =
                Catalogue::parse(images).map_err(|e| ConfigError { key: "runtime-images", message: e.to_string() })?;
        }
        if let Some(image) = get("provision-image") {
            config.provision_image = image.to_string();
        }
        for key in ["provision-image-secret", "builder-image-secret"] {
            if let Some(secret) = get(key) {
                config.image_pull_secrets.push(secret.to_string());
            }
        }
        if let Some(template) = get("deployment") {
            let value: Value = serde_yaml::from_str(template)
                .map_err(|e| ConfigError { key: "deployment", message: format!("not YAML or JSON: {e}") })?;
            serde_json::from_value::<Deployment>(value.clone())
                .map_err(|e| ConfigError { key: "deployment", message: format!("not a Deployment: {e}") })?;
            config.deployment_template = Some(value);
        }
        if let Some(kind) = get("service-type") {
            config.service_type = Some(kind.to_string());
        }
        Ok(config)
    }
}

/// Why a Function's objects cannot be built; each names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BuildError {
    #[error(transparent)]
    Runtime(#[from] CatalogueError),
    #[error("spec.handler {0:?} must be <file>.<function>, e.g. handler.hello")]
    Handler(String),
    #[error("spec.function is empty and spec.deployment names no image: there is nothing to run")]
    NoCode,
    #[error("spec.function-content-type {0:?} is not text, base64 or url (optionally +zip, +compressedtar or +deps)")]
    ContentType(String),
    #[error("spec.checksum {0:?} is not sha256:<64 hex digits>")]
    ChecksumFormat(String),
    #[error("spec.checksum is {expected} but spec.function's sha256 is sha256:{actual}; not deployed")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("spec.function is not valid base64: {0}")]
    Base64(String),
    #[error("spec.deployment is not a Deployment: {0}")]
    Deployment(String),
    #[error("spec.horizontalPodAutoscaler: {0}")]
    Autoscaler(String),
}

impl BuildError {
    /// The `Ready` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Runtime(_) => "UnknownRuntime",
            Self::ChecksumMismatch { .. } => "ChecksumMismatch",
            _ => "InvalidSpec",
        }
    }
}

/// A Function's objects, ready to apply.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
    /// The HPA (`autoscaling/v2` shape, also valid as `v2beta2`), without `apiVersion`/`kind`.
    pub autoscaler: Option<Value>,
}

fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_string(), value: Some(value.into()), value_from: None }
}

/// The labels of every child: the Function's, `function: <name>` and `created-by: kubeless`.
pub fn child_labels(function: &Function) -> BTreeMap<String, String> {
    let mut labels = function.metadata.labels.clone().unwrap_or_default();
    labels.insert("function".to_string(), name_of(function).to_string());
    labels.insert(CREATED_BY.0.to_string(), CREATED_BY.1.to_string());
    labels
}

fn name_of(function: &Function) -> &str {
    function.metadata.name.as_deref().unwrap_or_default()
}

fn meta(function: &Function, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: function.metadata.name.clone(),
        namespace: function.metadata.namespace.clone(),
        labels: Some(child_labels(function)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The port the function's container listens on: `spec.service.ports[0].targetPort`, else 8080.
fn target_port(function: &Function) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let first = function.spec.service.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p.first());
    match first {
        None => DEFAULT_FUNCTION_PORT,
        Some(port) => match &port.target_port {
            Some(IntOrString::Int(n)) => n.to_owned(),
            Some(IntOrString::String(s)) => s.parse().unwrap_or(port.port),
            None => port.port,
        },
    }
}

/// Builds a Function's objects, each owned by `owner`.
pub fn build(function: &Function, config: &FunctionConfig, owner: &OwnerReference) -> Result<Children, BuildError> {
    let ct = content_type(&function.spec.function_content_type)?;
    let checksum = verify_checksum(function, &ct)?;
    let mut spec_deployment = match &function.spec.deployment {
        Some(v) if !v.is_null() => v.clone(),
        _ => json!({}),
    };
    serde_json::from_value::<Deployment>(spec_deployment.clone()).map_err(|e| BuildError::Deployment(e.to_string()))?;
    if let Some(template) = &config.deployment_template {
        merge_template(&mut spec_deployment, template);
    }
    let mut deployment: Deployment =
        serde_json::from_value(spec_deployment).map_err(|e| BuildError::Deployment(e.to_string()))?;
    let user_image = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .filter(|i| !i.is_empty());
    let has_code = !function.spec.function.is_empty();
    if !has_code && user_image.is_none() {
        return Err(BuildError::NoCode);
    }
    // A Function with its own image needs no catalogue entry (Kubeless's custom runtimes).
    let resolved = match &user_image {
        Some(_) => config.catalogue.resolve(&function.spec.runtime).ok(),
        None => Some(config.catalogue.resolve(&function.spec.runtime)?),
    };
    let handler = if has_code { Some(split_handler(&function.spec.handler)?) } else { None };
    let file_name = handler.map(|(module, _)| match (&resolved, ct.plain) {
        (Some(r), true) => format!("{module}{}", r.info.file_name_suffix),
        _ => module.to_string(),
    });

    let config_map = build_config_map(function, owner, file_name.as_deref(), resolved.as_ref());
    let service = build_service(function, config, owner);
    let pod = PodInputs { ct: &ct, checksum: checksum.as_deref(), file_name: file_name.as_deref(), handler, resolved };
    build_deployment(function, config, owner, &mut deployment, user_image.is_some(), &pod);
    let autoscaler = build_autoscaler(function, owner)?;
    if autoscaler.is_some() {
        // The HPA owns the replica count: applying one (from spec.deployment or the template)
        // would undo every scaling on each reconcile, as Kubeless documented.
        if let Some(spec) = deployment.spec.as_mut() {
            spec.replicas = None;
        }
    }
    Ok(Children { config_map, service, deployment, autoscaler })
}

fn build_config_map(
    function: &Function,
    owner: &OwnerReference,
    file_name: Option<&str>,
    resolved: Option<&Resolved<'_>>,
) -> ConfigMap {
    let mut data = BTreeMap::new();
    if let Some(file) = file_name {
        data.insert("handler".to_string(), function.spec.handler.clone());
        data.insert(file.to_string(), function.spec.function.clone());
        if let Some(dep) = resolved.map(|r| r.info.dep_name.as_str()).filter(|d| !d.is_empty()) {
            data.insert(dep.to_string(), function.spec.deps.clone());
        }
    }
    ConfigMap { metadata: meta(function, owner), data: Some(data), ..ConfigMap::default() }
}

fn build_service(function: &Function, config: &FunctionConfig, owner: &OwnerReference) -> Service {
    let mut selector = function.metadata.labels.clone().unwrap_or_default();
    selector.insert("function".to_string(), name_of(function).to_string());
    let given = function.spec.service.clone().filter(|s| s.ports.as_ref().is_some_and(|p| !p.is_empty()));
    let mut spec = given.unwrap_or_else(|| ServiceSpec {
        ports: Some(vec![ServicePort {
            name: Some("http-function-port".to_string()),
            protocol: Some("TCP".to_string()),
            port: DEFAULT_FUNCTION_PORT,
            target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(DEFAULT_FUNCTION_PORT)),
            ..ServicePort::default()
        }]),
        ..ServiceSpec::default()
    });
    if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
        spec.selector = Some(selector);
    }
    if spec.type_.as_deref().is_none_or(str::is_empty) {
        spec.type_ = Some(config.service_type.clone().unwrap_or_else(|| "ClusterIP".to_string()));
    }
    // An allocated address is the API server's to keep; only a headless Service asks for one.
    if spec.cluster_ip.as_deref() != Some("None") {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
    }
    Service { metadata: meta(function, owner), spec: Some(spec), ..Service::default() }
}

#[cfg(test)]
mod tests;
