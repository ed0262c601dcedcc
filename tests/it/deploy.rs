//! deploy/ is checked, not trusted: every manifest validates (offline schemas for Kubernetes 1.25
//! and 1.33, and a server-side dry run on the real 1.20 API server where it serves the kind), and
//! what the manifests say agrees with the code (flags, ports, probes, drain time, metric names).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::kubeapi::KubeApi;
use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

fn manifests() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = ["", "monitoring"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(deploy(dir)).expect("deploy/"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    all.sort();
    all
}

#[test]
fn every_manifest_validates_against_kubernetes_1_25_and_1_33_schemas() {
    let files = manifests();
    assert!(files.len() >= 7, "{files:?}");
    for version in ["1.25", "1.33"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .args(&files)
            .output()
            .expect("kubernetes-validate (scripts/install-deps installs it)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{version}:\n{text}");
        for line in text.lines().filter(|l| !l.starts_with("INFO")) {
            // The Prometheus Operator's kind has no upstream schema; it is checked below.
            assert!(line.contains("servicemonitor.yaml") && line.contains("Couldn't find schema"), "{version}: {line}");
        }
        let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains("passed")).count();
        assert_eq!(passed, 16, "every object but the ServiceMonitor passed:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_pass_a_server_side_dry_run_on_a_real_api_server() {
    let api = KubeApi::start().await;
    // CRDs and the namespace for real (what follows is namespaced and names them).
    for file in ["00-crds.yaml", "01-namespace.yaml"] {
        let out = api.kubectl(&["apply", "-f", &deploy(file).display().to_string()]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // 1.20 has no policy/v1 (PodDisruptionBudget, 1.21+): that one is validated offline above.
    for file in ["02-rbac.yaml", "03-deployment.yaml", "04-service.yaml", "06-networkpolicy.yaml"] {
        let out = api.kubectl(&["apply", "--dry-run=server", "-f", &deploy(file).display().to_string()]);
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn the_deployment_agrees_with_the_daemons_flags_and_admin_server() {
    let d: Deployment = serde_yaml::from_str(&read("03-deployment.yaml")).expect("Deployment");
    let spec = d.spec.expect("spec");
    assert!(spec.replicas.unwrap_or(1) >= 2, "replicated");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("kubeless-broker"));
    let c = &pod.containers[0];
    // The daemon accepts every argument, and the settings follow.
    let mut argv = vec!["kubeless-broker".to_string()];
    argv.extend(c.args.clone().unwrap_or_default());
    let args = kubeless_broker::config::Args::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    assert!(grace as u64 > args.drain_timeout.as_secs(), "grace {grace}s must exceed --drain-timeout");
    let port = c.ports.as_ref().and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("metrics"))).expect("port");
    assert_eq!(port.container_port, i32::from(args.admin_addr.port()));
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone()).unwrap_or_default()
    };
    assert_eq!(path(&c.liveness_probe), "/healthz");
    assert_eq!(path(&c.readiness_probe), "/readyz");
    // Identity for leases and Events from the downward API.
    let env = c.env.clone().unwrap_or_default();
    for (name, field) in [("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")] {
        let from = env.iter().find(|e| e.name == name).and_then(|e| e.value_from.as_ref());
        assert_eq!(from.and_then(|f| f.field_ref.as_ref()).map(|f| f.field_path.as_str()), Some(field), "{name}");
    }
    // Hardened: non-root, read-only root, no privilege escalation, every capability dropped.
    let pod_sc = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    let sc = c.security_context.clone().expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]));
    let resources = c.resources.clone().expect("resources");
    assert!(resources.requests.is_some() && resources.limits.is_some());
    // The state directory is writable (an emptyDir), the root filesystem is not.
    let state = args.state_dir.expect("--state-dir");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| Path::new(&m.mount_path) == state), "{state:?} is mounted");
}

#[test]
fn the_service_monitor_scrapes_the_metrics_service() {
    let svc: Service = serde_yaml::from_str(&read("04-service.yaml")).expect("Service");
    let monitor: serde_json::Value = serde_yaml::from_str(&read("monitoring/servicemonitor.yaml")).expect("YAML");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    let labels = svc.metadata.labels.clone().unwrap_or_default();
    let wanted = monitor["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    assert!(!wanted.is_empty());
    for (k, v) in wanted {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "the Service carries {k}");
    }
    let ports: Vec<String> =
        svc.spec.and_then(|s| s.ports).unwrap_or_default().into_iter().filter_map(|p| p.name).collect();
    for e in monitor["spec"]["endpoints"].as_array().expect("endpoints") {
        assert!(ports.iter().any(|p| e["port"] == p.as_str()), "endpoint {e} names a Service port: {ports:?}");
        assert_eq!(e["path"], "/metrics");
    }
    let namespaces = &monitor["spec"]["namespaceSelector"]["matchNames"];
    assert_eq!(namespaces[0].as_str(), svc.metadata.namespace.as_deref());
}

#[test]
fn the_network_policy_admits_only_prometheus_to_the_broker_pods_metrics_port() {
    let d: Deployment = serde_yaml::from_str(&read("03-deployment.yaml")).expect("Deployment");
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_yaml::from_str(&read("06-networkpolicy.yaml")).expect("NetworkPolicy");
    let spec = policy.spec.expect("spec");
    let pod_labels = d.spec.and_then(|s| s.template.metadata).and_then(|m| m.labels).unwrap_or_default();
    let selector = spec.pod_selector.clone().and_then(|s| s.match_labels).unwrap_or_default();
    assert!(!selector.is_empty(), "the policy selects pods by label");
    for (k, v) in selector {
        assert_eq!(pod_labels.get(&k), Some(&v), "the policy selects the broker's pods by {k}");
    }
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let rules = spec.ingress.expect("ingress rules");
    assert_eq!(rules.len(), 1, "one way in");
    let ports = rules[0].ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into()))
    );
    let from = rules[0].from.clone().unwrap_or_default();
    assert!(!from.is_empty() && from.iter().all(|p| p.pod_selector.is_some()), "only selected pods: {from:?}");
}
