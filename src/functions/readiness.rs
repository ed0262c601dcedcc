//! Whether a Function is ready, and if not why, from its Deployment and pods: what `kubectl get
//! functions` shows in READY and what `kubectl describe` explains.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The `Ready` condition's status, reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

impl Readiness {
    pub fn not(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { ready: false, reason: reason.into(), message: message.into() }
    }
}

/// Waiting reasons that will not clear on their own.
const STUCK: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The first pod container (init containers first) stuck for a reason in [`STUCK`].
fn stuck(pods: &[Pod]) -> Option<Readiness> {
    pods.iter().find_map(|pod| {
        let status = pod.status.as_ref()?;
        let all = status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
        all.filter_map(|c: &ContainerStatus| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref().filter(|r| STUCK.contains(r))?;
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            let detail = waiting.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            Some(Readiness::not(reason, format!("pod {pod_name} container {}: {reason}{detail}", c.name)))
        })
        .next()
    })
}

/// Ready when the Deployment controller has seen the latest spec and reports it Available with
/// every replica updated; else the most useful reason it is not.
pub fn readiness(deployment: &Deployment, pods: &[Pod]) -> Readiness {
    if let Some(stuck) = stuck(pods) {
        return stuck;
    }
    let generation = deployment.metadata.generation.unwrap_or(0);
    let Some(status) = deployment.status.as_ref().filter(|s| s.observed_generation.unwrap_or(0) >= generation) else {
        return Readiness::not("Deploying", "waiting for the Deployment controller to roll out the latest spec");
    };
    let conditions = status.conditions.iter().flatten();
    let condition = |t: &str| conditions.clone().find(|c| c.type_ == t);
    if let Some(c) = condition("Progressing").filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
        return Readiness::not("ProgressDeadlineExceeded", c.message.clone().unwrap_or_default());
    }
    let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let is_available = condition("Available").is_some_and(|c| c.status == "True");
    if is_available && updated >= desired && total == updated && available >= desired.min(1) {
        return Readiness {
            ready: true,
            reason: "Available".to_string(),
            message: format!("{available}/{desired} replicas available"),
        };
    }
    Readiness::not("Deploying", format!("{available}/{desired} replicas available, {updated} updated"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(json: serde_json::Value) -> Deployment {
        serde_json::from_value(json).expect("deployment")
    }

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("pod")
    }

    #[test]
    fn available_with_every_replica_updated_is_ready() {
        let d = deployment(serde_json::json!({
            "metadata": {"generation": 2}, "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                       "conditions": [{"type": "Available", "status": "True"}]}
        }));
        let r = readiness(&d, &[]);
        assert!(r.ready, "{r:?}");
        assert_eq!(r.message, "2/2 replicas available");
    }

    #[test]
    fn a_rollout_in_progress_or_unseen_is_not_ready() {
        let unseen = deployment(serde_json::json!({
            "metadata": {"generation": 3}, "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
                       "conditions": [{"type": "Available", "status": "True"}]}
        }));
        assert_eq!(readiness(&unseen, &[]).reason, "Deploying");
        let rolling = deployment(serde_json::json!({
            "metadata": {"generation": 3}, "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
                       "conditions": [{"type": "Available", "status": "True"}]}
        }));
        let r = readiness(&rolling, &[]);
        assert!(!r.ready && r.reason == "Deploying", "old and new pods both running: {r:?}");
        let stalled = deployment(serde_json::json!({
            "metadata": {"generation": 1}, "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "conditions": [
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}
        }));
        assert_eq!(readiness(&stalled, &[]), Readiness::not("ProgressDeadlineExceeded", "too slow"));
    }

    #[test]
    fn an_image_pull_or_crash_loop_in_any_pod_container_is_named() {
        let d =
            deployment(serde_json::json!({"metadata": {"generation": 1}, "spec": {"selector": {}, "template": {}}}));
        let pulling = pod(serde_json::json!({"metadata": {"name": "f-1"}, "status": {"containerStatuses": [
            {"name": "f", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"x\""}}}]}}));
        let r = readiness(&d, &[pulling]);
        assert_eq!(r.reason, "ImagePullBackOff");
        assert_eq!(r.message, "pod f-1 container f: ImagePullBackOff: Back-off pulling image \"x\"");
        let init = pod(serde_json::json!({"metadata": {"name": "f-2"}, "status": {"initContainerStatuses": [
            {"name": "prepare", "image": "x", "imageID": "", "ready": false, "restartCount": 4,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}));
        let r = readiness(&d, &[init]);
        assert_eq!(
            (r.reason.as_str(), r.message.as_str()),
            ("CrashLoopBackOff", "pod f-2 container prepare: CrashLoopBackOff")
        );
        let starting = pod(serde_json::json!({"metadata": {"name": "f-3"}, "status": {"containerStatuses": [
            {"name": "f", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}}]}}));
        assert_eq!(readiness(&d, &[starting]).reason, "Deploying", "a container still starting is not stuck");
    }
}
