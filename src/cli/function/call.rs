//! `function call`, `logs` and `top`: through the API server (its service proxy, pod logs) or, with
//! a manifest directory, straight to the function's URL.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use futures::{AsyncBufReadExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};

use std::path::PathBuf;

use crate::cli::store::Store;
use crate::cli::{table, ListOutput};
use crate::control::index::{function_url, DEFAULT_URL_TEMPLATE};
use crate::local::prepare::{Layout, LOG_FILE, URL_FILE};
use crate::resources::Function;
use crate::resources::URL_ANNOTATION;

/// How long `call` and `top` wait for a function.
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// The largest answer `call` prints.
const ANSWER_LIMIT: usize = 64 << 20;

/// The service-proxy path of a function's Service port (its name if it has one, as Kubeless).
fn proxy_path(f: &Function, rest: &str) -> String {
    let port = f
        .spec
        .service
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| p.first())
        .map(|p| p.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| p.port.to_string()))
        .unwrap_or_else(|| f.port().to_string());
    format!("/api/v1/namespaces/{}/services/{}:{port}/proxy/{rest}", f.namespace().unwrap_or_default(), f.name_any())
}

/// The directory where the broker keeps a local function's files, if the store is a manifest
/// directory.
pub(super) fn local_dir(store: &Store, f: &Function) -> Option<PathBuf> {
    let Store::Dir { state_dir: Some(state_dir), .. } = store else { return None };
    Some(Layout::new(state_dir).function_dir(&f.namespace().unwrap_or_default(), &f.name_any()))
}

/// `function ls`'s STATUS of a function the broker runs itself (manifest directory, no
/// `kubeless.io/url`): READY while a process of it answers; none for other functions.
pub(super) fn local_status(store: &Store, f: &Function) -> Option<String> {
    if f.url().is_some() {
        return None;
    }
    let dir = local_dir(store, f)?;
    Some(if dir.join(URL_FILE).is_file() {
        "READY".to_string()
    } else {
        "NOT READY: not serving (kubeless function logs, or the broker's /status, say why)".to_string()
    })
}

/// Where a function is reached without a cluster: its `kubeless.io/url`; else where the broker
/// runs it (a local function); else the broker's URL template (`KUBELESS_FUNCTION_URL_TEMPLATE`).
fn direct_url(store: &Store, f: &Function, rest: &str) -> anyhow::Result<String> {
    let annotated = f.url().is_some();
    let local = local_dir(store, f).filter(|dir| !annotated && dir.is_dir());
    let base = match local {
        // The broker runs it: where it answers now, if it does.
        Some(dir) => match std::fs::read_to_string(dir.join(URL_FILE)) {
            Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
            _ => bail!(
                "function {} is not serving in the broker yet (kubeless function ls, kubeless function logs {} and the broker's /status say why)",
                f.name_any(),
                f.name_any()
            ),
        },
        None => {
            let template =
                std::env::var("KUBELESS_FUNCTION_URL_TEMPLATE").unwrap_or_else(|_| DEFAULT_URL_TEMPLATE.to_string());
            function_url(f, &template)
        }
    };
    Ok(format!("{}/{rest}", base.trim_end_matches('/')))
}

/// Sends a request to the function; returns its status and body.
async fn request(
    store: &Store,
    f: &Function,
    req: http::request::Builder,
    rest: &str,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Bytes)> {
    match store {
        Store::Kube { client, server, .. } => {
            let request = req.uri(proxy_path(f, rest)).body(kube::client::Body::from(body))?;
            let call = async {
                let response = client
                    .send(request)
                    .await
                    .map_err(|e| anyhow!("cannot reach the Kubernetes API server at {server}: {e}"))?;
                let status = response.status().as_u16();
                let body =
                    response.into_body().collect().await.map_err(|e| anyhow!("reading the answer: {e}"))?.to_bytes();
                anyhow::Ok((status, body))
            };
            tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| anyhow!("no answer within {CALL_TIMEOUT:?}"))?
        }
        Store::Dir { .. } => {
            let url = direct_url(store, f, rest)?;
            let request = req.uri(&url).body(http_body_util::Full::new(Bytes::from(body)))?;
            crate::delivery::HttpClient::new()
                .fetch(request, CALL_TIMEOUT, ANSWER_LIMIT)
                .await
                .with_context(|| format!("calling function {} at {url}", f.name_any()))
        }
    }
}

/// `function call NAME [-d DATA]`: GET without data, POST with it and Kubeless's event headers.
pub async fn call(store: &Store, name: &str, data: Option<String>) -> anyhow::Result<()> {
    let f: Function = store.need(name).await?;
    let (req, body) = match data {
        None => (http::Request::get("/"), Vec::new()),
        Some(data) => {
            let kind = if serde_json::from_str::<serde_json::Value>(&data).is_ok() {
                "application/json"
            } else {
                "application/x-www-form-urlencoded"
            };
            let req = http::Request::post("/")
                .header("content-type", kind)
                .header("event-type", kind)
                .header("event-id", Alphanumeric.sample_string(&mut rand::rng(), 11))
                .header("event-time", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .header("event-namespace", "cli.kubeless.io");
            (req, data.into_bytes())
        }
    };
    let (status, answer) = request(store, &f, req, "", body).await?;
    let text = String::from_utf8_lossy(&answer);
    match status {
        200..=299 => {
            println!("{text}");
            Ok(())
        }
        408 => bail!("Request timeout exceeded"),
        _ => bail!("function {name} answered HTTP {status}: {}", text.trim()),
    }
}

/// `function logs NAME [-f]`: every pod labelled `function=NAME`, prefixed by the pod when there
/// are several.
pub async fn logs(store: &Store, name: &str, follow: bool) -> anyhow::Result<()> {
    let Store::Kube { client, namespace, .. } = store else {
        let f: Function = store.need(name).await?;
        return local_logs(store, &f, follow).await;
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api
        .list(&ListParams::default().labels(&format!("function={name}")))
        .await
        .with_context(|| format!("listing the pods of function {name}"))?
        .items;
    if pods.is_empty() {
        bail!("function {name} has no pods in namespace {namespace}");
    }
    let several = pods.len() > 1;
    let mut streams = Vec::new();
    for pod in &pods {
        let pod_name = pod.name_any();
        let params = LogParams { container: Some(name.to_string()), follow, ..LogParams::default() };
        let lines = api
            .log_stream(&pod_name, &params)
            .await
            .with_context(|| format!("logs of pod {pod_name}"))?
            .lines()
            .map(move |l| (pod_name.clone(), l));
        streams.push(lines.boxed());
    }
    let mut all = futures::stream::select_all(streams);
    while let Some((pod, line)) = all.next().await {
        let line = line.with_context(|| format!("logs of pod {pod}"))?;
        if several {
            println!("[{pod}] {line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// `function logs` of a function the broker runs itself: its log file, followed with `-f`.
async fn local_logs(store: &Store, f: &Function, follow: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let name = f.name_any();
    if f.url().is_some() {
        bail!("function {name} runs at its {URL_ANNOTATION}, not in the broker: its logs are wherever it runs");
    }
    let Some(path) = local_dir(store, f).map(|d| d.join(LOG_FILE)) else {
        bail!("no --state-dir (or HOME) to find the broker's local functions in");
    };
    let mut file = tokio::fs::File::open(&path).await.with_context(|| {
        format!(
            "function {name} has no log at {} yet: is kubeless-broker --manifests running it with the same --state-dir?",
            path.display()
        )
    })?;
    let mut read = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        read += file.read_to_end(&mut buf).await.with_context(|| format!("reading {}", path.display()))? as u64;
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)?;
        out.flush()?;
        drop(out);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Rotated (moved aside and started again): read the new file from its start.
        let len = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(read);
        if len < read {
            if let Ok(fresh) = tokio::fs::File::open(&path).await {
                file = fresh;
                read = 0;
                file.seek(std::io::SeekFrom::Start(0)).await?;
            }
        }
    }
}

/// One method's totals from a function's `/metrics`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MethodStats {
    pub calls: f64,
    pub failures: f64,
    pub duration: f64,
}

/// Sums `function_calls_total`, `function_failures_total` and `function_duration_seconds_sum` by
/// their `method` label (Kubeless's `pkg/utils/metrics.go`).
pub fn parse_metrics(text: &str) -> BTreeMap<String, MethodStats> {
    let mut out: BTreeMap<String, MethodStats> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s.trim(), v.trim()),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let method = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| k.trim() == "method")
            .map(|(_, v)| v.trim().trim_end_matches('}').trim_matches('"').to_string())
            .unwrap_or_default();
        let field: fn(&mut MethodStats, f64) = match name {
            "function_calls_total" => |s: &mut MethodStats, v| s.calls += v,
            "function_failures_total" => |s: &mut MethodStats, v| s.failures += v,
            "function_duration_seconds_sum" => |s: &mut MethodStats, v| s.duration += v,
            _ => continue,
        };
        field(out.entry(method).or_default(), value);
    }
    out
}

/// One row of `function top`, as Kubeless printed it (`pkg/utils/metrics.go`'s `Metric`): its
/// keys, and zeros and empty strings left out, so scripts that grep `--out yaml` keep working.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct TopRow {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub function: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub method: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_go_number")]
    pub total_calls: f64,
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_go_number")]
    pub total_failures: f64,
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_go_number")]
    pub total_duration_seconds: f64,
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_go_number")]
    pub avg_duration_seconds: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// A float as Go's encoder writes it: `2`, not `2.0`.
fn as_go_number<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Kubeless's message for a function whose metrics cannot be read (its tests grep it), then why.
const NO_METRICS: &str = "Function does not expose metrics";

/// The rows of one function: one per method its `/metrics` counts, or one with why it has none.
pub fn top_rows(
    function: &str,
    namespace: &str,
    scraped: Result<BTreeMap<String, MethodStats>, String>,
) -> Vec<TopRow> {
    let base = TopRow { function: function.to_string(), namespace: namespace.to_string(), ..TopRow::default() };
    match scraped {
        Ok(methods) if methods.is_empty() => vec![base],
        Ok(methods) => methods
            .into_iter()
            .map(|(method, s)| TopRow {
                method,
                total_calls: s.calls,
                total_failures: s.failures,
                total_duration_seconds: s.duration,
                avg_duration_seconds: if s.calls > 0.0 { s.duration / s.calls } else { 0.0 },
                ..base.clone()
            })
            .collect(),
        Err(why) => vec![TopRow { message: format!("{NO_METRICS}: {why}"), ..base }],
    }
}

/// `function top [-f NAME] [-o|--out yaml|json]`: each function's calls, failures and durations.
pub async fn top(store: &Store, only: Option<&str>, out: &ListOutput) -> anyhow::Result<()> {
    let functions: Vec<Function> = match only {
        Some(name) => vec![store.need(name).await?],
        None => store.list().await?,
    };
    let mut records = Vec::new();
    for f in &functions {
        let (name, ns) = (f.name_any(), f.namespace().unwrap_or_default());
        let scraped = request(store, f, http::Request::get("/"), "metrics", Vec::new()).await;
        let stats = match scraped {
            Ok((200, body)) => Ok(parse_metrics(&String::from_utf8_lossy(&body))),
            Ok((status, _)) => Err(format!("/metrics answered HTTP {status}")),
            Err(e) => Err(format!("{e:#}")),
        };
        records.extend(top_rows(&name, &ns, stats));
    }
    match out.output.as_deref() {
        // A list, as Kubeless printed it (not a Kubernetes `List`).
        Some("json") => println!("{}", serde_json::to_string_pretty(&records)?),
        Some(_) => print!("{}", serde_yaml::to_string(&records)?),
        None => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    if r.message.is_empty() {
                        vec![
                            r.function.clone(),
                            r.namespace.clone(),
                            r.method.clone(),
                            r.total_calls.to_string(),
                            r.total_failures.to_string(),
                            format!("{:.6}", r.total_duration_seconds),
                            format!("{:.6}", r.avg_duration_seconds),
                            String::new(),
                        ]
                    } else {
                        let mut row = vec![r.function.clone(), r.namespace.clone()];
                        row.extend(std::iter::repeat_n(String::new(), 5));
                        row.push(r.message.clone());
                        row
                    }
                })
                .collect();
            let header = [
                "NAME",
                "NAMESPACE",
                "METHOD",
                "TOTAL_CALLS",
                "TOTAL_FAILURES",
                "TOTAL_DURATION_SECONDS",
                "AVG_DURATION_SECONDS",
                "MESSAGE",
            ];
            print!("{}", table::render(&header, &rows));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_metrics, top_rows, MethodStats};

    #[test]
    fn top_prints_kubeless_keys_and_leaves_out_zeros() {
        let stats = MethodStats { calls: 2.0, failures: 0.0, duration: 0.5 };
        let rows = top_rows("get-python", "default", Ok([("GET".to_string(), stats)].into()));
        let yaml = serde_yaml::to_string(&rows).expect("yaml");
        assert_eq!(
            yaml,
            "- function: get-python\n  namespace: default\n  method: GET\n  total_calls: 2\n  total_duration_seconds: 0.5\n  avg_duration_seconds: 0.25\n"
        );
        let missing = top_rows("f", "default", Err("connection refused".to_string()));
        let json = serde_json::to_value(&missing).expect("json");
        assert_eq!(
            json,
            serde_json::json!([{"function": "f", "namespace": "default", "message": "Function does not expose metrics: connection refused"}])
        );
    }

    #[test]
    fn metrics_are_summed_by_method() {
        let text = r#"
# HELP function_calls_total Number of calls to user function
# TYPE function_calls_total counter
function_calls_total{method="GET"} 3.0
function_calls_total{method="POST"} 2.0
function_failures_total{method="POST"} 1.0
function_duration_seconds_bucket{le="0.005",method="GET"} 3.0
function_duration_seconds_sum{method="GET"} 0.03
function_duration_seconds_sum{method="POST"} 1.5
function_duration_seconds_count{method="POST"} 2.0
process_cpu_seconds_total 12
"#;
        let m = parse_metrics(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m["GET"], MethodStats { calls: 3.0, failures: 0.0, duration: 0.03 });
        assert_eq!(m["POST"], MethodStats { calls: 2.0, failures: 1.0, duration: 1.5 });
    }
}
