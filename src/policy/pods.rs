//! What a Function's pods, Service and HTTPTrigger may ask for in a shared cluster: the subset of
//! the Pod Security Standards' *restricted* profile a function needs, checked on what the author
//! wrote (`spec.deployment`'s pod template, `spec.service`, the trigger's annotations and host)
//! before anything is written; `kubeless-config` (its Deployment template, its Service type) is the
//! admin's and is not checked. Refused objects are never written.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ServiceSpec};

use super::glob_matches;

/// The one capability the restricted profile lets a container add.
const ADDABLE_CAPABILITY: &str = "NET_BIND_SERVICE";

/// The admin's limits on Function pods, Services and Ingresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPolicy {
    pub enforced: bool,
    /// ServiceAccounts a Function's pods may run as (an empty name is the namespace's `default`).
    pub service_accounts: Vec<String>,
    /// Pods may mount their ServiceAccount's token. Off: `automountServiceAccountToken: false` is
    /// set on every pod that does not ask for it, and a pod asking for it is refused.
    pub automount_token: bool,
    /// Service types a Function may ask for.
    pub service_types: Vec<String>,
    /// Annotations a user may put on an HTTPTrigger (globs) beyond those the gateway mapping
    /// writes; `*-snippet` is refused whatever this says (CVE-2021-25742).
    pub ingress_annotations: Vec<String>,
    /// Domains an HTTPTrigger's `host-name` must be in (`example.com` allows `a.example.com` and
    /// `example.com`); empty: any.
    pub ingress_domains: Vec<String>,
}

impl Default for PodPolicy {
    fn default() -> Self {
        Self {
            enforced: true,
            service_accounts: vec!["default".to_string()],
            automount_token: false,
            service_types: vec!["ClusterIP".to_string()],
            ingress_annotations: Vec::new(),
            ingress_domains: Vec::new(),
        }
    }
}

/// One thing a Function or HTTPTrigger asks for that the policy does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {what}")]
pub struct Violation {
    /// Where, in the object the reconciler writes (e.g. `spec.template.spec.hostNetwork`).
    pub field: String,
    pub what: String,
}

fn violation(field: impl Into<String>, what: impl Into<String>) -> Violation {
    Violation { field: field.into(), what: what.into() }
}

/// The violations as one line for a status message.
pub fn describe(violations: &[Violation]) -> String {
    let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
    format!("refused by the cluster's function policy: {}", list.join("; "))
}

impl PodPolicy {
    pub fn trusted() -> Self {
        Self {
            enforced: false,
            service_accounts: Vec::new(),
            automount_token: true,
            service_types: Vec::new(),
            ingress_annotations: Vec::new(),
            ingress_domains: Vec::new(),
        }
    }

    /// Turns off token automounting on the pod a Function becomes, unless the policy allows it or
    /// the pod (the admin's template) says otherwise.
    pub fn harden(&self, pod: &mut PodSpec) {
        if self.enforced && !self.automount_token && pod.automount_service_account_token.is_none() {
            pod.automount_service_account_token = Some(false);
        }
    }

    /// Checks the pod template a Function's author wrote (`field` is its path).
    pub fn check_pod(&self, pod: &PodSpec, field: &str) -> Result<(), Vec<Violation>> {
        if !self.enforced {
            return Ok(());
        }
        let mut out = Vec::new();
        for (flag, name) in [(pod.host_network, "hostNetwork"), (pod.host_pid, "hostPID"), (pod.host_ipc, "hostIPC")] {
            if flag == Some(true) {
                out.push(violation(format!("{field}.{name}"), "host namespaces are not allowed"));
            }
        }
        if pod.host_users == Some(true) {
            out.push(violation(format!("{field}.hostUsers"), "host user namespaces are not allowed"));
        }
        for (i, v) in pod.volumes.iter().flatten().enumerate() {
            if v.host_path.is_some() {
                out.push(violation(format!("{field}.volumes[{i}].hostPath"), "hostPath volumes are not allowed"));
            }
        }
        if let Some(sc) = &pod.security_context {
            if sc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
                out.push(violation(format!("{field}.securityContext.sysctls"), "sysctls are not allowed"));
            }
        }
        let account = pod.service_account_name.clone().or_else(|| pod.service_account.clone()).unwrap_or_default();
        let account = if account.is_empty() { "default".to_string() } else { account };
        if !self.service_accounts.contains(&account) {
            out.push(violation(
                format!("{field}.serviceAccountName"),
                format!(
                    "{account:?} is not one of the ServiceAccounts functions may use ({})",
                    self.service_accounts.join(", ")
                ),
            ));
        }
        if !self.automount_token && pod.automount_service_account_token == Some(true) {
            out.push(violation(
                format!("{field}.automountServiceAccountToken"),
                "mounting the ServiceAccount token is not allowed",
            ));
        }
        let groups = [("initContainers", &pod.init_containers), ("containers", &Some(pod.containers.clone()))];
        for (group, containers) in groups {
            for (i, c) in containers.iter().flatten().enumerate() {
                check_container(c, &format!("{field}.{group}[{i}]"), &mut out);
            }
        }
        for (i, c) in pod.ephemeral_containers.iter().flatten().enumerate() {
            if c.security_context.as_ref().and_then(|s| s.privileged) == Some(true) {
                out.push(violation(
                    format!("{field}.ephemeralContainers[{i}]"),
                    "privileged containers are not allowed",
                ));
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// Checks a Function's `spec.service`. No type is the admin's (`kubeless-config`'s
    /// `service-type`, else ClusterIP).
    pub fn check_service(&self, spec: &ServiceSpec) -> Result<(), Vec<Violation>> {
        if !self.enforced {
            return Ok(());
        }
        let mut out = Vec::new();
        if let Some(kind) = spec.type_.as_ref().filter(|k| !self.service_types.contains(k)) {
            out.push(violation(
                "spec.service.type",
                format!("{kind} is not one of the Service types functions may use ({})", self.service_types.join(", ")),
            ));
        }
        if spec.external_ips.as_ref().is_some_and(|ips| !ips.is_empty()) {
            out.push(violation("spec.service.externalIPs", "external IPs are not allowed (CVE-2020-8554)"));
        }
        if spec.external_name.is_some() {
            out.push(violation("spec.service.externalName", "ExternalName Services are not allowed"));
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// Checks the annotations a user put on an HTTPTrigger (copied to its Ingress) and its host.
    pub fn check_ingress(&self, user_annotations: &BTreeMap<String, String>, host: &str) -> Result<(), Vec<Violation>> {
        let mut out = Vec::new();
        // kubectl's own bookkeeping (last-applied-configuration) is never copied.
        for key in user_annotations.keys().filter(|k| !k.starts_with("kubectl.kubernetes.io/")) {
            if key.to_ascii_lowercase().ends_with("-snippet") {
                // Never, even trusted: an nginx snippet runs as the ingress controller.
                out.push(violation(
                    format!("metadata.annotations[{key}]"),
                    "configuration snippets are never copied to an Ingress (CVE-2021-25742)",
                ));
            } else if self.enforced && !self.ingress_annotations.iter().any(|p| glob_matches(p, key)) {
                out.push(violation(
                    format!("metadata.annotations[{key}]"),
                    "is not an Ingress annotation functions may set (the admin lists them with --ingress-annotation-allow)",
                ));
            }
        }
        if self.enforced && !self.ingress_domains.is_empty() {
            let host = host.to_ascii_lowercase();
            let inside = self.ingress_domains.iter().any(|d| {
                let d = d.trim_start_matches("*.").to_ascii_lowercase();
                host == d || host.ends_with(&format!(".{d}"))
            });
            if !inside {
                out.push(violation(
                    "spec.host-name",
                    format!(
                        "{host:?} is not in the domains functions may be exposed on ({})",
                        self.ingress_domains.join(", ")
                    ),
                ));
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }
}

fn check_container(c: &Container, field: &str, out: &mut Vec<Violation>) {
    for (i, p) in c.ports.iter().flatten().enumerate() {
        if p.host_port.is_some_and(|h| h != 0) {
            out.push(violation(format!("{field}.ports[{i}].hostPort"), "host ports are not allowed"));
        }
    }
    let Some(sc) = &c.security_context else { return };
    if sc.privileged == Some(true) {
        out.push(violation(format!("{field}.securityContext.privileged"), "privileged containers are not allowed"));
    }
    if sc.allow_privilege_escalation == Some(true) {
        out.push(violation(
            format!("{field}.securityContext.allowPrivilegeEscalation"),
            "privilege escalation is not allowed",
        ));
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        out.push(violation(format!("{field}.securityContext.procMount"), "only the Default proc mount is allowed"));
    }
    for cap in sc.capabilities.iter().flat_map(|c| c.add.iter().flatten()) {
        if cap.trim_start_matches("CAP_") != ADDABLE_CAPABILITY {
            out.push(violation(
                format!("{field}.securityContext.capabilities.add"),
                format!("{cap} may not be added (only {ADDABLE_CAPABILITY})"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> PodSpec {
        serde_yaml::from_str(yaml).expect("pod spec")
    }

    #[test]
    fn a_plain_function_pod_passes_and_loses_its_token() {
        let mut p = pod("containers: [{name: f, image: i, ports: [{containerPort: 8080}]}]");
        PodPolicy::default().check_pod(&p, "spec").expect("allowed");
        PodPolicy::default().harden(&mut p);
        assert_eq!(p.automount_service_account_token, Some(false));
        let allowing = PodPolicy { automount_token: true, ..PodPolicy::default() };
        let mut p = pod("containers: [{name: f, image: i}]");
        allowing.harden(&mut p);
        assert_eq!(p.automount_service_account_token, None, "left to the ServiceAccount");
        let mut admins = pod("automountServiceAccountToken: true\ncontainers: [{name: f, image: i}]");
        PodPolicy::default().harden(&mut admins);
        assert_eq!(admins.automount_service_account_token, Some(true), "the admin's template says so");
    }

    #[test]
    fn each_dangerous_pod_field_is_named() {
        let p = pod(r#"
hostNetwork: true
hostPID: true
serviceAccountName: cluster-admin
automountServiceAccountToken: true
volumes: [{name: root, hostPath: {path: /}}]
initContainers: [{name: i, image: i, securityContext: {capabilities: {add: [SYS_ADMIN, NET_BIND_SERVICE]}}}]
containers:
- name: f
  image: i
  ports: [{containerPort: 80, hostPort: 80}]
  securityContext: {privileged: true, allowPrivilegeEscalation: true}
"#);
        let errors = PodPolicy::default().check_pod(&p, "spec.template.spec").expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|v| v.field.as_str()).collect();
        for want in [
            "spec.template.spec.hostNetwork",
            "spec.template.spec.hostPID",
            "spec.template.spec.volumes[0].hostPath",
            "spec.template.spec.serviceAccountName",
            "spec.template.spec.automountServiceAccountToken",
            "spec.template.spec.initContainers[0].securityContext.capabilities.add",
            "spec.template.spec.containers[0].ports[0].hostPort",
            "spec.template.spec.containers[0].securityContext.privileged",
            "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        assert_eq!(errors.len(), 9, "NET_BIND_SERVICE may be added: {errors:?}");
        PodPolicy::trusted().check_pod(&p, "spec").expect("trusted: anything");
    }

    #[test]
    fn services_are_cluster_ip_without_external_ips() {
        let svc = |spec: &str| -> ServiceSpec { serde_yaml::from_str(spec).expect("service spec") };
        let policy = PodPolicy::default();
        policy.check_service(&svc("{ports: [{port: 8080}]}")).expect("the admin's type");
        policy.check_service(&svc("{type: ClusterIP}")).expect("ClusterIP");
        let errors = policy.check_service(&svc("{type: LoadBalancer, externalIPs: [1.2.3.4]}")).expect_err("refused");
        assert_eq!(errors.len(), 2, "{errors:?}");
        let loose = PodPolicy { service_types: vec!["ClusterIP".into(), "NodePort".into()], ..PodPolicy::default() };
        loose.check_service(&svc("{type: NodePort}")).expect("allowed by the admin");
    }

    #[test]
    fn ingress_snippets_are_never_allowed_and_other_annotations_only_when_listed() {
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let policy = PodPolicy {
            ingress_annotations: vec!["nginx.ingress.kubernetes.io/proxy-*".into()],
            ingress_domains: vec!["apps.example.com".into()],
            ..PodPolicy::default()
        };
        policy
            .check_ingress(&ann(&[("nginx.ingress.kubernetes.io/proxy-body-size", "8m")]), "f.apps.example.com")
            .expect("listed");
        let errors = policy
            .check_ingress(
                &ann(&[
                    ("nginx.ingress.kubernetes.io/configuration-snippet", "more_set_headers x;"),
                    ("nginx.ingress.kubernetes.io/whitelist-source-range", "0.0.0.0/0"),
                ]),
                "evil.example.org",
            )
            .expect_err("refused");
        assert_eq!(errors.len(), 3, "{errors:?}");
        let snippet = ann(&[("nginx.ingress.kubernetes.io/server-snippet", "x")]);
        assert!(PodPolicy::trusted().check_ingress(&snippet, "any").is_err(), "never, even trusted");
        assert!(PodPolicy::default().check_ingress(&ann(&[]), "anything.example").is_ok(), "no domain list: any host");
    }
}
