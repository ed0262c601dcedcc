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

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, ResourceRequirements,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::catalogue::{Catalogue, CatalogueError, Resolved, PHASE_COMPILATION, PHASE_INSTALLATION, PHASE_RUNTIME};
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

/// How the code reaches the pod, from `spec.function-content-type`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    Text,
    Base64,
    Url,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Archive {
    None,
    Zip,
    CompressedTar,
}

struct ContentType {
    encoding: Encoding,
    archive: Archive,
    /// `+deps`: the archive carries the dependency file.
    deps_inside: bool,
    /// Kubeless gave the code file the runtime's suffix only for these exact types.
    plain: bool,
}

fn content_type(text: &str) -> Result<ContentType, BuildError> {
    let bad = || BuildError::ContentType(text.to_string());
    let mut parts = text.split('+');
    let encoding = match parts.next().unwrap_or_default() {
        "" | "text" => Encoding::Text,
        "base64" => Encoding::Base64,
        "url" => Encoding::Url,
        _ => return Err(bad()),
    };
    let (mut archive, mut deps_inside) = (Archive::None, false);
    for part in parts {
        match part {
            "zip" => archive = Archive::Zip,
            "compressedtar" => archive = Archive::CompressedTar,
            "deps" => deps_inside = true,
            _ => return Err(bad()),
        }
    }
    Ok(ContentType { encoding, archive, deps_inside, plain: matches!(text, "" | "text" | "base64" | "url") })
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks `spec.checksum` against the code; returns the expected hex digest, if any. A URL's
/// content is only checked by `prepare`, which downloads it.
fn verify_checksum(function: &Function, ct: &ContentType) -> Result<Option<String>, BuildError> {
    let checksum = function.spec.checksum.trim();
    if checksum.is_empty() {
        return Ok(None);
    }
    let hex = checksum
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| BuildError::ChecksumFormat(checksum.to_string()))?
        .to_ascii_lowercase();
    let code = &function.spec.function;
    let actual = match ct.encoding {
        Encoding::Url => return Ok(Some(hex)),
        Encoding::Text => sha256_hex(code.as_bytes()),
        Encoding::Base64 => {
            let compact: String = code.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .map_err(|e| BuildError::Base64(e.to_string()))?;
            sha256_hex(&bytes)
        }
    };
    if actual != hex {
        return Err(BuildError::ChecksumMismatch { expected: checksum.to_string(), actual });
    }
    Ok(Some(hex))
}

/// `module.function` → (`module`, `function`).
fn split_handler(handler: &str) -> Result<(&str, &str), BuildError> {
    match handler.split_once('.') {
        Some((module, name)) if !module.is_empty() && !name.is_empty() && !name.contains('.') => Ok((module, name)),
        _ => Err(BuildError::Handler(handler.to_string())),
    }
}

/// A string safe inside single quotes in `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Fills what `dst` leaves unset from `src`, as Kubeless's `mergo.Merge` did: objects merge key
/// by key, a set scalar or non-empty list in `dst` wins.
fn fill_missing(dst: &mut Value, src: &Value) {
    if let (Value::Object(d), Value::Object(s)) = (dst, src) {
        for (key, value) in s {
            match d.get_mut(key) {
                Some(existing) if !is_unset(existing) => fill_missing(existing, value),
                _ => {
                    d.insert(key.clone(), value.clone());
                }
            }
        }
    }
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

/// Kubeless's `MergeDeployments`: the template fills in the Function's Deployment, and each
/// container also gets the template container's env, mounts and ports appended.
fn merge_template(deployment: &mut Value, template: &Value) {
    let containers = "/spec/template/spec/containers";
    let theirs = template.pointer(containers).and_then(Value::as_array).cloned().unwrap_or_default();
    let had_containers = deployment.pointer(containers).and_then(Value::as_array).is_some_and(|c| !c.is_empty());
    fill_missing(deployment, template);
    if !had_containers {
        return;
    }
    if let Some(ours) = deployment.pointer_mut(containers).and_then(Value::as_array_mut) {
        for (i, src) in theirs.iter().enumerate() {
            match ours.get_mut(i) {
                None => ours.push(src.clone()),
                Some(dst) => {
                    for list in ["env", "volumeMounts", "ports", "envFrom"] {
                        if let (Some(Value::Array(extra)), Some(obj)) = (src.get(list), dst.as_object_mut()) {
                            let entry = obj.entry(list).or_insert_with(|| Value::Array(Vec::new()));
                            if let Value::Array(items) = entry {
                                items.extend(extra.iter().cloned());
                            }
                        }
                    }
                    fill_missing(dst, src);
                }
            }
        }
    }
}

/// Keeps the last item of each key, at the place its key was first seen.
fn unique_by<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for item in items {
        match at.get(&key(&item)) {
            Some(&i) => out[i] = item,
            None => {
                at.insert(key(&item), out.len());
                out.push(item);
            }
        }
    }
    out
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

/// What the pod's init steps need to know of the code.
struct PodInputs<'a> {
    ct: &'a ContentType,
    checksum: Option<&'a str>,
    file_name: Option<&'a str>,
    handler: Option<(&'a str, &'a str)>,
    resolved: Option<Resolved<'a>>,
}

/// The `prepare` init container's shell command: decode or download the code, check its sha256,
/// unpack or copy it into /kubeless, and copy the dependency file beside it.
fn prepare_command(function: &Function, pod: &PodInputs<'_>, file_name: &str) -> String {
    let mut steps = Vec::new();
    let mut origin = format!("{SOURCE_DIR}/{file_name}");
    match pod.ct.encoding {
        Encoding::Text => {}
        Encoding::Base64 => {
            steps.push(format!("base64 -d < {origin} > /tmp/func.decoded"));
            origin = "/tmp/func.decoded".to_string();
        }
        Encoding::Url => {
            let url = shell_quote(function.spec.function.trim());
            steps.push(format!(
                "if command -v curl >/dev/null; then curl -fL --silent --output /tmp/func.fromurl {url}; else wget -q -O /tmp/func.fromurl {url}; fi"
            ));
            origin = "/tmp/func.fromurl".to_string();
        }
    }
    if let Some(hex) = pod.checksum {
        steps.push(format!("echo '{hex}  {origin}' > /tmp/func.sha256"));
        steps.push("sha256sum -c /tmp/func.sha256".to_string());
    }
    match pod.ct.archive {
        Archive::Zip => steps.push(format!("unzip -o {origin} -d {RUNTIME_DIR}")),
        Archive::CompressedTar => steps.push(format!("tar xf {origin} -C {RUNTIME_DIR}")),
        Archive::None => steps.push(format!("cp {origin} {RUNTIME_DIR}/{file_name}")),
    }
    if let Some(dep) = pod.resolved.as_ref().map(|r| r.info.dep_name.as_str()).filter(|d| !d.is_empty()) {
        if !pod.ct.deps_inside {
            steps.push(format!("cp {SOURCE_DIR}/{dep} {RUNTIME_DIR}"));
        }
    }
    steps.join(" && ")
}

/// The init containers that put a Function's code (and its installed dependencies) into the
/// pod's `/kubeless`: `prepare`, then the runtime's `install` and `compile` phases where it has them.
struct InitSteps<'a> {
    function: &'a Function,
    config: &'a FunctionConfig,
    resolved: &'a Resolved<'a>,
    /// The emptyDir at `/kubeless`.
    mount: &'a VolumeMount,
    /// `spec.deployment`'s `initContainers[0].resources`, as Kubeless sized every init step.
    resources: &'a Option<ResourceRequirements>,
}

impl InitSteps<'_> {
    /// The init containers; the volumes they need are added to `volumes`.
    fn build(
        &self,
        pod: &PodInputs<'_>,
        file_name: &str,
        user_env: &[EnvVar],
        volumes: &mut Vec<Volume>,
    ) -> Vec<Container> {
        let name = name_of(self.function).to_string();
        let deps_volume = format!("{name}-deps");
        volumes.push(Volume {
            name: name.clone(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        volumes.push(Volume {
            name: deps_volume.clone(),
            config_map: Some(ConfigMapVolumeSource { name, ..ConfigMapVolumeSource::default() }),
            ..Volume::default()
        });
        let source_mount =
            VolumeMount { name: deps_volume, mount_path: SOURCE_DIR.to_string(), ..VolumeMount::default() };
        let mut init = vec![Container {
            name: "prepare".to_string(),
            image: Some(self.config.provision_image.clone()),
            command: Some(vec!["sh".to_string(), "-c".to_string()]),
            args: Some(vec![prepare_command(self.function, pod, file_name)]),
            volume_mounts: Some(vec![self.mount.clone(), source_mount]),
            image_pull_policy: Some("IfNotPresent".to_string()),
            resources: self.resources.clone(),
            ..Container::default()
        }];
        let spec = &self.function.spec;
        if !spec.deps.is_empty() || pod.ct.deps_inside {
            let deps_file = format!("{RUNTIME_DIR}/{}", self.resolved.info.dep_name);
            let mut command = Vec::new();
            if !spec.deps.is_empty() {
                let hex = sha256_hex(spec.deps.as_bytes());
                command.push(format!("echo '{hex}  {deps_file}' > /tmp/deps.sha256"));
                command.push("sha256sum -c /tmp/deps.sha256".to_string());
            }
            let extra = [env("KUBELESS_INSTALL_VOLUME", RUNTIME_DIR), env("KUBELESS_DEPS_FILE", deps_file)];
            init.extend(self.phase(PHASE_INSTALLATION, "install", command, user_env, extra, volumes));
        }
        if let Some((_, func_name)) = pod.handler {
            let extra = [env("KUBELESS_INSTALL_VOLUME", RUNTIME_DIR), env("KUBELESS_FUNC_NAME", func_name)];
            init.extend(self.phase(PHASE_COMPILATION, "compile", Vec::new(), user_env, extra, volumes));
        }
        init
    }

    /// The container of a runtime phase, if the runtime has that phase: `command` then the phase's
    /// own, in its image, with the user's env, `extra` and the phase's env, and the phase's
    /// secrets mounted read-only where Kubeless mounted them (their volumes added to `volumes`).
    fn phase(
        &self,
        phase: &str,
        name: &str,
        mut command: Vec<String>,
        user_env: &[EnvVar],
        extra: [EnvVar; 2],
        volumes: &mut Vec<Volume>,
    ) -> Option<Container> {
        let image = self.resolved.image(phase)?;
        command.extend(image.command.clone());
        let mut all_env = user_env.to_vec();
        all_env.extend(extra);
        all_env.extend(image.env.iter().map(|(k, v)| env(k, v.clone())));
        let mut mounts = vec![self.mount.clone()];
        for secret in &image.secrets {
            volumes.push(Volume {
                name: secret.name.clone(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.name.clone()),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: secret.name.clone(),
                mount_path: format!("{SECRETS_DIR}/{}", secret.name),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        Some(Container {
            name: name.to_string(),
            image: Some(image.image.clone()),
            command: Some(vec!["sh".to_string(), "-c".to_string()]),
            args: Some(vec![command.join(" && ")]),
            env: Some(unique_by(all_env, |e| e.name.clone())),
            volume_mounts: Some(mounts),
            image_pull_policy: Some("IfNotPresent".to_string()),
            working_dir: Some(RUNTIME_DIR.to_string()),
            resources: self.resources.clone(),
            ..Container::default()
        })
    }
}

fn build_deployment(
    function: &Function,
    config: &FunctionConfig,
    owner: &OwnerReference,
    deployment: &mut Deployment,
    own_image: bool,
    pod: &PodInputs<'_>,
) {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::api::core::v1::{
        Affinity, ContainerPort, HTTPGetAction, LocalObjectReference, PodAffinityTerm, PodAntiAffinity,
        PodSecurityContext, Probe, WeightedPodAffinityTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    let name = name_of(function).to_string();
    let port = target_port(function);
    let labels = child_labels(function);
    let mut annotations: BTreeMap<String, String> = function.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(LAST_APPLIED);

    let mut metadata = std::mem::take(&mut deployment.metadata);
    let mut dep_labels = metadata.labels.take().unwrap_or_default();
    dep_labels.extend(labels.clone());
    let mut dep_annotations = metadata.annotations.take().unwrap_or_default();
    dep_annotations.extend(annotations.clone());
    deployment.metadata = ObjectMeta {
        labels: Some(dep_labels),
        annotations: Some(dep_annotations).filter(|a| !a.is_empty()),
        ..meta(function, owner)
    };

    let spec = deployment.spec.get_or_insert_with(DeploymentSpec::default);
    spec.selector = LabelSelector {
        match_labels: Some(BTreeMap::from([
            (CREATED_BY.0.to_string(), CREATED_BY.1.to_string()),
            ("function".to_string(), name.clone()),
        ])),
        match_expressions: None,
    };
    if spec.strategy.is_none() {
        spec.strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".to_string()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: None,
            }),
        });
    }
    let template = &mut spec.template;
    let tmeta = template.metadata.get_or_insert_with(ObjectMeta::default);
    tmeta.labels.get_or_insert_with(BTreeMap::new).extend(labels);
    let pod_annotations = tmeta.annotations.get_or_insert_with(BTreeMap::new);
    pod_annotations.extend(annotations);
    pod_annotations.insert("prometheus.io/scrape".to_string(), "true".to_string());
    pod_annotations.insert("prometheus.io/path".to_string(), "/metrics".to_string());
    pod_annotations.insert("prometheus.io/port".to_string(), port.to_string());
    let code = format!(
        "{}\n{}\n{}\n{}\n{}",
        function.spec.handler,
        function.spec.runtime,
        function.spec.function_content_type,
        function.spec.function,
        function.spec.deps
    );
    pod_annotations.insert(CODE_CHECKSUM_ANNOTATION.to_string(), format!("sha256:{}", sha256_hex(code.as_bytes())));

    let pod_spec = template.spec.get_or_insert_with(Default::default);
    if pod_spec.containers.is_empty() {
        pod_spec.containers.push(Container::default());
    }
    let init_resources = pod_spec.init_containers.as_ref().and_then(|c| c.first()).and_then(|c| c.resources.clone());
    let user_env = pod_spec.containers[0].env.clone().unwrap_or_default();
    let runtime_mount =
        VolumeMount { name: name.clone(), mount_path: RUNTIME_DIR.to_string(), ..VolumeMount::default() };
    let mut volumes = pod_spec.volumes.take().unwrap_or_default();
    let mut pull_secrets: Vec<String> = pod_spec
        .image_pull_secrets
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.name)
        .chain(config.image_pull_secrets.iter().cloned())
        .collect();
    let mut container_env: Vec<EnvVar> = Vec::new();
    let mut main_mounts: Vec<VolumeMount> = Vec::new();

    if let (Some(file_name), Some(resolved), false) = (pod.file_name, pod.resolved.as_ref(), own_image) {
        let steps = InitSteps { function, config, resolved, mount: &runtime_mount, resources: &init_resources };
        pod_spec.init_containers = Some(steps.build(pod, file_name, &user_env, &mut volumes));
        pull_secrets.extend(resolved.version.image_pull_secrets.iter().map(|s| s.image_secret.clone()));
        main_mounts.push(runtime_mount);
    }

    let main = &mut pod_spec.containers[0];
    main.name = name.clone();
    if main.image.as_deref().is_none_or(str::is_empty) {
        main.image = pod.resolved.as_ref().map(|r| r.runtime_image().to_string());
    }
    if let Some((module, func_name)) = pod.handler {
        let timeout = match &function.spec.timeout {
            Some(IntOrString::Int(n)) => n.to_string(),
            Some(IntOrString::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => "180".to_string(),
        };
        let memory = main
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .map_or_else(|| "0".to_string(), |q| q.0.clone());
        container_env.extend([
            env("FUNC_HANDLER", func_name),
            env("MOD_NAME", module),
            env("FUNC_TIMEOUT", timeout),
            env("FUNC_RUNTIME", function.spec.runtime.clone()),
            env("FUNC_MEMORY_LIMIT", memory),
        ]);
    }
    container_env.push(env("FUNC_PORT", port.to_string()));
    if let Some(resolved) = &pod.resolved {
        container_env.push(env("KUBELESS_INSTALL_VOLUME", RUNTIME_DIR));
        if let Some(image) = resolved.image(PHASE_RUNTIME) {
            container_env.extend(image.env.iter().map(|(k, v)| env(k, v.clone())));
        }
    }
    let mut all_env = user_env;
    all_env.extend(container_env);
    main.env = Some(unique_by(all_env, |e| e.name.clone()));
    let mut mounts = main.volume_mounts.take().unwrap_or_default();
    mounts.extend(main_mounts);
    main.volume_mounts = Some(unique_by(mounts, |m| m.mount_path.clone())).filter(|m| !m.is_empty());
    let mut ports = main.ports.take().unwrap_or_default();
    ports.push(ContainerPort { container_port: port, ..ContainerPort::default() });
    main.ports = Some(unique_by(ports, |p| format!("{}/{}", p.container_port, p.protocol.as_deref().unwrap_or("TCP"))));
    if main.liveness_probe.is_none() {
        let from_catalogue = pod.resolved.as_ref().and_then(|r| r.info.liveness_probe.clone());
        main.liveness_probe = Some(from_catalogue.unwrap_or(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".to_string()),
                port: IntOrString::Int(port),
                ..HTTPGetAction::default()
            }),
            initial_delay_seconds: Some(3),
            period_seconds: Some(30),
            ..Probe::default()
        }));
    }
    pod_spec.volumes = Some(unique_by(volumes, |v| v.name.clone())).filter(|v| !v.is_empty());
    let pull_secrets: Vec<LocalObjectReference> = unique_by(pull_secrets, Clone::clone)
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|name| LocalObjectReference { name })
        .collect();
    pod_spec.image_pull_secrets = Some(pull_secrets).filter(|s| !s.is_empty());
    if pod_spec.security_context.is_none() {
        pod_spec.security_context =
            Some(PodSecurityContext { run_as_user: Some(1000), fs_group: Some(1000), ..PodSecurityContext::default() });
    }
    if pod_spec.affinity.is_none() {
        pod_spec.affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([
                                (CREATED_BY.0.to_string(), CREATED_BY.1.to_string()),
                                ("function".to_string(), name.clone()),
                            ])),
                            match_expressions: None,
                        }),
                        topology_key: "kubernetes.io/hostname".to_string(),
                        ..PodAffinityTerm::default()
                    },
                }]),
                ..PodAntiAffinity::default()
            }),
            ..Affinity::default()
        });
    }
}

/// `spec.horizontalPodAutoscaler` (Kubeless stored an `autoscaling/v2beta1` object) as an
/// `autoscaling/v2` HPA on the function's Deployment; `None` when unset or empty.
fn build_autoscaler(function: &Function, owner: &OwnerReference) -> Result<Option<Value>, BuildError> {
    let Some(hpa) = function.spec.horizontal_pod_autoscaler.as_ref().filter(|v| !is_unset(v)) else {
        return Ok(None);
    };
    let Some(spec) = hpa.get("spec").filter(|s| !is_unset(s)) else {
        return Ok(None);
    };
    let bad = |m: String| BuildError::Autoscaler(m);
    let max = spec
        .get("maxReplicas")
        .and_then(Value::as_i64)
        .filter(|m| *m > 0)
        .ok_or_else(|| bad("spec.maxReplicas must be a positive number".to_string()))?;
    let mut out = serde_json::Map::new();
    out.insert(
        "scaleTargetRef".to_string(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": name_of(function)}),
    );
    if let Some(min) = spec.get("minReplicas").filter(|v| !v.is_null()) {
        out.insert("minReplicas".to_string(), min.clone());
    }
    out.insert("maxReplicas".to_string(), json!(max));
    let metrics = spec.get("metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let metrics: Vec<Value> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| metric_v2(m).map_err(|e| bad(format!("spec.metrics[{i}]: {e}"))))
        .collect::<Result<_, _>>()?;
    if !metrics.is_empty() {
        out.insert("metrics".to_string(), Value::Array(metrics));
    }
    if let Some(behavior) = spec.get("behavior").filter(|v| !v.is_null()) {
        out.insert("behavior".to_string(), behavior.clone());
    }
    let metadata = serde_json::to_value(meta(function, owner)).map_err(|e| bad(e.to_string()))?;
    Ok(Some(json!({"metadata": metadata, "spec": Value::Object(out)})))
}

/// The target of a `v2beta1` metric (`targetAverageUtilization`, `targetAverageValue`,
/// `targetValue`) as a `v2` `target`.
fn target_v2(old: &Value) -> Option<Value> {
    if let Some(u) = old.get("targetAverageUtilization").filter(|v| !v.is_null()) {
        return Some(json!({"type": "Utilization", "averageUtilization": u}));
    }
    if let Some(v) = old.get("targetAverageValue").or_else(|| old.get("averageValue")).filter(|v| !v.is_null()) {
        return Some(json!({"type": "AverageValue", "averageValue": v}));
    }
    old.get("targetValue").filter(|v| !v.is_null()).map(|v| json!({"type": "Value", "value": v}))
}

/// One metric in `v2` form; a metric already in `v2` form (it has a `target`) is kept.
fn metric_v2(metric: &Value) -> Result<Value, String> {
    let kind = metric.get("type").and_then(Value::as_str).ok_or("type is missing")?;
    let field = match kind {
        "Resource" => "resource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        "ContainerResource" => "containerResource",
        other => return Err(format!("type {other:?} is not Resource, Pods, Object or External")),
    };
    let source = metric.get(field).ok_or_else(|| format!("type {kind} needs {field}"))?;
    // A v2 target has a type; v2beta1's Object `target` is the object described.
    if source.get("target").and_then(|t| t.get("type")).is_some() {
        return Ok(metric.clone());
    }
    let target = target_v2(source).ok_or_else(|| format!("{field} has no target"))?;
    let converted = match kind {
        "Resource" | "ContainerResource" => {
            let mut m = json!({"name": source.get("name").cloned().unwrap_or(Value::Null), "target": target});
            if let Some(c) = source.get("container") {
                m["container"] = c.clone();
            }
            m
        }
        _ => {
            let mut id = json!({"name": source.get("metricName").cloned().unwrap_or(Value::Null)});
            let selector = source.get("selector").or_else(|| source.get("metricSelector"));
            if let Some(s) = selector.filter(|s| !s.is_null()) {
                id["selector"] = s.clone();
            }
            let mut m = json!({"metric": id, "target": target});
            if kind == "Object" {
                m["describedObject"] = source.get("target").cloned().unwrap_or(Value::Null);
            }
            m
        }
    };
    Ok(json!({"type": kind, field: converted}))
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
