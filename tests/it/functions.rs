//! The Function reconciler against a real kube-apiserver (1.20.2) and etcd, driven with kubectl:
//! a Kubeless Function applied becomes its ConfigMap, Deployment, Service and HPA; edits roll out,
//! hand edits are put back, bad Functions are reported without touching anything, and Functions
//! left with Kubeless's finalizer delete cleanly. No kubelet or controller-manager runs, so the
//! Deployment's and pods' status are written by the test where a cluster's controllers would.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::kubeapi::KubeApi;
use crate::common::*;

const CODE: &str = "import requests\n\ndef hello(event, context):\n    return event['data']\n";

fn sha256(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// A Function as `kubeless function deploy` wrote it: Python, inline code and its checksum, deps,
/// an env var and resources in `spec.deployment`, and an HPA in Kubeless's v2beta1 shape.
fn kubeless_function(name: &str, code: &str, checksum: &str, extra_meta: &str) -> String {
    format!(
        r#"apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: {name}
  namespace: default
  labels: {{created-by: kubeless, function: {name}}}
{extra_meta}spec:
  runtime: python3.9
  handler: hello.hello
  function-content-type: text
  checksum: "{checksum}"
  function: {code:?}
  deps: "requests==2.31.0\n"
  timeout: "30"
  deployment:
    spec:
      template:
        spec:
          containers:
            - env: [{{name: GREETING, value: hi}}]
              resources: {{limits: {{memory: 128Mi}}, requests: {{cpu: 100m}}}}
  horizontalPodAutoscaler:
    metadata: {{name: {name}, namespace: default}}
    spec:
      scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: {name}}}
      minReplicas: 1
      maxReplicas: 3
      metrics: [{{type: Resource, resource: {{name: cpu, targetAverageUtilization: 70}}}}]
"#
    )
}

async fn cluster_and_daemon() -> (KubeApi, Daemon) {
    let api = KubeApi::start().await;
    api.install_crds().await;
    // No triggers: the daemon needs no reachable broker.
    let daemon = Daemon::start_kube(&api.kubeconfig, "127.0.0.1:1", &[], &[]);
    daemon.wait_ready().await;
    (api, daemon)
}

/// Waits until `kubectl get <args> -o json` exists and `done` holds for it; returns it.
async fn wait_object(api: &KubeApi, what: &str, args: &[&str], done: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    let found = wait_for_value(Duration::from_secs(60), || {
        last = api.get_json(args);
        last.clone().filter(|v| done(v))
    })
    .await;
    found.unwrap_or_else(|| panic!("{what}: last seen {last:?}"))
}

/// Polls `f` until it returns `Some`, or `None` after `limit`.
async fn wait_for_value<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

fn ready(api: &KubeApi, name: &str) -> (String, String, String) {
    let text = api.kubectl_ok(&[
        "get",
        "function",
        name,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}|{.status.conditions[?(@.type=="Ready")].reason}|{.status.conditions[?(@.type=="Ready")].message}"#,
    ]);
    let mut parts = text.splitn(3, '|').map(str::to_string);
    (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
}

async fn wait_ready(
    api: &KubeApi,
    name: &str,
    want: impl Fn(&(String, String, String)) -> bool,
) -> (String, String, String) {
    let got = wait_for_value(Duration::from_secs(60), || {
        let r = ready(api, name);
        want(&r).then_some(r)
    })
    .await;
    got.unwrap_or_else(|| panic!("Ready of {name}: last {:?}", ready(api, name)))
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            (e["name"].as_str().unwrap_or_default().to_string(), e["value"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_of_a_kubeless_function_creates_its_children_code_edits_roll_and_hand_edits_are_repaired() {
    let (api, mut daemon) = cluster_and_daemon().await;
    api.apply_ok(&kubeless_function("hello", CODE, &sha256(CODE), ""));
    let uid = api.kubectl_ok(&["get", "function", "hello", "-o", "jsonpath={.metadata.uid}"]);

    // The ConfigMap: handler, code file named by the runtime's suffix, deps file.
    let cm = wait_object(&api, "the ConfigMap", &["configmap", "hello"], |_| true).await;
    assert_eq!(cm["data"]["handler"], "hello.hello");
    assert_eq!(cm["data"]["hello.py"], CODE);
    assert_eq!(cm["data"]["requirements.txt"], "requests==2.31.0\n");

    // The Deployment, as §5 of the contract describes it.
    let d = wait_object(&api, "the Deployment", &["deployment", "hello"], |_| true).await;
    assert_eq!(d["metadata"]["labels"]["created-by"], "kubeless");
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"created-by": "kubeless", "function": "hello"}));
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "8080");
    let init: Vec<&str> =
        pod["spec"]["initContainers"].as_array().expect("init").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(init, ["prepare", "install"]);
    let prepare = pod["spec"]["initContainers"][0]["args"][0].as_str().unwrap_or_default();
    assert!(prepare.contains("sha256sum -c") && prepare.contains("/kubeless/hello.py"), "{prepare}");
    let install = pod["spec"]["initContainers"][1]["args"][0].as_str().unwrap_or_default();
    assert!(install.contains("pip install"), "{install}");
    let main = &pod["spec"]["containers"][0];
    assert_eq!(main["name"], "hello");
    assert_eq!(main["image"], "kubeless-broker/runtime-python:0.1.0");
    assert_eq!(main["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(main["volumeMounts"][0]["mountPath"], "/kubeless");
    let env = env_of(main);
    for want in [
        ("GREETING", "hi"),
        ("FUNC_HANDLER", "hello"),
        ("MOD_NAME", "hello"),
        ("FUNC_TIMEOUT", "30"),
        ("FUNC_RUNTIME", "python3.9"),
        ("FUNC_MEMORY_LIMIT", "128Mi"),
        ("FUNC_PORT", "8080"),
    ] {
        assert!(env.contains(&(want.0.to_string(), want.1.to_string())), "{want:?} in {env:?}");
    }
    assert!(pod["spec"]["volumes"].as_array().expect("volumes").iter().any(|v| v["emptyDir"].is_object()));

    // The Service and the HPA (autoscaling/v2beta2: this server has no v2), Kubeless's v2beta1
    // metric converted.
    let svc = wait_object(&api, "the Service", &["service", "hello"], |_| true).await;
    assert_eq!(svc["spec"]["ports"][0]["name"], "http-function-port");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(svc["spec"]["selector"]["function"], "hello");
    let hpa = wait_object(&api, "the HPA", &["hpa.v2beta2.autoscaling", "hello"], |_| true).await;
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "hello");
    assert_eq!(hpa["spec"]["maxReplicas"], 3);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"],
        json!({"type": "Utilization", "averageUtilization": 70})
    );

    // Every child is owned by the Function, as its controller.
    for kind in ["configmap", "service", "deployment", "hpa"] {
        let o = api.get_json(&[kind, "hello"]).expect(kind);
        let refs = &o["metadata"]["ownerReferences"];
        assert_eq!(refs[0]["uid"], uid.as_str(), "{kind}: {refs}");
        assert_eq!(refs[0]["controller"], true, "{kind}: {refs}");
        assert_eq!(refs[0]["kind"], "Function", "{kind}: {refs}");
    }

    // Status: no controller-manager runs, so the Deployment never becomes available.
    let (status, reason, _) = wait_ready(&api, "hello", |r| r.1 == "Deploying").await;
    assert_eq!(status, "False");
    let generation = api.kubectl_ok(&["get", "function", "hello", "-o", "jsonpath={.metadata.generation}"]);
    let observed = api.kubectl_ok(&["get", "function", "hello", "-o", "jsonpath={.status.observedGeneration}"]);
    assert_eq!((reason.as_str(), observed), ("Deploying", generation));
    let url = api.kubectl_ok(&["get", "function", "hello", "-o", "jsonpath={.status.url}"]);
    assert_eq!(url, "http://hello.default.svc.cluster.local:8080");
    let table = api.kubectl_ok(&["get", "functions"]);
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "RUNTIME", "HANDLER", "READY", "AGE"], "{table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[..4], ["hello", "python3.9", "hello.hello", "False"], "{table}");

    // A pod stuck pulling its image is named in the status (written as a kubelet would).
    api.apply_ok("apiVersion: v1\nkind: Pod\nmetadata: {name: hello-abc, namespace: default, labels: {created-by: kubeless, function: hello}}\nspec: {containers: [{name: hello, image: kubeless-broker/runtime-python:0.1.0}]}\n");
    let pod_status = json!({"status": {"phase": "Pending", "containerStatuses": [{"name": "hello", "image": "kubeless-broker/runtime-python:0.1.0", "imageID": "", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}});
    api.kubectl_ok(&[
        "patch",
        "pod",
        "hello-abc",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        &pod_status.to_string(),
    ]);
    let (_, _, message) = wait_ready(&api, "hello", |r| r.1 == "ImagePullBackOff").await;
    assert!(message.contains("pod hello-abc container hello"), "{message}");
    api.kubectl_ok(&["delete", "pod", "hello-abc", "--grace-period=0", "--force"]);

    // The Deployment becoming available (as the Deployment controller would report) makes it Ready.
    let dep_generation = api.kubectl_ok(&["get", "deployment", "hello", "-o", "jsonpath={.metadata.generation}"]);
    let available = json!({"status": {"observedGeneration": dep_generation.parse::<i64>().unwrap_or(1), "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.kubectl_ok(&[
        "patch",
        "deployment",
        "hello",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        &available.to_string(),
    ]);
    let (status, reason, message) = wait_ready(&api, "hello", |r| r.0 == "True").await;
    assert_eq!((status.as_str(), reason.as_str(), message.as_str()), ("True", "Available", "1/1 replicas available"));
    // Settled: re-applying what is already there writes nothing (no reconcile loop).
    let version = |kind: &str| api.kubectl_ok(&["get", kind, "hello", "-o", "jsonpath={.metadata.resourceVersion}"]);
    let before = [version("deployment"), version("service"), version("configmap"), version("function")];
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(before, [version("deployment"), version("service"), version("configmap"), version("function")]);

    // An edit of the code rolls the Deployment: the pod template changes.
    let template_before = api.get_json(&["deployment", "hello"]).expect("deployment")["spec"]["template"].clone();
    let code2 = CODE.replace("event['data']", "{'echo': event['data']}");
    api.apply_ok(&kubeless_function("hello", &code2, &sha256(&code2), ""));
    wait_object(&api, "the ConfigMap with the new code", &["configmap", "hello"], |cm| {
        cm["data"]["hello.py"] == code2.as_str()
    })
    .await;
    let d = wait_object(&api, "the rolled Deployment", &["deployment", "hello"], |d| {
        d["spec"]["template"] != template_before
    })
    .await;
    let (old, new) = (&template_before["metadata"]["annotations"], &d["spec"]["template"]["metadata"]["annotations"]);
    assert_ne!(old["kubeless.io/code-checksum"], new["kubeless.io/code-checksum"]);
    wait_ready(&api, "hello", |r| r.1 == "Deploying").await;

    // A hand edit of the image is put back; a deleted Service is recreated.
    api.kubectl_ok(&["set", "image", "deployment/hello", "hello=attacker/image:1"]);
    wait_object(&api, "the image put back", &["deployment", "hello"], |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] == "kubeless-broker/runtime-python:0.1.0"
    })
    .await;
    let svc_uid = api.kubectl_ok(&["get", "service", "hello", "-o", "jsonpath={.metadata.uid}"]);
    api.kubectl_ok(&["delete", "service", "hello"]);
    wait_object(&api, "the Service recreated", &["service", "hello"], |s| s["metadata"]["uid"] != svc_uid.as_str())
        .await;

    // Dropping the HPA from the spec deletes it.
    let full = kubeless_function("hello", &code2, &sha256(&code2), "");
    api.apply_ok(full.split("  horizontalPodAutoscaler:").next().unwrap_or_default());
    wait_for("the HPA deleted", Duration::from_secs(60), || api.get_json(&["hpa", "hello"]).is_none()).await;
    assert!(daemon.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_hpa_the_reconciler_leaves_the_replica_count_to_it() {
    let (api, _daemon) = cluster_and_daemon().await;
    // A replica count in spec.deployment, beside an HPA (Kubeless: the HPA wins).
    let yaml = kubeless_function("scaled", CODE, &sha256(CODE), "").replacen(
        "  deployment:\n    spec:\n",
        "  deployment:\n    spec:\n      replicas: 3\n",
        1,
    );
    api.apply_ok(&yaml);
    wait_object(&api, "the Deployment", &["deployment", "scaled"], |_| true).await;
    // The HPA scales it (through the scale subresource, as the controller does).
    api.kubectl_ok(&["scale", "deployment", "scaled", "--replicas=5"]);
    api.wait_jsonpath(&["get", "deployment", "scaled"], "{.spec.replicas}", |r| r == "5").await;
    // A change to the Function makes the reconciler apply the Deployment again.
    api.kubectl_ok(&["label", "function", "scaled", "touched=yes"]);
    api.wait_jsonpath(&["get", "deployment", "scaled"], "{.metadata.labels.touched}", |t| t == "yes").await;
    let replicas = api.kubectl_ok(&["get", "deployment", "scaled", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "5", "the reconciler undid the HPA's scaling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_runtime_a_bad_checksum_or_a_foreign_child_gives_ready_false_and_touches_nothing() {
    let (api, _daemon) = cluster_and_daemon().await;

    api.apply_ok(&kubeless_function("odd", CODE, &sha256(CODE), "").replace("python3.9", "cobol85"));
    let (status, _, message) = wait_ready(&api, "odd", |r| r.1 == "UnknownRuntime").await;
    assert_eq!(status, "False");
    assert!(message.contains("cobol85") && message.contains("python3.9") && message.contains("nodejs20"), "{message}");

    api.apply_ok(&kubeless_function("tampered", CODE, &sha256("other code"), ""));
    let (_, _, message) = wait_ready(&api, "tampered", |r| r.1 == "ChecksumMismatch").await;
    assert!(message.contains(&sha256(CODE)), "the message names the code's real checksum: {message}");

    api.apply_ok(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: taken, namespace: default}\ndata: {mine: \"yes\"}\n",
    );
    api.apply_ok(&kubeless_function("taken", CODE, &sha256(CODE), ""));
    let (_, _, message) = wait_ready(&api, "taken", |r| r.1 == "Conflict").await;
    assert!(message.contains("ConfigMap default/taken") && message.contains("created-by=kubeless"), "{message}");

    // Nothing was created or changed for any of them.
    for name in ["odd", "tampered", "taken"] {
        for kind in ["deployment", "service", "hpa"] {
            assert!(api.get_json(&[kind, name]).is_none(), "{kind} {name} was created");
        }
    }
    assert!(api.get_json(&["configmap", "odd"]).is_none() && api.get_json(&["configmap", "tampered"]).is_none());
    let taken = api.get_json(&["configmap", "taken"]).expect("the user's ConfigMap");
    assert_eq!(taken["data"], json!({"mine": "yes"}));
    assert!(taken["metadata"]["ownerReferences"].is_null(), "{taken}");

    // Fixed, it deploys.
    api.apply_ok(&kubeless_function("odd", CODE, &sha256(CODE), ""));
    wait_ready(&api, "odd", |r| r.1 == "Deploying").await;
    assert!(api.get_json(&["deployment", "odd"]).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_left_with_kubeless_finalizer_deletes_cleanly_with_its_children() {
    let (api, _daemon) = cluster_and_daemon().await;
    let finalizer = "  finalizers: [kubeless.io/function]\n";
    api.apply_ok(&kubeless_function("legacy", CODE, &sha256(CODE), finalizer));
    wait_object(&api, "the Deployment", &["deployment", "legacy"], |_| true).await;
    wait_object(&api, "the HPA", &["hpa", "legacy"], |_| true).await;

    // kubectl delete waits for the object to go: it would hang on a finalizer nobody removes.
    let out = api.kubectl(&["delete", "function", "legacy", "--timeout=60s"]);
    assert!(out.status.success(), "delete hung or failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(api.get_json(&["function", "legacy"]).is_none());
    // No garbage collector runs here: the children went because the finalizer was handled.
    wait_for("the children deleted", Duration::from_secs(30), || {
        ["configmap", "service", "deployment", "hpa"].iter().all(|k| api.get_json(&[k, "legacy"]).is_none())
    })
    .await;
}

fn http_trigger(name: &str, function: &str, gateway: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: HTTPTrigger\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{created-by: kubeless}}\n  annotations: {{team: shop}}\nspec:\n  function-name: {function}\n  host-name: example.com\n  path: echo\n  tls-secret: example-cert\n  basic-auth-secret: users\n  gateway: {gateway}\n"
    )
}

/// The keys of a JSON object whose values differ between `a` and `b` (present in either).
fn changed_keys(a: &Value, b: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
    let mut keys: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_trigger_becomes_the_ingress_nginx_expects_and_a_gateway_change_changes_only_what_it_must() {
    let (api, _daemon) = cluster_and_daemon().await;
    // The trigger first: its Function does not exist yet.
    api.apply_ok(&http_trigger("web", "get-python", "nginx"));
    let condition = |field: &str| format!("{{.status.conditions[?(@.type==\"Ready\")].{field}}}");
    api.wait_jsonpath(&["get", "httptrigger", "web"], &condition("reason"), |r| r == "FunctionNotFound").await;
    assert!(api.get_json(&["ingress", "web"]).is_none());

    // The Function appearing makes the Ingress.
    api.apply_ok(&kubeless_function("get-python", CODE, &sha256(CODE), ""));
    let nginx = wait_object(&api, "the Ingress", &["ingress.v1.networking.k8s.io", "web"], |_| true).await;
    assert_eq!(nginx["spec"]["ingressClassName"], "nginx");
    assert_eq!(
        nginx["spec"]["rules"],
        json!([{"host": "example.com", "http": {"paths": [{"path": "/echo", "pathType": "Prefix",
            "backend": {"service": {"name": "get-python", "port": {"number": 8080}}}}]}}])
    );
    assert_eq!(nginx["spec"]["tls"], json!([{"hosts": ["example.com"], "secretName": "example-cert"}]));
    let a = &nginx["metadata"]["annotations"];
    assert_eq!(a["nginx.ingress.kubernetes.io/auth-type"], "basic");
    assert_eq!(a["nginx.ingress.kubernetes.io/auth-secret"], "users");
    assert_eq!(a["nginx.ingress.kubernetes.io/rewrite-target"], "/");
    assert_eq!(a["team"], "shop", "the trigger's annotations are copied");
    let uid = api.kubectl_ok(&["get", "httptrigger", "web", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(nginx["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    assert_eq!(nginx["metadata"]["ownerReferences"][0]["controller"], true);
    api.wait_jsonpath(&["get", "httptrigger", "web"], &condition("status"), |s| s == "True").await;
    let message = api.kubectl_ok(&["get", "httptrigger", "web", "-o", &format!("jsonpath={}", condition("message"))]);
    assert_eq!(message, "Ingress default/web routes https://example.com/echo to Service get-python port 8080");

    // nginx → traefik: the class and the gateway's own annotations change; nothing else does.
    api.apply_ok(&http_trigger("web", "get-python", "traefik"));
    let traefik = wait_object(&api, "the traefik Ingress", &["ingress.v1.networking.k8s.io", "web"], |i| {
        i["spec"]["ingressClassName"] == "traefik"
    })
    .await;
    assert_eq!(changed_keys(&nginx["spec"], &traefik["spec"]), ["ingressClassName"]);
    assert_eq!(
        changed_keys(&nginx["metadata"]["annotations"], &traefik["metadata"]["annotations"]),
        [
            "ingress.kubernetes.io/auth-secret",
            "ingress.kubernetes.io/auth-type",
            "nginx.ingress.kubernetes.io/auth-secret",
            "nginx.ingress.kubernetes.io/auth-type",
            "nginx.ingress.kubernetes.io/rewrite-target",
        ]
    );
    let a = &traefik["metadata"]["annotations"];
    assert!(a["nginx.ingress.kubernetes.io/auth-type"].is_null());
    assert_eq!(a["ingress.kubernetes.io/auth-type"], "basic");
    assert_eq!(nginx["metadata"]["labels"], traefik["metadata"]["labels"]);

    // A hand-deleted Ingress is made again.
    api.kubectl_ok(&["delete", "ingress.v1.networking.k8s.io", "web"]);
    wait_object(&api, "the Ingress made again", &["ingress.v1.networking.k8s.io", "web"], |i| {
        i["metadata"]["uid"] != traefik["metadata"]["uid"]
    })
    .await;
}
