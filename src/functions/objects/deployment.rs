//! A Function's Deployment: the handler split, the `kubeless-config` template merged in, and the
//! pod built, with the init steps (`prepare`, `install`, `compile`) that put the code into `/kubeless`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, ResourceRequirements, SecretVolumeSource, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

use super::content::{sha256_hex, Archive, ContentType, Encoding};
use super::{
    child_labels, env, is_unset, meta, name_of, target_port, BuildError, FunctionConfig, CODE_CHECKSUM_ANNOTATION,
    CREATED_BY, LAST_APPLIED, RUNTIME_DIR, SECRETS_DIR, SOURCE_DIR,
};
use crate::functions::catalogue::{Resolved, PHASE_COMPILATION, PHASE_INSTALLATION, PHASE_RUNTIME};
use crate::resources::Function;

/// `module.function` → (`module`, `function`).
pub fn split_handler(handler: &str) -> Result<(&str, &str), BuildError> {
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

/// Kubeless's `MergeDeployments`: the template fills in the Function's Deployment, and each
/// container also gets the template container's env, mounts and ports appended.
pub(super) fn merge_template(deployment: &mut Value, template: &Value) {
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
pub(super) fn unique_by<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> Vec<T> {
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

/// What the pod's init steps need to know of the code.
pub(super) struct PodInputs<'a> {
    pub(super) ct: &'a ContentType,
    pub(super) checksum: Option<&'a str>,
    pub(super) file_name: Option<&'a str>,
    pub(super) handler: Option<(&'a str, &'a str)>,
    pub(super) resolved: Option<Resolved<'a>>,
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

pub(super) fn build_deployment(
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
        let timeout = function.func_timeout();
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
