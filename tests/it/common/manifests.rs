//! The objects tests apply, built from the crate's own resource types (so a renamed field fails to
//! compile here rather than silently meaning nothing) and written as YAML. `extra` is spec fields
//! a test adds, as YAML lines indented by two spaces; they are merged into the typed spec.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::ObjectMeta;
use kubeless_broker::resources::{
    CronJobTrigger, CronJobTriggerSpec, Function, FunctionSpec, KafkaTrigger, KafkaTriggerSpec, KinesisTrigger,
    KinesisTriggerSpec, NATSTrigger, NATSTriggerSpec, URL_ANNOTATION,
};
use serde::Serialize;
use serde_yaml::Value;

const NAMESPACE: &str = "default";

/// `{key: value, …}` as a test writes labels.
fn labels(flow: &str) -> BTreeMap<String, String> {
    serde_yaml::from_str(flow).unwrap_or_else(|e| panic!("labels {flow:?}: {e}"))
}

fn selector(flow: &str) -> LabelSelector {
    LabelSelector { match_labels: Some(labels(flow)), ..LabelSelector::default() }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), namespace: Some(NAMESPACE.to_string()), ..ObjectMeta::default() }
}

/// `object` as YAML, with the spec fields of `extra` merged into its spec.
fn yaml_of(object: &impl Serialize, extra: &str) -> String {
    let mut value = serde_yaml::to_value(object).expect("a resource serialises");
    if !extra.trim().is_empty() {
        let Ok(Value::Mapping(fields)) = serde_yaml::from_str::<Value>(extra) else {
            panic!("extra spec {extra:?} is not a mapping of spec fields")
        };
        value.get_mut("spec").and_then(Value::as_mapping_mut).expect("a spec").extend(fields);
    }
    serde_yaml::to_string(&value).expect("YAML")
}

/// A Function in `default`, labelled `labels` (`{function: f}`), reached at `url`, with a 30 s
/// timeout.
pub fn function_yaml(name: &str, labels_flow: &str, url: &str) -> String {
    function_with_timeout_yaml(name, labels_flow, url, "30")
}

/// [`function_yaml`] with `spec.timeout` (seconds, as Kubeless wrote it: a string).
pub fn function_with_timeout_yaml(name: &str, labels_flow: &str, url: &str, timeout: &str) -> String {
    let mut metadata = meta(name);
    metadata.labels = Some(labels(labels_flow));
    metadata.annotations = Some([(URL_ANNOTATION.to_string(), url.to_string())].into());
    let spec = FunctionSpec {
        runtime: "python3.7".into(),
        handler: "h.f".into(),
        timeout: Some(IntOrString::String(timeout.into())),
        ..FunctionSpec::default()
    };
    yaml_of(&Function { metadata, spec, status: None }, "")
}

/// A CronJobTrigger on `schedule` (seconds field first) calling `function`; `extra` is added to its spec.
pub fn cron_yaml(name: &str, function: &str, schedule: &str, extra: &str) -> String {
    let spec = CronJobTriggerSpec {
        function_name: function.into(),
        schedule: schedule.into(),
        ..CronJobTriggerSpec::default()
    };
    yaml_of(&CronJobTrigger { metadata: meta(name), spec, status: None }, extra)
}

/// A KafkaTrigger on `topic` feeding the Functions `selector` (`{function: f}`) matches; `extra` is
/// added to its spec.
pub fn trigger_yaml(name: &str, topic: &str, selector_flow: &str, extra: &str) -> String {
    let spec = KafkaTriggerSpec {
        topic: Some(topic.into()),
        function_selector: Some(selector(selector_flow)),
        ..KafkaTriggerSpec::default()
    };
    yaml_of(&KafkaTrigger { metadata: meta(name), spec, status: None }, extra)
}

/// A NATSTrigger on `subject`; `extra` is added to its spec.
pub fn nats_trigger_yaml(name: &str, subject: &str, selector_flow: &str, extra: &str) -> String {
    let spec = NATSTriggerSpec {
        topic: subject.into(),
        function_selector: Some(selector(selector_flow)),
        ..NATSTriggerSpec::default()
    };
    yaml_of(&NATSTrigger { metadata: meta(name), spec, status: None }, extra)
}

/// A KinesisTrigger reading `stream` on an emulator with the Secret `aws-<name>` (keys `testing`).
pub fn kinesis_yaml(name: &str, function: &str, stream: &str, endpoint: &str, extra: &str) -> String {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: aws-{name}, namespace: {NAMESPACE}}}\nstringData: {{aws_access_key_id: testing, aws_secret_access_key: testing}}\n"
    );
    let spec = KinesisTriggerSpec {
        function_name: function.into(),
        aws_region: "us-east-1".into(),
        stream: stream.into(),
        secret: Some(format!("aws-{name}")),
        endpoint: Some(endpoint.into()),
        ..KinesisTriggerSpec::default()
    };
    format!("{secret}---\n{}", yaml_of(&KinesisTrigger { metadata: meta(name), spec, status: None }, extra))
}

/// A Function in `default` labelled `function: <name>` with no `kubeless.io/url`: the daemon runs
/// it itself (a local function). `env` becomes its container's environment.
pub fn local_function_yaml(
    name: &str,
    runtime: &str,
    handler: &str,
    code: &str,
    deps: &str,
    env: &[(&str, &str)],
) -> String {
    let mut metadata = meta(name);
    metadata.labels = Some(labels(&format!("{{function: {name}}}")));
    let env: Vec<serde_json::Value> = env.iter().map(|(k, v)| serde_json::json!({"name": k, "value": v})).collect();
    let spec = FunctionSpec {
        runtime: runtime.into(),
        handler: handler.into(),
        function: code.into(),
        deps: deps.into(),
        timeout: Some(IntOrString::String("30".into())),
        deployment: Some(serde_json::json!({"spec": {"template": {"spec": {"containers": [{"env": env}]}}}})),
        ..FunctionSpec::default()
    };
    yaml_of(&Function { metadata, spec, status: None }, "")
}
