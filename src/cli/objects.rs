//! The objects the CLI writes, built from its flags as Kubeless's CLI built them (`cmd/kubeless`):
//! the same labels, field names, content types and checksums, so that the daemon and old tooling
//! read them the same. Pure: reading files and the catalogue happen before, in the caller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::resources::validate::{check_selector, Errors};
use crate::resources::{
    CronJobTrigger, CronJobTriggerSpec, Function, FunctionSpec, HTTPTrigger, HTTPTriggerSpec, KafkaTrigger,
    KafkaTriggerSpec, KinesisTrigger, KinesisTriggerSpec, NATSTrigger, NATSTriggerSpec,
};

/// A flag's value the CLI refuses, and why (shown as `error: --flag: why`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: {problem}")]
pub struct FlagError {
    pub flag: String,
    pub problem: String,
}

impl FlagError {
    pub fn new(flag: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { flag: flag.into(), problem: problem.into() }
    }
}

/// `created-by: kubeless`, on every object the CLI makes.
pub fn created_by() -> BTreeMap<String, String> {
    BTreeMap::from([("created-by".to_string(), "kubeless".to_string())])
}

fn meta(name: &str, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// `k=v` or `k:v` (Kubeless's `getKV`: the first `=` or `:` splits; none gives an empty value).
pub fn key_value(input: &str) -> (String, String) {
    match input.find(['=', ':']) {
        Some(i) => (input[..i].to_string(), input[i + 1..].to_string()),
        None => (input.to_string(), String::new()),
    }
}

/// A map from `k=v`/`k:v` items, later keys winning.
pub fn key_values(items: &[String]) -> BTreeMap<String, String> {
    items.iter().map(|i| key_value(i)).collect()
}

/// A label selector in kubectl's syntax: `a=b,c==d,e!=f,g in (h,i),j notin (k),l,!m`. Equalities
/// become `matchLabels` as in Kubeless; the rest become `matchExpressions` (Kubeless dropped them,
/// selecting every function).
pub fn parse_selector(text: &str) -> Result<LabelSelector, FlagError> {
    let err = |problem: String| FlagError::new("--function-selector", problem);
    let mut labels = BTreeMap::new();
    let mut expressions = Vec::new();
    let requirement = |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: key.trim().to_string(),
        operator: operator.to_string(),
        values,
    };
    for term in split_terms(text) {
        let term = term.trim();
        if term.is_empty() {
            return Err(err(format!("{text:?} has an empty term; use key=value,key2=value2")));
        }
        if let Some(key) = term.strip_prefix('!') {
            expressions.push(requirement(key, "DoesNotExist", None));
        } else if let Some((key, value)) = term.split_once("!=") {
            expressions.push(requirement(key, "NotIn", Some(vec![value.trim().to_string()])));
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.insert(key.trim().to_string(), value.trim().to_string());
        } else if let Some((key, op, values)) = set_term(term) {
            expressions.push(requirement(key, op, Some(values.split(',').map(|v| v.trim().to_string()).collect())));
        } else if term.contains([' ', '(', ')']) {
            return Err(err(format!(
                "{term:?} is not key=value, key!=value, key in (a,b), key notin (a,b), key or !key"
            )));
        } else {
            expressions.push(requirement(term, "Exists", None));
        }
    }
    let selector = LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    };
    // The keys and values are checked as the daemon checks a stored selector.
    let mut errors = Errors::default();
    check_selector(&mut errors, "functionSelector", &selector);
    if let Some(e) = errors.0.into_iter().next() {
        return Err(err(e.message));
    }
    Ok(selector)
}

/// Splits at commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

/// `key in (a,b)` / `key notin (a,b)`.
fn set_term(term: &str) -> Option<(&str, &'static str, &str)> {
    let (key, rest) = term.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (op, rest) =
        if let Some(r) = rest.strip_prefix("notin") { ("NotIn", r) } else { ("In", rest.strip_prefix("in")?) };
    let values = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((key, op, values))
}

/// kubectl's rendering of a selector (`a=b,c notin (d)`), for tables.
pub fn format_selector(selector: Option<&LabelSelector>) -> String {
    let Some(s) = selector else { return "<none>".to_string() };
    let mut parts: Vec<String> = s.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            _ => format!("{} in ({values})", e.key),
        });
    }
    if parts.is_empty() {
        "<none>".to_string()
    } else {
        parts.join(",")
    }
}

/// A quantity as Kubernetes accepts it (`128Mi`, `0.5`, `100m`, `1e3`).
pub fn check_quantity(flag: &str, q: &str) -> Result<(), FlagError> {
    let number_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let digits = number.trim_start_matches(['+', '-']);
    let number_ok = !digits.is_empty()
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().any(|c| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    let suffix_ok = matches!(
        suffix,
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E"
    ) || (suffix.len() > 1
        && suffix.starts_with(['e', 'E'])
        && suffix[1..].trim_start_matches(['+', '-']).chars().all(|c| c.is_ascii_digit())
        && suffix[1..].trim_start_matches(['+', '-']).chars().next().is_some());
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(FlagError::new(flag, format!("{q:?} is not a quantity (e.g. 128Mi, 0.5, 100m)")))
    }
}

/// Code or dependencies read from a file or URL, as Kubeless's `GetContentType`/`ParseContent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The text, base64 of the bytes, or the URL itself.
    pub function: String,
    /// `text`, `base64` or `url`, with `+zip` or `+compressedtar` by the file's extension.
    pub content_type: String,
    /// `sha256:<hex>` of the bytes.
    pub checksum: String,
}

/// `+zip`/`+compressedtar` by extension, as Kubeless's `getCompressionType`.
fn compression(name: &str) -> &'static str {
    const TARS: [&str; 9] = [".tar.gz", ".taz", ".tgz", ".tar.bz2", ".tb2", ".tbz", ".tbz2", ".tz2", ".tar.xz"];
    if TARS.iter().any(|e| name.ends_with(e)) {
        "+compressedtar"
    } else if name.ends_with(".zip") {
        "+zip"
    } else {
        ""
    }
}

/// Whether `--from-file` names a URL (Kubeless: it starts with `http://` or `https://`).
pub fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The `spec.function`, content type and checksum of code read from `source` (a path or a URL).
pub fn content(source: &str, bytes: &[u8]) -> Content {
    let checksum = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if is_url(source) {
        let path = source.split('?').next().unwrap_or(source);
        return Content { function: source.to_string(), content_type: format!("url{}", compression(path)), checksum };
    }
    let (function, kind) = match std::str::from_utf8(bytes) {
        Ok(text) if compression(source).is_empty() => (text.to_string(), "text"),
        Ok(_) => (base64_of(bytes), "text"),
        Err(_) => (base64_of(bytes), "base64"),
    };
    Content { function, content_type: format!("{kind}{}", compression(source)), checksum }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

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

/// `kubeless trigger kafka create NAME --trigger-topic T --function-selector S`.
pub fn kafka_trigger(name: &str, namespace: &str, topic: &str, selector: LabelSelector) -> KafkaTrigger {
    let mut t = KafkaTrigger::new(
        name,
        KafkaTriggerSpec { function_selector: Some(selector), topic: Some(topic.to_string()), ..Default::default() },
    );
    t.metadata = meta(name, namespace, created_by());
    t
}

/// `kubeless trigger nats create NAME --trigger-topic T --function-selector S`.
pub fn nats_trigger(name: &str, namespace: &str, topic: &str, selector: LabelSelector) -> NATSTrigger {
    let mut t = NATSTrigger::new(
        name,
        NATSTriggerSpec { function_selector: Some(selector), topic: topic.to_string(), ..Default::default() },
    );
    t.metadata = meta(name, namespace, created_by());
    t
}

/// `kubeless trigger kinesis create` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KinesisChange {
    pub function_name: Option<String>,
    pub region: Option<String>,
    pub stream: Option<String>,
    pub shard: Option<String>,
    pub secret: Option<String>,
    pub endpoint: Option<String>,
}

/// Applies the given Kinesis flags (create starts from an empty spec).
pub fn update_kinesis(spec: &mut KinesisTriggerSpec, c: &KinesisChange) {
    let set = |field: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            field.clone_from(v);
        }
    };
    set(&mut spec.function_name, &c.function_name);
    set(&mut spec.aws_region, &c.region);
    set(&mut spec.stream, &c.stream);
    let set_opt = |field: &mut Option<String>, v: &Option<String>| {
        if let Some(v) = v {
            *field = (!v.is_empty()).then(|| v.clone());
        }
    };
    set_opt(&mut spec.shard, &c.shard);
    set_opt(&mut spec.secret, &c.secret);
    set_opt(&mut spec.endpoint, &c.endpoint);
}

pub fn kinesis_trigger(name: &str, namespace: &str, change: &KinesisChange) -> KinesisTrigger {
    let mut spec = KinesisTriggerSpec::default();
    update_kinesis(&mut spec, change);
    let mut t = KinesisTrigger::new(name, spec);
    t.metadata = meta(name, namespace, created_by());
    t
}

/// `kubeless trigger cronjob create NAME --function F --schedule S [-p JSON]`.
pub fn cronjob_trigger(
    name: &str,
    namespace: &str,
    function: &str,
    schedule: &str,
    payload: Option<Value>,
) -> CronJobTrigger {
    let mut t = CronJobTrigger::new(
        name,
        CronJobTriggerSpec {
            function_name: function.to_string(),
            schedule: schedule.to_string(),
            payload,
            ..Default::default()
        },
    );
    t.metadata = meta(name, namespace, created_by());
    t
}

/// The CronJobTrigger `function deploy --schedule` makes beside the Function: named after it and
/// labelled `function: NAME` too.
pub fn function_schedule(name: &str, namespace: &str, schedule: &str) -> CronJobTrigger {
    let mut t = cronjob_trigger(name, namespace, name, schedule, None);
    if let Some(labels) = t.metadata.labels.as_mut() {
        labels.insert("function".to_string(), name.to_string());
    }
    t
}

/// A cron payload: JSON text (`--payload`, or a `.json` file's content).
pub fn parse_payload(flag: &str, text: &str) -> Result<Value, FlagError> {
    serde_json::from_str(text).map_err(|e| FlagError::new(flag, format!("is not JSON: {e}")))
}

/// `kubeless trigger http create` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpChange {
    pub function_name: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<String>,
    pub tls_acme: Option<bool>,
    pub tls_secret: Option<String>,
    pub gateway: Option<String>,
    pub basic_auth_secret: Option<String>,
    pub cors_enable: Option<bool>,
}

impl HttpChange {
    pub fn validate(&self) -> Result<(), FlagError> {
        if let Some(g) = &self.gateway {
            if !matches!(g.as_str(), "nginx" | "traefik" | "kong") {
                return Err(FlagError::new("--gateway", format!("{g:?} is not supported; use nginx, traefik or kong")));
            }
        }
        if self.tls_acme == Some(true) && self.tls_secret.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(FlagError::new("--enableTLSAcme", "cannot be given with --tls-secret"));
        }
        Ok(())
    }
}

pub fn update_http(spec: &mut HTTPTriggerSpec, c: &HttpChange) {
    for (field, v) in [
        (&mut spec.function_name, &c.function_name),
        (&mut spec.host_name, &c.hostname),
        (&mut spec.path, &c.path),
        (&mut spec.tls_secret, &c.tls_secret),
        (&mut spec.gateway, &c.gateway),
        (&mut spec.basic_auth_secret, &c.basic_auth_secret),
    ] {
        if let Some(v) = v {
            field.clone_from(v);
        }
    }
    if let Some(v) = c.tls_acme {
        spec.tls = v;
    }
    if let Some(v) = c.cors_enable {
        spec.cors_enable = v;
    }
}

pub fn http_trigger(name: &str, namespace: &str, change: &HttpChange) -> HTTPTrigger {
    let mut spec = HTTPTriggerSpec::default();
    update_http(&mut spec, change);
    let mut t = HTTPTrigger::new(name, spec);
    t.metadata = meta(name, namespace, created_by());
    t
}

/// `nip.io` host of a function behind an nginx ingress on the API server's address, as Kubeless's
/// `GetLocalHostname` made it when `--hostname` was not given.
pub fn local_hostname(function: &str, server: &url::Url) -> Option<String> {
    let host = server.host_str()?.trim_start_matches('[').trim_end_matches(']');
    Some(format!("{function}.{host}.nip.io"))
}

/// `kubeless autoscale create NAME --min --max --metric cpu|qps --value` (Kubeless stored an
/// `autoscaling/v2beta1` spec; the reconciler reads both shapes).
pub fn autoscaler(function: &Function, min: i32, max: i32, metric: &str, value: &str) -> Result<Value, FlagError> {
    let name = function.metadata.name.clone().unwrap_or_default();
    let metric = match metric {
        "cpu" => {
            let v: i32 = value
                .parse()
                .map_err(|_| FlagError::new("--value", format!("{value:?} is not a whole CPU percentage")))?;
            json!({"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": v}})
        }
        "qps" => {
            check_quantity("--value", value)?;
            json!({"type": "Object", "object": {
                "metricName": "function_calls",
                "target": {"kind": "Service", "name": name},
                "targetValue": value,
            }})
        }
        other => return Err(FlagError::new("--metric", format!("{other:?} is not supported; use cpu or qps"))),
    };
    if min < 1 || max < min {
        return Err(FlagError::new("--max", format!("min {min} and max {max}: need 1 <= min <= max")));
    }
    Ok(json!({
        "apiVersion": "autoscaling/v2beta1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": function.metadata.namespace, "labels": function.metadata.labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min,
            "maxReplicas": max,
            "metrics": [metric],
        },
    }))
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
