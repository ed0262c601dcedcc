//! The Function `function deploy` and `update` write, built from their flags as Kubeless's CLI
//! built it (`cmd/kubeless/function`): the same labels, field names, content types and checksums,
//! so that the daemon and old tooling read it the same. Pure: reading files and the catalogue
//! happen before, in the caller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Map, Value};

use super::content::Content;
use crate::cli::common::{check_quantity, created_by, key_value, key_values, meta, FlagError};
use crate::resources::{Function, FunctionSpec};

/// `function deploy`/`update` flags after reading files: every field `None` is left as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionChange {
    pub runtime: Option<String>,
    pub handler: Option<String>,
    pub code: Option<Content>,
    /// The dependency file's text.
    pub deps: Option<String>,
    pub labels: Vec<String>,
    /// Replaces the env when given (Kubeless).
    pub env: Option<Vec<String>>,
    pub secrets: Vec<String>,
    pub node_selectors: Option<Vec<String>>,
    pub service_account: Option<String>,
    pub memory: Option<String>,
    pub cpu: Option<String>,
    pub runtime_image: Option<String>,
    pub image_pull_policy: Option<String>,
    pub timeout: Option<String>,
    pub port: Option<i32>,
    pub service_port: Option<i32>,
    pub headless: Option<bool>,
}

impl FunctionChange {
    /// Kubeless's deploy defaults for what was not given: pull `Always`, timeout `"180"`, port 8080,
    /// not headless.
    pub fn with_deploy_defaults(mut self) -> Self {
        self.image_pull_policy.get_or_insert_with(|| "Always".to_string());
        self.timeout.get_or_insert_with(|| "180".to_string());
        self.port.get_or_insert(crate::resources::DEFAULT_FUNCTION_PORT);
        self.headless.get_or_insert(false);
        self
    }

    /// Checks what Kubeless checked, before anything is built.
    pub fn validate(&self) -> Result<(), FlagError> {
        if let Some(p) = &self.image_pull_policy {
            if !matches!(p.as_str(), "IfNotPresent" | "Always" | "Never") {
                return Err(FlagError::new(
                    "--image-pull-policy",
                    format!("{p:?} must be IfNotPresent, Always or Never"),
                ));
            }
        }
        if let Some(port) = self.port {
            if !(1..=65535).contains(&port) {
                return Err(FlagError::new("--port", format!("{port} is not a port number (1-65535)")));
            }
        }
        if let Some(port) = self.service_port {
            if !(0..=65535).contains(&port) {
                return Err(FlagError::new("--servicePort", format!("{port} is not a port number (1-65535)")));
            }
        }
        if let Some(t) = &self.timeout {
            if t.trim().parse::<u64>().map_or(true, |s| s == 0) {
                return Err(FlagError::new("--timeout", format!("{t:?} is not a positive number of seconds")));
            }
        }
        for (flag, q) in [("--memory", &self.memory), ("--cpu", &self.cpu)] {
            if let Some(q) = q {
                check_quantity(flag, q)?;
            }
        }
        Ok(())
    }
}

/// The Function `kubeless function deploy NAME` makes (Kubeless's `getFunctionDescription` with its
/// default of labels `created-by: kubeless`, `function: NAME`).
pub fn new_function(name: &str, namespace: &str, change: &FunctionChange) -> Function {
    let mut labels = created_by();
    labels.insert("function".to_string(), name.to_string());
    let mut f = Function::new(name, FunctionSpec::default());
    f.metadata = meta(name, namespace, labels);
    update_function(&mut f, change);
    f
}

/// Applies `change` to `f`: only what was given changes (Kubeless's `update` reset every flag it
/// was not given to its default).
pub fn update_function(f: &mut Function, change: &FunctionChange) {
    let spec = &mut f.spec;
    if let Some(h) = &change.handler {
        spec.handler = h.clone();
    }
    if let Some(code) = &change.code {
        spec.function = code.function.clone();
        spec.function_content_type = code.content_type.clone();
        spec.checksum = code.checksum.clone();
    }
    if let Some(deps) = &change.deps {
        spec.deps = deps.clone();
    }
    if let Some(r) = &change.runtime {
        spec.runtime = r.clone();
    }
    if let Some(t) = &change.timeout {
        spec.timeout = Some(IntOrString::String(t.clone()));
    }
    let labels = f.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.extend(key_values(&change.labels));
    let labels = labels.clone();

    // spec.deployment.spec.template.spec, kept as JSON: Kubeless's shape, with whatever a user put
    // there left alone.
    let mut deployment = spec.deployment.take().unwrap_or_else(|| json!({}));
    let pod = object_at(&mut deployment, &["spec", "template", "spec"]);
    for secret in &change.secrets {
        push_unique(pod, "volumes", json!({"name": format!("{secret}-vol"), "secret": {"secretName": secret}}));
    }
    if let Some(selectors) = &change.node_selectors {
        let map: Map<String, Value> = key_values(selectors).into_iter().map(|(k, v)| (k, json!(v))).collect();
        if map.is_empty() {
            pod.remove("nodeSelector");
        } else {
            pod.insert("nodeSelector".into(), Value::Object(map));
        }
    }
    if let Some(sa) = &change.service_account {
        pod.insert("serviceAccountName".into(), json!(sa));
    }
    let container = first_container(pod);
    if let Some(policy) = &change.image_pull_policy {
        container.insert("imagePullPolicy".into(), json!(policy));
    }
    if let Some(image) = &change.runtime_image {
        container.insert("image".into(), json!(image));
    }
    if let Some(env) = &change.env {
        let env: Vec<Value> = env
            .iter()
            .map(|e| {
                let (k, v) = key_value(e);
                json!({"name": k, "value": v})
            })
            .collect();
        container.insert("env".into(), Value::Array(env));
    }
    // Requests equal limits (Kubeless); only the resources given change.
    for (key, value) in [("memory", &change.memory), ("cpu", &change.cpu)] {
        if let Some(q) = value {
            let resources = object_in(container, "resources");
            for kind in ["limits", "requests"] {
                object_in(resources, kind).insert(key.into(), json!(q));
            }
        }
    }
    for secret in &change.secrets {
        push_unique(
            container,
            "volumeMounts",
            json!({"name": format!("{secret}-vol"), "mountPath": format!("/{secret}")}),
        );
    }
    spec.deployment = Some(deployment);

    let service =
        spec.service.get_or_insert_with(|| ServiceSpec { type_: Some("ClusterIP".into()), ..ServiceSpec::default() });
    service.selector = Some(labels);
    let ports = service.ports.get_or_insert_with(Vec::new);
    if ports.is_empty() {
        ports.push(k8s_openapi::api::core::v1::ServicePort {
            name: Some("http-function-port".into()),
            protocol: Some("TCP".into()),
            port: crate::resources::DEFAULT_FUNCTION_PORT,
            target_port: Some(IntOrString::Int(crate::resources::DEFAULT_FUNCTION_PORT)),
            ..Default::default()
        });
    }
    let first = &mut ports[0];
    if let Some(port) = change.port {
        // The service port follows the container port unless --servicePort says otherwise.
        if change.service_port.unwrap_or(0) == 0
            && first.target_port.as_ref().is_none_or(|t| *t == IntOrString::Int(first.port))
        {
            first.port = port;
        }
        first.target_port = Some(IntOrString::Int(port));
    }
    if let Some(sp) = change.service_port.filter(|p| *p != 0) {
        first.port = sp;
    }
    match change.headless {
        Some(true) => service.cluster_ip = Some("None".into()),
        Some(false) if service.cluster_ip.as_deref() == Some("None") => service.cluster_ip = None,
        _ => {}
    }
}

/// The JSON object at `path` in `value`, made (and any non-object replaced) on the way.
fn object_at<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut here = value;
    for key in path {
        if !here.is_object() {
            *here = json!({});
        }
        here = here.as_object_mut().expect("made an object above").entry(*key).or_insert_with(|| json!({}));
    }
    if !here.is_object() {
        *here = json!({});
    }
    here.as_object_mut().expect("made an object above")
}

fn object_in<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = map.entry(key).or_insert_with(|| json!({}));
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut().expect("made an object above")
}

/// The pod's first container (the function's), made if missing.
fn first_container(pod: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let containers = pod.entry("containers").or_insert_with(|| json!([]));
    if !containers.is_array() {
        *containers = json!([]);
    }
    let list = containers.as_array_mut().expect("made an array above");
    if list.first().is_none_or(|c| !c.is_object()) {
        list.insert(0, json!({}));
    }
    list[0].as_object_mut().expect("made an object above")
}

/// Appends `item` to the list `key` unless an item of the same `name` is there.
fn push_unique(map: &mut Map<String, Value>, key: &str, item: Value) {
    let list = map.entry(key).or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    let list = list.as_array_mut().expect("made an array above");
    if !list.iter().any(|v| v.get("name") == item.get("name")) {
        list.push(item);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{new_function, update_function, FunctionChange};
    use crate::cli::function::content::content;
    use crate::cli::test_support::{as_json, strings, CODE};

    /// `kubeless function deploy hello --runtime python3.7 --handler hello.foo --from-file hello.py
    /// --dependencies requirements.txt -l team=a,tier:web -e K1=v1,K2:v2 --memory 128Mi --cpu 100m
    /// --secrets creds --node-selectors disk=ssd --service-account fn-sa --runtime-image my/img:1
    /// --timeout 60 --port 9090 --servicePort 80 --headless -n prod --dryrun -o json`.
    #[test]
    fn function_deploy_matches_kubeless_field_for_field() {
        let code = content("hello.py", CODE.as_bytes());
        let change = FunctionChange {
            runtime: Some("python3.7".into()),
            handler: Some("hello.foo".into()),
            code: Some(code.clone()),
            deps: Some("requests==2.31.0\n".into()),
            labels: strings(&["team=a", "tier:web"]),
            env: Some(strings(&["K1=v1", "K2:v2"])),
            secrets: strings(&["creds"]),
            node_selectors: Some(strings(&["disk=ssd"])),
            service_account: Some("fn-sa".into()),
            memory: Some("128Mi".into()),
            cpu: Some("100m".into()),
            runtime_image: Some("my/img:1".into()),
            timeout: Some("60".into()),
            port: Some(9090),
            service_port: Some(80),
            headless: Some(true),
            ..FunctionChange::default()
        }
        .with_deploy_defaults();
        change.validate().expect("valid flags");
        let labels = json!({"created-by": "kubeless", "function": "hello", "team": "a", "tier": "web"});
        let kubeless = json!({
            "kind": "Function",
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "hello", "namespace": "prod", "labels": labels},
            "spec": {
                "handler": "hello.foo",
                "function": CODE,
                "function-content-type": "text",
                "checksum": code.checksum,
                "runtime": "python3.7",
                "timeout": "60",
                "deps": "requests==2.31.0\n",
                "deployment": {"spec": {"template": {"spec": {
                    "volumes": [{"name": "creds-vol", "secret": {"secretName": "creds"}}],
                    "containers": [{
                        "image": "my/img:1",
                        "env": [{"name": "K1", "value": "v1"}, {"name": "K2", "value": "v2"}],
                        "resources": {
                            "limits": {"cpu": "100m", "memory": "128Mi"},
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                        },
                        "volumeMounts": [{"name": "creds-vol", "mountPath": "/creds"}],
                        "imagePullPolicy": "Always",
                    }],
                    "nodeSelector": {"disk": "ssd"},
                    "serviceAccountName": "fn-sa",
                }}}},
                "service": {
                    "ports": [{"name": "http-function-port", "protocol": "TCP", "port": 80, "targetPort": 9090}],
                    "selector": labels,
                    "clusterIP": "None",
                    "type": "ClusterIP",
                },
            },
        });
        assert_eq!(as_json(&new_function("hello", "prod", &change)), kubeless);
    }

    /// `kubeless function deploy tiny --runtime nodejs14 --handler h.f --from-file URL.zip`.
    #[test]
    fn minimal_function_and_url_code_match_kubeless() {
        let code = content("https://example.com/f.zip", b"zip bytes");
        let change = FunctionChange {
            runtime: Some("nodejs14".into()),
            handler: Some("h.f".into()),
            code: Some(code.clone()),
            ..FunctionChange::default()
        }
        .with_deploy_defaults();
        let labels = json!({"created-by": "kubeless", "function": "tiny"});
        let kubeless = json!({
            "kind": "Function",
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "tiny", "namespace": "default", "labels": labels},
            "spec": {
                "handler": "h.f",
                "function": "https://example.com/f.zip",
                "function-content-type": "url+zip",
                "checksum": code.checksum,
                "runtime": "nodejs14",
                "timeout": "180",
                "deployment": {"spec": {"template": {"spec": {"containers": [{"imagePullPolicy": "Always"}]}}}},
                "service": {
                    "ports": [{"name": "http-function-port", "protocol": "TCP", "port": 8080, "targetPort": 8080}],
                    "selector": labels,
                    "type": "ClusterIP",
                },
            },
        });
        assert_eq!(as_json(&new_function("tiny", "default", &change)), kubeless);
    }

    /// Kubeless wrote `cpu: "0"` into both limits and requests when only `--memory` was given; a
    /// zero CPU limit is not what anyone asked for, so only the given resource is written.
    #[test]
    fn only_the_given_resource_is_limited() {
        let change = FunctionChange { memory: Some("64Mi".into()), ..FunctionChange::default() }.with_deploy_defaults();
        let f = as_json(&new_function("m", "default", &change));
        assert_eq!(
            f["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}})
        );
    }

    #[test]
    fn update_changes_only_what_was_given() {
        let deploy = FunctionChange {
            runtime: Some("python3.7".into()),
            handler: Some("hello.foo".into()),
            code: Some(content("hello.py", CODE.as_bytes())),
            env: Some(strings(&["A=1"])),
            memory: Some("128Mi".into()),
            secrets: strings(&["creds"]),
            port: Some(9090),
            service_port: Some(80),
            ..FunctionChange::default()
        }
        .with_deploy_defaults();
        let before = new_function("hello", "default", &deploy);
        let mut after = before.clone();
        // A user's own field under spec.deployment survives.
        after.spec.deployment.as_mut().expect("deployment")["spec"]["replicas"] = json!(3);
        let marked = as_json(&after);

        update_function(&mut after, &FunctionChange { cpu: Some("250m".into()), ..FunctionChange::default() });
        let mut expected = marked.clone();
        let container = &mut expected["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0];
        container["resources"]["limits"]["cpu"] = json!("250m");
        container["resources"]["requests"]["cpu"] = json!("250m");
        assert_eq!(as_json(&after), expected, "--cpu changes the CPU only");

        update_function(
            &mut after,
            &FunctionChange {
                handler: Some("hello.bar".into()),
                labels: strings(&["team=b"]),
                secrets: strings(&["creds"]),
                ..FunctionChange::default()
            },
        );
        let json = as_json(&after);
        assert_eq!(json["spec"]["handler"], "hello.bar");
        assert_eq!(json["spec"]["function"], CODE, "the code is kept");
        assert_eq!(json["spec"]["runtime"], "python3.7");
        assert_eq!(json["metadata"]["labels"]["team"], "b");
        assert_eq!(json["spec"]["service"]["selector"]["team"], "b", "the Service selector follows the labels");
        assert_eq!(
            json["spec"]["service"]["ports"][0],
            json!({"name": "http-function-port", "protocol": "TCP", "port": 80, "targetPort": 9090})
        );
        let pod = &json["spec"]["deployment"]["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"].as_array().map(Vec::len), Some(1), "a secret already mounted is not mounted twice");
        assert_eq!(pod["containers"][0]["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(json["spec"]["deployment"]["spec"]["replicas"], 3);

        update_function(
            &mut after,
            &FunctionChange { port: Some(7070), headless: Some(true), ..FunctionChange::default() },
        );
        let json = as_json(&after);
        assert_eq!(json["spec"]["service"]["ports"][0]["port"], 80, "an explicit service port stays");
        assert_eq!(json["spec"]["service"]["ports"][0]["targetPort"], 7070);
        assert_eq!(json["spec"]["service"]["clusterIP"], "None");
    }

    #[test]
    fn bad_function_flags_name_the_flag() {
        let cases = [
            (
                FunctionChange { image_pull_policy: Some("Sometimes".into()), ..Default::default() },
                "--image-pull-policy",
            ),
            (FunctionChange { port: Some(0), ..Default::default() }, "--port"),
            (FunctionChange { service_port: Some(70000), ..Default::default() }, "--servicePort"),
            (FunctionChange { timeout: Some("soon".into()), ..Default::default() }, "--timeout"),
            (FunctionChange { memory: Some("lots".into()), ..Default::default() }, "--memory"),
            (FunctionChange { cpu: Some("1 core".into()), ..Default::default() }, "--cpu"),
        ];
        for (change, flag) in cases {
            assert_eq!(change.validate().expect_err(flag).flag, flag);
        }
    }
}
