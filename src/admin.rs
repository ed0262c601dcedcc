//! The admin HTTP server: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/status`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use tokio::sync::watch;

use crate::control::supervisor::{ConsumerStatus, Supervisor};
use crate::control::{lock_report, SharedReport, Snapshot, SourceReport};

#[derive(Clone)]
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    pub supervisor: Arc<Supervisor>,
    pub report: SharedReport,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> String {
    s.prometheus.render()
}

/// Why the daemon is not ready, if it is not: resources not read yet, watches of the API server
/// failing, or consumers without their partitions (or failing).
pub fn not_ready(report: &SourceReport, loaded: bool, consumers: &[ConsumerStatus]) -> Vec<String> {
    let mut why = Vec::new();
    if !loaded {
        why.push("resources not loaded yet".to_string());
    }
    for (what, error) in &report.api_errors {
        why.push(format!("{what}: {error}"));
    }
    for c in consumers.iter().filter(|c| !c.ready) {
        why.push(format!("{} -> {} (group {}): {}", c.trigger, c.function, c.group, c.state));
    }
    why
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let report = lock_report(&s.report).clone();
    let loaded = s.snapshot.borrow().loaded;
    let why = not_ready(&report, loaded, &s.supervisor.status());
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", why.join("\n"))).into_response()
    }
}

#[derive(serde::Serialize)]
struct StatusBody {
    #[serde(flatten)]
    report: SourceReport,
    resources: usize,
    /// Objects that are not valid, with why (Kubernetes mode; in standalone mode they are
    /// `manifest_errors`).
    invalid: Vec<ObjectProblem>,
    /// Valid triggers that run no consumer, with why.
    trigger_problems: Vec<ObjectProblem>,
    unserved: Vec<String>,
    consumers: Vec<ConsumerStatus>,
    /// Consumers stopped but still draining in-flight messages and committing.
    stopping: Vec<String>,
}

#[derive(serde::Serialize)]
struct ObjectProblem {
    object: String,
    reason: &'static str,
    problem: String,
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let report = lock_report(&s.report).clone();
    let snapshot = s.snapshot.borrow().clone();
    let invalid = snapshot
        .store
        .invalid()
        .map(|(r, e)| ObjectProblem { object: r.to_string(), reason: "InvalidSpec", problem: e.to_string() })
        .collect();
    let trigger_problems = snapshot
        .desired
        .problems
        .iter()
        .map(|p| ObjectProblem { object: p.trigger.to_string(), reason: p.reason.as_str(), problem: p.problem.clone() })
        .collect();
    let body = StatusBody {
        report,
        resources: snapshot.store.len(),
        invalid,
        trigger_problems,
        unserved: snapshot.desired.unserved.iter().map(ToString::to_string).collect(),
        consumers: s.supervisor.status(),
        stopping: s.supervisor.stopping(),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(ready: bool) -> ConsumerStatus {
        ConsumerStatus {
            kind: crate::control::store::Kind::KafkaTrigger,
            trigger: "ns/t".into(),
            function: "f".into(),
            group: "g".into(),
            topics: vec!["a".into()],
            url: "http://f".into(),
            state: if ready { "Ready".into() } else { "Starting".into() },
            ready,
            lag: 0,
            checkpoint_error: None,
        }
    }

    #[test]
    fn ready_only_once_resources_loaded_watches_healthy_and_every_consumer_has_partitions() {
        let report = SourceReport::default();
        assert_eq!(not_ready(&report, false, &[]), ["resources not loaded yet"]);
        assert!(not_ready(&report, true, &[consumer(true), consumer(true)]).is_empty());
        let why = not_ready(&report, true, &[consumer(true), consumer(false)]);
        assert_eq!(why, ["ns/t -> f (group g): Starting"]);
        let mut failing = SourceReport::default();
        failing.api_errors.insert("watch KafkaTrigger".into(), "connection refused".into());
        assert_eq!(not_ready(&failing, true, &[]), ["watch KafkaTrigger: connection refused"]);
    }
}
