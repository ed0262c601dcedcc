//! The admin HTTP server: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/status`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::control::supervisor::{ConsumerStatus, Supervisor};
use crate::control::watch::{Report, SharedReport};

#[derive(Clone)]
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    pub supervisor: Arc<Supervisor>,
    pub report: SharedReport,
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

/// Why the daemon is not ready, if it is not: manifests not read yet, or consumers without their
/// partitions (or failing).
pub fn not_ready(report: &Report, consumers: &[ConsumerStatus]) -> Vec<String> {
    let mut why = Vec::new();
    if !report.loaded {
        why.push("manifests not loaded yet".to_string());
    }
    for c in consumers.iter().filter(|c| !c.ready) {
        why.push(format!("{} -> {} (group {}): {}", c.trigger, c.function, c.group, c.state));
    }
    why
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let report = s.report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let why = not_ready(&report, &s.supervisor.status());
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n{}\n", why.join("\n"))).into_response()
    }
}

#[derive(serde::Serialize)]
struct StatusBody {
    #[serde(flatten)]
    report: Report,
    consumers: Vec<ConsumerStatus>,
}

async fn status(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let report = s.report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let body = StatusBody { report, consumers: s.supervisor.status() };
    Json(serde_json::to_value(body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(ready: bool) -> ConsumerStatus {
        ConsumerStatus {
            trigger: "ns/t".into(),
            function: "f".into(),
            group: "g".into(),
            topics: vec!["a".into()],
            url: "http://f".into(),
            state: if ready { "Ready".into() } else { "Starting".into() },
            ready,
            lag: 0,
        }
    }

    #[test]
    fn ready_only_once_manifests_loaded_and_every_consumer_has_partitions() {
        let loaded = Report { loaded: true, ..Report::default() };
        assert_eq!(not_ready(&Report::default(), &[]), ["manifests not loaded yet"]);
        assert!(not_ready(&loaded, &[consumer(true), consumer(true)]).is_empty());
        let why = not_ready(&loaded, &[consumer(true), consumer(false)]);
        assert_eq!(why, ["ns/t -> f (group g): Starting"]);
    }
}
