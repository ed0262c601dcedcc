use base64::Engine;
use k8s_openapi::api::core::v1::Container;

use super::content::sha256_hex;
use super::deployment::unique_by;
use super::*;

const CODE: &str = "def hello(event, context):\n    return event['data']\n";

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "kubeless.io/v1beta1".to_string(),
        kind: "Function".to_string(),
        name: "hello".to_string(),
        uid: "uid-1".to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn function(yaml: &str) -> Function {
    serde_yaml::from_str(yaml).expect("function yaml")
}

/// A Function as `kubeless function deploy` wrote it, with deps, env, resources and an HPA in
/// Kubeless's v2beta1 shape.
fn kubeless_function() -> Function {
    let checksum = sha256_hex(CODE.as_bytes());
    function(&format!(
        r#"
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: hello
  namespace: ns
  labels: {{created-by: kubeless, team: a}}
  annotations: {{kubectl.kubernetes.io/last-applied-configuration: "{{}}", owner: me}}
spec:
  runtime: python3.7
  handler: hello.hello
  function-content-type: text
  checksum: sha256:{checksum}
  function: {code:?}
  deps: "requests==2.31.0\n"
  timeout: "30"
  deployment:
    spec:
      template:
        spec:
          containers:
            - env: [{{name: GREETING, value: hi}}, {{name: FUNC_PORT, value: "1"}}]
              resources: {{limits: {{memory: 128Mi, cpu: 500m}}}}
  horizontalPodAutoscaler:
    metadata: {{name: hello, namespace: ns}}
    spec:
      scaleTargetRef: {{kind: Deployment, name: hello}}
      minReplicas: 1
      maxReplicas: 5
      metrics:
        - {{type: Resource, resource: {{name: cpu, targetAverageUtilization: 70}}}}
        - {{type: Object, object: {{target: {{kind: Service, name: hello}}, metricName: function_calls, targetValue: 100}}}}
"#,
        code = CODE
    ))
}

fn env_of(c: &Container) -> Vec<(String, String)> {
    c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
}

#[test]
fn a_kubeless_python_function_becomes_its_configmap_service_deployment_and_hpa() {
    let children = build(&kubeless_function(), &FunctionConfig::default(), &owner()).expect("build");

    let cm = &children.config_map;
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["handler", "hello.py", "requirements.txt"]);
    assert_eq!(data["hello.py"], CODE);
    assert_eq!(data["requirements.txt"], "requests==2.31.0\n");
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("created-by").map(String::as_str), Some("kubeless"));
    assert_eq!(labels.get("function").map(String::as_str), Some("hello"));
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    assert_eq!(cm.metadata.owner_references, Some(vec![owner()]));

    let svc = children.service.spec.clone().unwrap_or_default();
    let port = &svc.ports.clone().unwrap_or_default()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("http-function-port"), 8080));
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(svc.selector.unwrap_or_default().get("function").map(String::as_str), Some("hello"));

    let d = &children.deployment;
    let spec = d.spec.clone().unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert_eq!(selector.len(), 2);
    assert_eq!(spec.replicas, None, "replicas are left to the HPA");
    let strategy = spec.strategy.clone().unwrap_or_default();
    assert_eq!(
        strategy.rolling_update.and_then(|r| r.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let pod_labels = tmeta.labels.unwrap_or_default();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the selector matches the pods");
    let ann = tmeta.annotations.unwrap_or_default();
    assert_eq!(ann.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(ann.get("prometheus.io/port").map(String::as_str), Some("8080"));
    assert_eq!(ann.get("owner").map(String::as_str), Some("me"));
    assert!(!ann.contains_key(LAST_APPLIED), "kubectl's bookkeeping is not copied");
    assert!(ann.contains_key(CODE_CHECKSUM_ANNOTATION));

    let pod = spec.template.spec.clone().unwrap_or_default();
    let init = pod.init_containers.clone().unwrap_or_default();
    assert_eq!(init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["prepare", "install"]);
    let prepare = init[0].args.clone().unwrap_or_default().join("");
    assert!(prepare.contains("sha256sum -c /tmp/func.sha256"), "{prepare}");
    assert!(prepare.contains("cp /src/hello.py /kubeless/hello.py"), "{prepare}");
    assert!(prepare.contains("cp /src/requirements.txt /kubeless"), "{prepare}");
    assert_eq!(init[0].image.as_deref(), Some(DEFAULT_PROVISION_IMAGE));
    let install = init[1].args.clone().unwrap_or_default().join("");
    assert!(install.contains(&sha256_hex(b"requests==2.31.0\n")), "{install}");
    assert!(install.ends_with("pip install --prefix=$KUBELESS_INSTALL_VOLUME -r $KUBELESS_DEPS_FILE"), "{install}");
    assert!(env_of(&init[1]).contains(&("KUBELESS_DEPS_FILE".into(), "/kubeless/requirements.txt".into())));

    let main = &pod.containers[0];
    assert_eq!(main.name, "hello");
    assert_eq!(main.image.as_deref(), Some(super::super::catalogue::PYTHON_IMAGE));
    let env = env_of(main);
    for want in [
        ("GREETING", "hi"),
        ("FUNC_HANDLER", "hello"),
        ("MOD_NAME", "hello"),
        ("FUNC_TIMEOUT", "30"),
        ("FUNC_RUNTIME", "python3.7"),
        ("FUNC_MEMORY_LIMIT", "128Mi"),
        ("FUNC_PORT", "8080"),
    ] {
        assert!(env.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {env:?}");
    }
    assert_eq!(env.iter().filter(|(k, _)| k == "FUNC_PORT").count(), 1, "env names stay unique: {env:?}");
    let limits = main.resources.clone().and_then(|r| r.limits).unwrap_or_default();
    assert_eq!(limits.get("cpu").map(|q| q.0.as_str()), Some("500m"));
    assert_eq!(main.volume_mounts.clone().unwrap_or_default()[0].mount_path, "/kubeless");
    let probe = main.liveness_probe.clone().and_then(|p| p.http_get).expect("liveness");
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    let volumes: Vec<String> = pod.volumes.clone().unwrap_or_default().into_iter().map(|v| v.name).collect();
    assert_eq!(volumes, ["hello", "hello-deps"]);
    assert_eq!(pod.security_context.and_then(|s| s.run_as_user), Some(1000));

    let hpa = children.autoscaler.expect("an HPA");
    assert_eq!(hpa["spec"]["scaleTargetRef"], json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "hello"}));
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    assert_eq!(
        hpa["spec"]["metrics"][0],
        json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}})
    );
    assert_eq!(
        hpa["spec"]["metrics"][1],
        json!({"type": "Object", "object": {
            "describedObject": {"kind": "Service", "name": "hello"},
            "metric": {"name": "function_calls"},
            "target": {"type": "Value", "value": 100}}})
    );
}

#[test]
fn a_change_of_code_or_deps_changes_the_pod_template() {
    let config = FunctionConfig::default();
    let template = |f: &Function| serde_json::to_value(&build(f, &config, &owner()).expect("build").deployment).ok();
    let base = kubeless_function();
    let mut code = base.clone();
    code.spec.function.push_str("# v2\n");
    code.spec.checksum = format!("sha256:{}", sha256_hex(code.spec.function.as_bytes()));
    let mut deps = base.clone();
    deps.spec.deps = "requests==2.32.0\n".to_string();
    assert_ne!(template(&base), template(&code));
    assert_ne!(template(&base), template(&deps));
    assert_eq!(template(&base), template(&base.clone()), "the same Function gives the same objects");
}

#[test]
fn a_bad_checksum_an_unknown_runtime_or_a_bad_handler_is_refused_naming_the_field() {
    let config = FunctionConfig::default();
    let mut f = kubeless_function();
    f.spec.checksum = format!("sha256:{}", "0".repeat(64));
    let err = build(&f, &config, &owner()).expect_err("mismatch");
    assert_eq!(err.reason(), "ChecksumMismatch");
    assert!(err.to_string().contains(&sha256_hex(CODE.as_bytes())), "{err}");

    f.spec.checksum = "md5:abc".to_string();
    assert!(matches!(build(&f, &config, &owner()), Err(BuildError::ChecksumFormat(_))));

    let mut f = kubeless_function();
    f.spec.runtime = "cobol85".to_string();
    let err = build(&f, &config, &owner()).expect_err("unknown runtime");
    assert_eq!(err.reason(), "UnknownRuntime");
    assert!(err.to_string().contains("python3.12") && err.to_string().contains("nodejs20"), "{err}");

    let mut f = kubeless_function();
    f.spec.handler = "nodot".to_string();
    assert_eq!(build(&f, &config, &owner()).expect_err("handler").to_string().split(' ').next(), Some("spec.handler"));

    let mut f = kubeless_function();
    f.spec.function_content_type = "base64+rar".to_string();
    assert!(matches!(build(&f, &config, &owner()), Err(BuildError::ContentType(_))));
}

#[test]
fn base64_code_is_checked_decoded_and_a_url_is_left_to_prepare() {
    let config = FunctionConfig::default();
    let mut f = kubeless_function();
    f.spec.function_content_type = "base64+zip".to_string();
    f.spec.function = base64::engine::general_purpose::STANDARD.encode(b"PK\x03\x04zip bytes");
    f.spec.checksum = format!("sha256:{}", sha256_hex(b"PK\x03\x04zip bytes"));
    let children = build(&f, &config, &owner()).expect("base64 zip");
    let data = children.config_map.data.unwrap_or_default();
    assert!(data.contains_key("hello"), "an archive keeps the module name without a suffix: {data:?}");
    let pod = children.deployment.spec.and_then(|s| s.template.spec).unwrap_or_default();
    let prepare = pod.init_containers.unwrap_or_default()[0].args.clone().unwrap_or_default().join("");
    assert!(prepare.starts_with("base64 -d < /src/hello > /tmp/func.decoded"), "{prepare}");
    assert!(prepare.contains("unzip -o /tmp/func.decoded -d /kubeless"), "{prepare}");

    let mut f = kubeless_function();
    f.spec.function_content_type = "url".to_string();
    f.spec.function = "https://example.com/it's.py".to_string();
    f.spec.checksum = format!("sha256:{}", "a".repeat(64));
    let children = build(&f, &config, &owner()).expect("url");
    let pod = children.deployment.spec.and_then(|s| s.template.spec).unwrap_or_default();
    let prepare = pod.init_containers.unwrap_or_default()[0].args.clone().unwrap_or_default().join("");
    assert!(prepare.contains(r"'https://example.com/it'\''s.py'"), "the URL is quoted for sh: {prepare}");
}

#[test]
fn a_function_with_its_own_image_needs_no_catalogue_entry_or_init_steps() {
    let f = function(
        r#"
metadata: {name: custom, namespace: ns}
spec:
  runtime: ""
  deployment:
    spec: {replicas: 3, template: {spec: {containers: [{image: "registry/custom:1"}]}}}
"#,
    );
    let children = build(&f, &FunctionConfig::default(), &owner()).expect("custom image");
    let spec = children.deployment.spec.unwrap_or_default();
    assert_eq!(spec.replicas, Some(3), "a replica count given is kept");
    let pod = spec.template.spec.unwrap_or_default();
    assert_eq!(pod.containers[0].image.as_deref(), Some("registry/custom:1"));
    assert!(pod.init_containers.is_none());
    assert!(children.autoscaler.is_none());

    let mut scaled = f.clone();
    scaled.spec.horizontal_pod_autoscaler = Some(serde_json::json!({"spec": {"maxReplicas": 5}}));
    let children = build(&scaled, &FunctionConfig::default(), &owner()).expect("with an HPA");
    assert!(children.autoscaler.is_some());
    assert_eq!(children.deployment.spec.unwrap_or_default().replicas, None, "the HPA owns the replica count");

    let mut empty = f.clone();
    empty.spec.deployment = None;
    assert_eq!(build(&empty, &FunctionConfig::default(), &owner()).expect_err("nothing"), BuildError::NoCode);
}

#[test]
fn the_kubeless_config_deployment_template_fills_in_what_the_function_leaves_unset() {
    let data = BTreeMap::from([
        (
            "deployment".to_string(),
            "spec:\n  replicas: 2\n  template:\n    spec:\n      nodeSelector: {pool: functions}\n      containers:\n        - env: [{name: FROM_TEMPLATE, value: t}]\n          imagePullPolicy: Always\n".to_string(),
        ),
        ("provision-image".to_string(), "kubeless/unzip:1".to_string()),
        ("provision-image-secret".to_string(), "regcred".to_string()),
        ("service-type".to_string(), "NodePort".to_string()),
    ]);
    let config = FunctionConfig::from_data(&data).expect("config");
    let mut without_hpa = kubeless_function();
    without_hpa.spec.horizontal_pod_autoscaler = None;
    let replicas = build(&without_hpa, &config, &owner()).expect("build").deployment.spec.and_then(|s| s.replicas);
    assert_eq!(replicas, Some(2), "the template's replica count");
    let children = build(&kubeless_function(), &config, &owner()).expect("build");
    let spec = children.deployment.spec.unwrap_or_default();
    assert_eq!(spec.replicas, None, "with an HPA, the HPA's");
    let pod = spec.template.spec.unwrap_or_default();
    assert_eq!(pod.node_selector.unwrap_or_default().get("pool").map(String::as_str), Some("functions"));
    let env = env_of(&pod.containers[0]);
    assert!(env.contains(&("GREETING".into(), "hi".into())) && env.contains(&("FROM_TEMPLATE".into(), "t".into())));
    assert_eq!(pod.containers[0].image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(pod.init_containers.unwrap_or_default()[0].image.as_deref(), Some("kubeless/unzip:1"));
    assert_eq!(pod.image_pull_secrets.unwrap_or_default()[0].name, "regcred");
    assert_eq!(children.service.spec.and_then(|s| s.type_).as_deref(), Some("NodePort"));

    let bad = BTreeMap::from([("runtime-images".to_string(), "[{\"ID\": \"python\", \"versions\": 3}]".to_string())]);
    assert_eq!(FunctionConfig::from_data(&bad).expect_err("bad catalogue").key, "runtime-images");
    let bad = BTreeMap::from([("deployment".to_string(), "spec: {replicas: many}".to_string())]);
    assert_eq!(FunctionConfig::from_data(&bad).expect_err("bad template").key, "deployment");
}

#[test]
fn unique_by_keeps_the_last_value_at_the_first_place() {
    let v = unique_by(vec![("a", 1), ("b", 2), ("a", 3)], |(k, _)| (*k).to_string());
    assert_eq!(v, [("a", 3), ("b", 2)]);
}

#[test]
fn a_phase_with_secrets_and_env_gets_them_in_its_init_container_only() {
    let catalogue = Catalogue::parse(
        r#"[{"ID": "python", "depName": "requirements.txt", "fileNameSuffix": ".py", "versions": [
            {"name": "python39", "version": "3.9", "runtimeImage": [
              {"phase": "installation", "image": "py:3.9", "command": "pip install", "env": {"PIP_INDEX_URL": "https://mirror"}, "secrets": [{"name": "pip-creds"}]},
              {"phase": "compilation", "image": "py-compile:3.9", "command": "compile"},
              {"phase": "runtime", "image": "py-run:3.9"}]}]}]"#,
    )
    .expect("catalogue");
    let mut f = kubeless_function();
    f.spec.runtime = "python3.9".to_string();
    let config = FunctionConfig { catalogue, ..FunctionConfig::default() };
    let pod =
        build(&f, &config, &owner()).expect("build").deployment.spec.and_then(|s| s.template.spec).unwrap_or_default();
    let init = pod.init_containers.unwrap_or_default();
    assert_eq!(init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["prepare", "install", "compile"]);
    let mounts = |c: &Container| c.volume_mounts.iter().flatten().map(|m| m.mount_path.clone()).collect::<Vec<_>>();
    assert_eq!(mounts(&init[1]), ["/kubeless", "/var/run/secrets/kubeless/pip-creds"]);
    assert_eq!(mounts(&init[2]), ["/kubeless"]);
    assert!(env_of(&init[1]).contains(&("PIP_INDEX_URL".into(), "https://mirror".into())));
    assert!(env_of(&init[2]).contains(&("KUBELESS_FUNC_NAME".into(), "hello".into())));
    assert_eq!(init[2].args.clone().unwrap_or_default(), ["compile"]);
    let volumes: Vec<String> = pod.volumes.unwrap_or_default().into_iter().map(|v| v.name).collect();
    assert_eq!(volumes, ["hello", "hello-deps", "pip-creds"]);
}
