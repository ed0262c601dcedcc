//! The admin HTTP server: `/metrics` (Prometheus), `/healthz`, `/readyz` and `/status`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
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
    /// The bearer token `/status` asks of callers on the admin address.
    pub token: Option<AdminToken>,
    /// The functions run locally (standalone mode).
    pub local: crate::local::LocalReports,
    /// The HTTPTriggers the local gateway serves (standalone mode).
    pub gateway: crate::local::gateway::GatewayReports,
}

/// The bearer token of `/status` (`--admin-token-file`), kept as its digest and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        use sha2::Digest as _;
        Self(sha2::Sha256::digest(token.trim().as_bytes()).into())
    }

    /// Whether `header` (an `Authorization` value) carries this token. Digests are compared, so the
    /// time taken says nothing about the token.
    fn admits(&self, header: Option<&str>) -> bool {
        let given = header.and_then(|h| h.strip_prefix("Bearer ")).map(|t| Self::new(t).0);
        given == Some(self.0)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// The admin address's routes: `/status` there answers only the bearer of `--admin-token-file`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

/// The status address's one route (`--status-addr`, loopback by default): `/status` for whoever
/// can reach it, i.e. processes of the pod and `kubectl port-forward`.
pub fn status_router(state: AdminState) -> Router {
    Router::new().route("/status", get(|State(s): State<AdminState>| async move { status_body(&s) })).with_state(state)
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(stop).await
}

async fn metrics(State(s): State<AdminState>) -> String {
    s.prometheus.render()
}

/// Why the daemon is not ready, if it is not: resources not read yet, or watches of the API
/// server failing. A trigger's own trouble (a broker down, partitions not assigned, a refused
/// spec) is in its status, Events and metrics, never here: one team's trigger must not hold up the
/// rollout or the node drains of a daemon that serves every team.
pub fn not_ready(report: &SourceReport, loaded: bool) -> Vec<String> {
    let mut why = Vec::new();
    if !loaded {
        why.push("resources not loaded yet".to_string());
    }
    for (what, error) in &report.api_errors {
        why.push(format!("{what}: {error}"));
    }
    why
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let report = lock_report(&s.report).clone();
    let loaded = s.snapshot.borrow().loaded;
    let why = not_ready(&report, loaded);
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
    /// The functions the daemon runs itself (standalone mode), by `namespace/name`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    local_functions: std::collections::BTreeMap<String, crate::local::LocalReport>,
    /// The HTTPTriggers the local gateway serves, or why not (standalone mode).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gateway_routes: Vec<crate::local::gateway::GatewayReport>,
}

#[derive(serde::Serialize)]
struct ObjectProblem {
    object: String,
    reason: &'static str,
    problem: String,
}

/// `/status` on the admin address: it lists every team's triggers, groups and function URLs, so
/// only for the bearer of `--admin-token-file`; without one it is on `--status-addr` only. (A
/// check of the caller's address would not do: behind a service-mesh sidecar every caller comes
/// from loopback.)
async fn status(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match &s.token {
        Some(token) if token.admits(authorization) => status_body(&s).into_response(),
        Some(_) => (StatusCode::FORBIDDEN, "/status needs the bearer token of --admin-token-file\n").into_response(),
        None => (
            StatusCode::FORBIDDEN,
            "/status is served on --status-addr (loopback: kubectl port-forward), or here with --admin-token-file\n",
        )
            .into_response(),
    }
}

fn status_body(s: &AdminState) -> Json<serde_json::Value> {
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
        local_functions: s.local.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        gateway_routes: s.gateway.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    Json(serde_json::to_value(body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_resources_loaded_and_watches_healthy_whatever_the_triggers_do() {
        let report = SourceReport::default();
        assert_eq!(not_ready(&report, false), ["resources not loaded yet"]);
        assert!(not_ready(&report, true).is_empty());
        let mut failing = SourceReport::default();
        failing.api_errors.insert("watch KafkaTrigger".into(), "connection refused".into());
        assert_eq!(not_ready(&failing, true), ["watch KafkaTrigger: connection refused"]);
    }

    #[test]
    fn the_status_token_is_checked_and_never_printed() {
        let token = AdminToken::new("s3cret\n");
        assert!(token.admits(Some("Bearer s3cret")));
        assert!(!token.admits(Some("Bearer s3cre")));
        assert!(!token.admits(Some("s3cret")));
        assert!(!token.admits(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
