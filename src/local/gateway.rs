//! The local gateway (standalone mode): HTTPTriggers served as a cluster's Ingress would serve
//! them, so that `curl -H 'Host: <host-name>' http://<gateway>/<path>` reaches the function as it
//! did through Kubeless's ingress. Routes follow the manifests: `host-name` (any host when unset)
//! and `path` as a prefix, the longest one winning; the prefix is taken off the path the function
//! sees. The function is its local process (looked up per request, so restarts and code changes
//! are followed) or its `kubeless.io/url`.
//!
//! Not served here, and said so in `/status` rather than served differently: `basic-auth-secret`
//! (serving such a trigger without its password would open what its author closed): its requests
//! are answered 403, never passed to a less specific route. TLS is the cluster's; the gateway
//! speaks plain HTTP, on loopback by default.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, HOST};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::control::Snapshot;
use crate::delivery::route::{Route, Routes};
use crate::delivery::HttpClient;
use crate::resources::{Function, Resource, URL_ANNOTATION};

/// The largest request body relayed (the runtimes' own default limit).
const BODY_LIMIT: usize = 100 << 20;
/// Past the function's timeout, how long the gateway waits for its answer to begin.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// Hop-by-hop headers, never relayed (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

/// Where a route sends requests.
#[derive(Clone)]
enum Target {
    Local(Arc<Route>),
    /// A `kubeless.io/url`, without its credentials (sent as `authorization`).
    Url {
        base: Uri,
        authorization: Option<HeaderValue>,
    },
    /// A trigger that is not served, answering so rather than leaving its requests to a less
    /// specific route.
    Refused(StatusCode),
}

/// One HTTPTrigger, as the gateway serves it.
#[derive(Clone)]
struct GatewayRoute {
    host: Option<String>,
    /// `/` or `/<path>` without a trailing slash.
    prefix: String,
    function: String,
    target: Target,
    timeout: Duration,
}

impl GatewayRoute {
    fn matches(&self, host: &str, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host))
            && (self.prefix == "/" || path == self.prefix || path.starts_with(&format!("{}/", self.prefix)))
    }
}

/// What `/status` shows of one HTTPTrigger in standalone mode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewayReport {
    pub trigger: String,
    pub host: String,
    pub path: String,
    pub function: String,
    /// Why it is not served, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Every HTTPTrigger's report.
pub type GatewayReports = Arc<Mutex<Vec<GatewayReport>>>;

#[derive(Clone)]
struct Gateway {
    table: Arc<ArcSwap<Vec<GatewayRoute>>>,
    http: HttpClient,
}

/// Serves the HTTPTriggers of every snapshot on `listener` until `stop`.
pub async fn run(
    listener: tokio::net::TcpListener,
    http: HttpClient,
    routes: Routes,
    local_functions: bool,
    reports: GatewayReports,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let gateway = Gateway { table: Arc::new(ArcSwap::from_pointee(Vec::new())), http };
    let table = gateway.table.clone();
    let stop_table = stop.clone();
    let rebuild = tokio::spawn(async move {
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            let (built, report) = build(&snapshot, &routes, local_functions);
            table.store(Arc::new(built));
            *reports.lock().unwrap_or_else(|p| p.into_inner()) = report;
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { break },
                () = stop_table.cancelled() => break,
            }
        }
    });
    let app = axum::Router::new().fallback(relay).with_state(gateway);
    let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
    rebuild.abort();
    served
}

/// The routes of the snapshot's HTTPTriggers, and what `/status` says of each.
fn build(snapshot: &Snapshot, routes: &Routes, local_functions: bool) -> (Vec<GatewayRoute>, Vec<GatewayReport>) {
    let functions: Vec<&Function> = snapshot
        .store
        .resources()
        .filter_map(|(_, r)| match r {
            Resource::Function(f) => Some(f),
            _ => None,
        })
        .collect();
    let (mut table, mut reports) = (Vec::new(), Vec::new());
    for (object, resource) in snapshot.store.resources() {
        let Resource::Http(trigger) = resource else { continue };
        let spec = &trigger.spec;
        let ns = object.namespace.as_str();
        let prefix = format!("/{}", spec.path.trim_matches('/'));
        let mut report = GatewayReport {
            trigger: format!("{ns}/{}", object.name),
            host: spec.host_name.clone(),
            path: prefix.clone(),
            function: format!("{ns}/{}", spec.function_name),
            problem: None,
        };
        let function = functions.iter().find(|f| {
            f.metadata.namespace.as_deref() == Some(ns) && f.metadata.name.as_deref() == Some(&spec.function_name)
        });
        let target = match function {
            _ if !spec.basic_auth_secret.is_empty() => Err(
                "spec.basic-auth-secret: basic auth is enforced by a cluster's Ingress; the local gateway does not serve this trigger"
                    .to_string(),
            ),
            None => Err(format!("spec.function-name: Function {ns}/{} does not exist", spec.function_name)),
            Some(f) => target_of(f, routes, local_functions),
        };
        let target = match target {
            Ok(target) => target,
            Err(problem) => {
                report.problem = Some(problem);
                let status = if spec.basic_auth_secret.is_empty() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::FORBIDDEN
                };
                Target::Refused(status)
            }
        };
        table.push(GatewayRoute {
            host: Some(spec.host_name.clone()).filter(|h| !h.is_empty()),
            prefix,
            function: report.function.clone(),
            target,
            timeout: function.map_or(Duration::ZERO, |f| f.timeout()) + TIMEOUT_MARGIN,
        });
        reports.push(report);
    }
    (table, reports)
}

fn target_of(function: &Function, routes: &Routes, local_functions: bool) -> Result<Target, String> {
    if let Some(url) = function.url() {
        let (base, authorization) = crate::delivery::function_target(url).map_err(|e| e.to_string())?;
        return Ok(Target::Url { base, authorization });
    }
    if !local_functions {
        return Err(format!("the Function has no {URL_ANNOTATION} and local functions are off (--local-functions)"));
    }
    let key = format!(
        "{}/{}",
        function.metadata.namespace.as_deref().unwrap_or_default(),
        function.metadata.name.as_deref().unwrap_or_default()
    );
    Ok(Target::Local(routes.route(&key)))
}

fn plain(status: StatusCode, text: String) -> Response {
    (status, format!("{text}\n")).into_response()
}

async fn relay(State(gateway): State<Gateway>, request: Request) -> Response {
    let host =
        request.headers().get(HOST).and_then(|h| h.to_str().ok()).or_else(|| request.uri().host()).unwrap_or_default();
    let host = host.rsplit_once(':').filter(|(_, port)| port.parse::<u16>().is_ok()).map_or(host, |(h, _)| h);
    let host = host.to_string();
    let path = request.uri().path().to_string();
    let table = gateway.table.load();
    let Some(route) =
        table.iter().filter(|r| r.matches(&host, &path)).max_by_key(|r| (r.prefix.len(), r.host.is_some())).cloned()
    else {
        return plain(StatusCode::NOT_FOUND, format!("No HTTPTrigger routes host {host:?} path {path:?}."));
    };
    drop(table);
    // The endpoint is held until the answer has begun, so a replaced process is drained.
    let (base, authorization, endpoint) = match &route.target {
        Target::Refused(status) => {
            return plain(
                *status,
                "This HTTPTrigger is not served by the local gateway (its reason is in /status gateway_routes)."
                    .to_string(),
            )
        }
        Target::Url { base, authorization } => (base.clone(), authorization.clone(), None),
        Target::Local(r) => match r.current() {
            Some(e) => (e.uri.clone(), None, Some(e)),
            None => {
                let mut answer = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Function {} is not serving (starting or restarting).", route.function),
                );
                answer.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return answer;
            }
        },
    };
    let rest = path.strip_prefix(route.prefix.as_str()).filter(|_| route.prefix != "/").unwrap_or(&path);
    let uri = match forwarded_uri(&base, rest, request.uri().query()) {
        Ok(uri) => uri,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("Function {}: {e}", route.function)),
    };
    let (mut parts, body) = request.into_parts();
    let body = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, format!("The body is over {BODY_LIMIT} bytes.")),
    };
    parts.uri = uri;
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    if let Ok(value) = HeaderValue::from_str(&host) {
        parts.headers.insert(HeaderName::from_static("x-forwarded-host"), value);
    }
    parts.headers.remove(HOST);
    if let Some(credentials) = authorization {
        parts.headers.insert(AUTHORIZATION, credentials);
    }
    let forwarded = http::Request::from_parts(parts, Full::new(body));
    let answer = gateway.http.forward(forwarded, route.timeout).await;
    match answer {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in HOP_BY_HOP {
                parts.headers.remove(*name);
            }
            // The process is held until its answer's body has been relayed, not only its headers:
            // a replaced one is stopped only then.
            let body = body.map_frame(move |frame| {
                let _held = &endpoint;
                frame
            });
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            warn!(function = %route.function, error = %kubeless_connector::error_chain(&e), "The local gateway could not reach a function.");
            let status = match e {
                crate::delivery::http::SendError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                crate::delivery::http::SendError::Request(_) => StatusCode::BAD_GATEWAY,
            };
            plain(status, format!("Function {} did not answer: {e}", route.function))
        }
    }
}

/// The function's base URL with `path` (relative to the route's prefix) and the query.
fn forwarded_uri(base: &Uri, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
    let base_path = base.path().trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    let path_and_query = match query {
        Some(q) => format!("{base_path}{path}?{q}"),
        None => format!("{base_path}{path}"),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    Ok(Uri::from_parts(parts)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str) -> GatewayRoute {
        GatewayRoute {
            host: host.map(str::to_string),
            prefix: prefix.to_string(),
            function: "ns/f".into(),
            target: Target::Url { base: Uri::from_static("http://127.0.0.1:1/"), authorization: None },
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_route_matches_its_host_and_whole_path_segments_under_its_prefix() {
        let r = route(Some("example.com"), "/echo");
        assert!(r.matches("example.com", "/echo") && r.matches("EXAMPLE.com", "/echo/a/b"));
        assert!(!r.matches("example.com", "/echoes"), "a prefix is whole segments");
        assert!(!r.matches("other.com", "/echo"));
        let any = route(None, "/");
        assert!(any.matches("whatever", "/") && any.matches("x", "/a/b"));
    }

    #[test]
    fn the_function_sees_the_path_below_the_prefix_with_the_query() {
        let base = Uri::from_static("http://127.0.0.1:9/");
        assert_eq!(forwarded_uri(&base, "/a/b", Some("x=1")).expect("uri").to_string(), "http://127.0.0.1:9/a/b?x=1");
        assert_eq!(forwarded_uri(&base, "", None).expect("uri").to_string(), "http://127.0.0.1:9/");
        let with_path = Uri::from_static("http://127.0.0.1:9/fn/");
        assert_eq!(forwarded_uri(&with_path, "/x", None).expect("uri").to_string(), "http://127.0.0.1:9/fn/x");
    }
}
