//! The function runtimes (`runtimes/`), run as local processes as their images would run them, against
//! Kubeless's runtime contract: one suite for Python, Node and Ruby. And Kafka messages delivered by the
//! daemon to the Python runtime running a function written for Kubeless.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// Calls past this are answered 408.
const TIMEOUT_S: u64 = 8;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A runtime serving `file` (from tests/data/runtimes) as module `module`, handler `handler`, from
/// a ConfigMap-shaped directory of its own.
struct Runtime {
    server: Server,
    _code: tempfile::TempDir,
    url: String,
}

impl Runtime {
    async fn start(runtime: &str, file: &str, module: &str, extra_env: &[(&str, &str)]) -> Self {
        let code = tempfile::tempdir().expect("code dir");
        let ext = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or_default();
        std::fs::copy(root().join("tests/data/runtimes").join(file), code.path().join(format!("{module}.{ext}")))
            .expect("copy the function");
        let port = free_port();
        let mut env: Vec<(String, String)> = [
            ("MOD_NAME", module),
            ("FUNC_HANDLER", "handler"),
            ("FUNC_PORT", &port.to_string()),
            ("FUNC_TIMEOUT", &TIMEOUT_S.to_string()),
            ("FUNC_RUNTIME", runtime_id(runtime)),
            ("FUNC_MEMORY_LIMIT", "128Mi"),
            ("KUBELESS_DIR", &code.path().display().to_string()),
        ]
        .iter()
        .filter(|(k, _)| !extra_env.iter().any(|(extra, _)| extra == k))
        .chain(extra_env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.sort();
        let command = vec![root().join("runtimes/run").display().to_string(), runtime.to_string()];
        let server = Server::start(&format!("runtime-{runtime}"), command, env, port).await;
        Self { server, _code: code, url: format!("http://127.0.0.1:{port}") }
    }
}

/// The `FUNC_RUNTIME` each runtime is run with.
fn runtime_id(runtime: &str) -> &'static str {
    match runtime {
        "python" => "python3.9",
        "ruby" => "ruby2.4",
        _ => "nodejs14",
    }
}

async fn post(url: &str, content_type: &str, body: String, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).header("content-type", content_type).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

async fn call(url: &str, op: Value) -> (u16, String) {
    post(url, "application/json", op.to_string(), &[]).await
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.expect("request");
    (resp.status().as_u16(), resp.text().await.expect("body"))
}

fn metric(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{method=\"POST\"}} ");
    text.lines().filter_map(|l| l.strip_prefix(&prefix)).filter_map(|v| v.parse::<f64>().ok()).sum()
}

async fn contract(runtime: &str, file: &str) {
    let rt = Runtime::start(runtime, file, "contract", &[]).await;
    let url = rt.url.as_str();
    assert_eq!(get(&format!("{url}/healthz")).await, (200, "OK".to_string()));

    // The event: JSON parsed, the event headers, the context, the request itself.
    let headers = [
        ("event-id", "id-1"),
        ("event-type", "application/json"),
        ("event-time", "2026-11-23 10:00:00 +0000 UTC"),
        ("event-namespace", "kafkatriggers.kubeless.io"),
    ];
    let (status, body) = post(
        &format!("{url}/some/path?a=1"),
        "application/json",
        json!({"op": "echo", "n": [1, 2]}).to_string(),
        &headers,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let event: Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(event["data"], json!({"op": "echo", "n": [1, 2]}), "JSON bodies are parsed");
    for (k, v) in headers {
        assert_eq!(event[k], v, "{k}");
    }
    let runtime_id = runtime_id(runtime);
    let context = &event["context"];
    assert_eq!(context["function-name"], "handler");
    assert_eq!(context["timeout"].as_f64(), Some(TIMEOUT_S as f64));
    assert_eq!((context["runtime"].as_str(), context["memory-limit"].as_str()), (Some(runtime_id), Some("128Mi")));
    assert_eq!((event["method"].as_str(), event["path"].as_str()), (Some("POST"), Some("/some/path")));
    assert_eq!(event["query"], json!({"a": "1"}));
    // Other bodies arrive as they are; a body that says JSON but is not is refused.
    let (status, body) = post(url, "text/plain", "hello".into(), &[]).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).ok()), (200, Some(json!({"text": "hello"}))));
    assert_eq!(post(url, "application/json", "{not json".into(), &[]).await.0, 400);

    // An exception is a 500; a call past the timeout a 408 — a sleeping one and a spinning one —
    // and the server goes on.
    assert_eq!(call(url, json!({"op": "raise"})).await.0, 500);
    assert_eq!(call(url, json!({"op": "sleep", "seconds": 60})).await.0, 408);
    assert_eq!(call(url, json!({"op": "spin"})).await.0, 408);
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);
    assert_eq!(call(url, json!({"op": "echo"})).await.0, 200, "served after the timeouts");

    // Every call of the function above was counted (6: not the refused body, which never reached
    // it); the exception and the two timeouts as failures.
    let (_, metrics) = get(&format!("{url}/metrics")).await;
    assert_eq!(metric(&metrics, "function_calls_total"), 6.0, "{metrics}");
    assert_eq!(metric(&metrics, "function_failures_total"), 3.0, "{metrics}");
    assert_eq!(metric(&metrics, "function_duration_seconds_count"), 6.0, "{metrics}");
    drop(rt);

    // 50 calls at once are all inside the function together: each waits for the other 49. A runtime
    // of its own with a long timeout, as starting 50 call processes on a busy machine can take
    // seconds; a runtime serving fewer at once fails fast on the outer deadline.
    let rt = Runtime::start(runtime, file, "contract", &[("FUNC_TIMEOUT", "60")]).await;
    let barrier = tempfile::tempdir().expect("barrier dir");
    let op = json!({"op": "barrier", "dir": barrier.path(), "n": 50, "wait": 50});
    let calls = futures::future::join_all((0..50).map(|_| call(&rt.url, op.clone())));
    let answers = tokio::time::timeout(Duration::from_secs(58), calls).await.expect("50 calls served at once");
    let met = answers.iter().filter(|a| **a == (200, "met".to_string())).count();
    assert_eq!(met, 50, "calls served concurrently: {answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_runtime_keeps_kubeless_runtime_contract() {
    contract("python", "contract.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_runtime_logs_each_request_in_the_format_kubeless_scripts_grep() {
    let runtime = Runtime::start("python", "contract.py", "handler", &[]).await;
    let answer = reqwest::Client::new()
        .get(format!("{}/?n=1", runtime.url))
        .header("user-agent", "curl/8.5.0")
        .send()
        .await
        .expect("request");
    let size = answer.text().await.expect("body").len();
    // Kubeless's runtime logged the combined log format and the time taken; its examples grep
    // `"GET / HTTP/1.1" 200 11 ""` and its cron tests `"GET / HTTP/1.1" 200`.
    let line = format!("\"GET /?n=1 HTTP/1.1\" 200 {size} \"\" \"curl/8.5.0\" ");
    wait_for("the access log line", Duration::from_secs(10), || runtime.server.log_text().contains(&line)).await;
    let log = runtime.server.log_text();
    let logged = log.lines().find(|l| l.contains(&line)).unwrap_or_default();
    assert!(logged.starts_with("127.0.0.1 - - ["), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_runtime_answers_what_cannot_be_answered_at_once_and_refuses_bodies_past_its_limit() {
    let runtime = Runtime::start("python", "contract.py", "handler", &[("FUNC_BODY_MAX", "1024")]).await;
    let url = &runtime.url;
    // An answer that cannot be sent back from the call's process, and a process that dies: 500s,
    // not 408s after the timeout (which the broker would retry for ever).
    assert_eq!(call(url, json!({"op": "unpicklable"})).await.0, 500);
    assert_eq!(call(url, json!({"op": "exit"})).await.0, 500);
    // A body past FUNC_BODY_MAX: 413, never read whole.
    assert_eq!(post(url, "text/plain", "x".repeat(2048), &[]).await.0, 413);
    assert_eq!(post(url, "text/plain", "x".repeat(512), &[]).await.0, 200);
    assert_eq!(call(url, json!({"op": "echo"})).await.0, 200, "the server goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runtime_keeps_kubeless_runtime_contract() {
    contract("nodejs", "contract.js").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ruby_runtime_keeps_kubeless_runtime_contract() {
    contract("ruby", "contract.rb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_messages_reach_a_kubeless_python_function_as_parsed_json_with_their_event_id() {
    const N: usize = 20;
    let record_dir = tempfile::tempdir().expect("record dir");
    let record = record_dir.path().display().to_string();
    let rt = Runtime::start("python", "record.py", "record", &[("RECORD_DIR", &record)]).await;
    let kafka = Kafka::start().await;
    kafka.create_topic("orders", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests =
        [function_yaml("record", "{function: record}", &rt.url), trigger_yaml("t", "orders", "{function: record}", "")];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;
    let records =
        (0..N).map(|i| (Some(format!("k{i}")), json!({"order": i, "item": "book"}).to_string().into_bytes())).collect();
    kafka.publish_all("orders", records).await;

    let calls_file: PathBuf = record_dir.path().join("calls.jsonl");
    let calls = || -> Vec<Value> {
        std::fs::read_to_string(&calls_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    wait_for("every message at the function", Duration::from_secs(60), || calls().len() >= N).await;
    let calls = calls();
    let mut orders: Vec<i64> = calls.iter().filter_map(|c| c["data"]["order"].as_i64()).collect();
    orders.sort_unstable();
    assert_eq!(orders, (0..N as i64).collect::<Vec<_>>(), "each message once, as parsed JSON: {calls:?}");
    for c in &calls {
        assert_eq!(c["type"], "dict", "event['data'] is the parsed JSON: {c}");
        assert_eq!(c["data"]["item"], "book");
        assert_eq!(c["namespace"], "kafkatriggers.kubeless.io");
        assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()), "an event-id: {c}");
    }
    let ids: std::collections::HashSet<&str> = calls.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids.len(), N, "one event-id per message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runtime_bounds_the_work_still_running_past_its_timeout() {
    let env = [("FUNC_TIMEOUT", "1"), ("FUNC_MAX_ABANDONED", "3")];
    let rt = Runtime::start("nodejs", "contract.js", "contract", &env).await;
    let url = rt.url.as_str();
    // Three calls answered 408 whose promises go on for 4 s more.
    for _ in 0..3 {
        assert_eq!(call(url, json!({"op": "sleep", "seconds": 5})).await.0, 408);
    }
    // No more piles on: the next call is refused at once, to be retried after the timeout, and
    // health says why.
    let echo = json!({"op": "echo"}).to_string();
    let request = reqwest::Client::new().post(url).header("content-type", "application/json").body(echo);
    let resp = request.send().await.expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(get(&format!("{url}/healthz")).await.0, 503);
    // Once that work has ended, calls are served again.
    let start = std::time::Instant::now();
    while call(url, json!({"op": "echo"})).await.0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "still refusing after the abandoned work ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&format!("{url}/healthz")).await, (200, "OK".to_string()));
}
