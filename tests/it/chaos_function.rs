//! Functions that misbehave: flapping (5xx, latency, connection resets through a proxy of the
//! test's own), silent, answering with an endless body, hanging up mid-response; and a SIGTERM while
//! the function is down. Each run is bounded; traffic stays on loopback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A function that, while `chaos` is on, answers 503 to 30% of requests and waits 0–50 ms before
/// answering; records every 2xx as (key, body).
struct Flapping {
    chaos: AtomicBool,
    delivered: std::sync::Mutex<Vec<(String, String)>>,
    failures: AtomicUsize,
}

async fn flapping(State(f): State<Arc<Flapping>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if f.chaos.load(Ordering::SeqCst) {
        let (fail, wait) = {
            let mut rng = rand::rng();
            (rng.random_bool(0.3), rng.random_range(0..50))
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if fail {
            f.failures.fetch_add(1, Ordering::SeqCst);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let key = headers.get("event-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    f.delivered.lock().expect("lock").push((key, String::from_utf8_lossy(&body).into_owned()));
    StatusCode::OK
}

/// A TCP proxy to `upstream` that, while `chaos` is on, closes 10% of new connections at once and
/// cuts an established one at 2% of the chunks it forwards (mid-request or mid-response).
async fn chaos_proxy(upstream: String, chaos: Arc<AtomicBool>, resets: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            if chaos.load(Ordering::SeqCst) && rand::rng().random_bool(0.1) {
                resets.fetch_add(1, Ordering::SeqCst);
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream).await else { continue };
            let (chaos, resets) = (chaos.clone(), resets.clone());
            tokio::spawn(async move {
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                // Either direction ending (or being cut) closes both.
                tokio::select! {
                    () = pump(cr, sw, chaos.clone(), resets.clone()) => {}
                    () = pump(sr, cw, chaos, resets) => {}
                }
            });
        }
    });
    url
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    chaos: Arc<AtomicBool>,
    resets: Arc<AtomicUsize>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if chaos.load(Ordering::SeqCst) && rand::rng().random_bool(0.02) {
            resets.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_flapping_for_60s_gets_every_message_in_key_order_with_memory_flat() {
    const KEYS: usize = 100;
    const PER_SECOND: usize = 100;
    const CHAOS: Duration = Duration::from_secs(60);
    const RSS_LIMIT_MIB: f64 = 80.0;
    let kafka = Kafka::start().await;
    kafka.create_topic("flap", 4).await;
    let f = Arc::new(Flapping {
        chaos: AtomicBool::new(true),
        delivered: Default::default(),
        failures: AtomicUsize::new(0),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr").to_string();
    let app = Router::new().fallback(flapping).with_state(f.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let chaos = Arc::new(AtomicBool::new(true));
    let resets = Arc::new(AtomicUsize::new(0));
    let url = chaos_proxy(upstream, chaos.clone(), resets.clone()).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let delivery = "  delivery:\n    retry: {initialBackoff: 20ms, maxBackoff: 500ms}\n    timeout: 2s\n";
    let manifests =
        [function_yaml("flap", "{function: flap}", &url), trigger_yaml("t", "flap", "{function: flap}", delivery)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    // A producer publishes all through the chaos, while RSS is sampled every second.
    let mut sent = 0usize;
    let mut rss = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < CHAOS {
        let batch = (sent..sent + PER_SECOND)
            .map(|i| (Some(format!("k{}", i % KEYS)), format!("{i:06}").into_bytes()))
            .collect();
        kafka.publish_all("flap", batch).await;
        sent += PER_SECOND;
        rss.push(daemon.rss_mib());
        let next = Duration::from_secs(rss.len() as u64);
        tokio::time::sleep(next.saturating_sub(start.elapsed())).await;
    }
    f.chaos.store(false, Ordering::SeqCst);
    chaos.store(false, Ordering::SeqCst);
    let distinct = || f.delivered.lock().expect("lock").iter().map(|(_, b)| b.clone()).collect::<HashSet<_>>().len();
    wait_for("every message after the function recovers", Duration::from_secs(120), || distinct() == sent).await;

    let delivered = f.delivered.lock().expect("lock").clone();
    let retries = daemon.metric("kubeless_delivery_retries_total").await;
    let (failures, cut) = (f.failures.load(Ordering::SeqCst), resets.load(Ordering::SeqCst));
    let peak = rss.iter().copied().fold(0.0, f64::max);
    let duplicates = delivered.len() - sent;
    eprintln!(
        "{sent} messages; {failures} 503s, {cut} connections cut, {retries} retries, {duplicates} duplicates; RSS samples {rss:.1?}"
    );
    assert!(failures > 0 && cut > 0, "the chaos happened");
    assert!(retries >= failures as f64, "every 503 was retried ({retries} retries, {failures} 503s)");
    assert!(peak < RSS_LIMIT_MIB, "RSS peaked at {peak:.1} MiB");
    let early = rss[..rss.len() / 2].iter().copied().fold(0.0, f64::max);
    let late = rss[rss.len() / 2..].iter().copied().fold(0.0, f64::max);
    assert!(late < early + 10.0, "RSS grew through the chaos: first half peak {early:.1}, second half {late:.1} MiB");
    // A duplicate is a request cut after the function took it; per key, order holds.
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, body) in delivered {
        let seq = per_key.entry(key).or_default();
        if seq.last() != Some(&body) {
            seq.push(body);
        }
    }
    for (key, seq) in per_key {
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {seq:?}");
    }
}

/// A function on a raw socket: what it does with each connection.
#[derive(Clone, Copy)]
enum Rude {
    /// Reads the request and never answers.
    Silent,
    /// Answers 200 and then sends body chunks forever.
    EndlessBody,
    /// Answers 200 with a body it cuts off halfway, closing the connection.
    CutBody,
    /// Sends half a status line and closes.
    CutHeaders,
}

/// Serves `rude` on loopback; returns its URL and the count of requests it saw.
async fn rude_function(rude: Rude) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                match rude {
                    Rude::Silent => {
                        let _ = socket.read(&mut buf).await; // until the client gives up
                    }
                    Rude::EndlessBody => {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
                        while socket.write_all(chunk.as_bytes()).await.is_ok() {}
                    }
                    Rude::CutBody => {
                        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhalf").await;
                    }
                    Rude::CutHeaders => {
                        let _ = socket.write_all(b"HTTP/1.1 20").await;
                    }
                }
            });
        }
    });
    (url, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_endless_and_hanging_up_functions_neither_wedge_nor_lose_messages() {
    const N: usize = 5;
    const ATTEMPTS: usize = 3;
    let kafka = Kafka::start().await;
    let cases = [
        ("silent", Rude::Silent),
        ("endless", Rude::EndlessBody),
        ("cutbody", Rude::CutBody),
        ("cutheaders", Rude::CutHeaders),
    ];
    let mut manifests = Vec::new();
    let mut seen = HashMap::new();
    for (name, rude) in cases {
        kafka.create_topic(name, 1).await;
        let (url, requests) = rude_function(rude).await;
        seen.insert(name, requests);
        let delivery = format!(
            "  delivery:\n    timeout: 1s\n    retry: {{maxAttempts: {ATTEMPTS}, initialBackoff: 10ms, maxBackoff: 20ms}}\n"
        );
        manifests.push(function_yaml(name, &format!("{{function: {name}}}"), &url));
        manifests.push(trigger_yaml(name, name, &format!("{{function: {name}}}"), &delivery));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;
    for (name, _) in cases {
        kafka.publish_all(name, (0..N).map(|i| (None, format!("{name}{i}").into_bytes())).collect()).await;
    }
    let outcome = |name: &'static str, metric: &'static str| {
        let daemon = &daemon;
        async move { daemon.metric(&format!("{metric}{{trigger=\"default/{name}\"")).await as usize }
    };
    let start = std::time::Instant::now();
    loop {
        let mut done = 0;
        for (name, _) in cases {
            done += outcome(name, "kubeless_messages_delivered_total").await
                + outcome(name, "kubeless_messages_failed_total").await;
        }
        if done == N * cases.len() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{done} of {} messages finished", N * cases.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The status line is the answer: a 200 whose body never ends or breaks off is delivered, once.
    for name in ["endless", "cutbody"] {
        assert_eq!(outcome(name, "kubeless_messages_delivered_total").await, N, "{name}");
        assert_eq!(seen[name].load(Ordering::SeqCst), N, "{name}: each message sent once");
    }
    // No answer, or half a status line: retried, then failed as the policy says (no dead-letter
    // topic: logged and counted).
    for name in ["silent", "cutheaders"] {
        assert_eq!(outcome(name, "kubeless_messages_failed_total").await, N, "{name}");
        assert_eq!(seen[name].load(Ordering::SeqCst), N * ATTEMPTS, "{name}: {ATTEMPTS} attempts each");
    }
    assert_eq!(daemon.get("/healthz").await.map(|(s, _)| s), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_function_is_down_exits_0_within_the_drain_and_commits_nothing() {
    let kafka = Kafka::start().await;
    kafka.create_topic("down", 2).await;
    let f = Function::start(Behaviour::Status(503)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let delivery = "  delivery:\n    retry: {initialBackoff: 20ms, maxBackoff: 100ms}\n";
    let manifests = [function_yaml("f", "{function: f}", &f.url), trigger_yaml("t", "down", "{function: f}", delivery)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let mut daemon = Daemon::start(dir.path(), &kafka.brokers, &["--drain-timeout", "2s"]).await;
    daemon.wait_ready().await;
    kafka.publish_all("down", (0..20).map(|i| (Some(format!("k{i}")), format!("m{i}").into_bytes())).collect()).await;
    wait_for("retries", Duration::from_secs(60), || f.received().len() >= 40).await;
    // SIGTERM: the drain waits up to 2 s for messages that cannot finish, then exits 0.
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        daemon.terminate();
        let _ = tx.send(());
        daemon
    });
    assert!(rx.recv_timeout(Duration::from_secs(60)).is_ok(), "the daemon did not exit after SIGTERM");
    let daemon = waiter.join().expect("terminate asserted exit code 0");
    assert_eq!(kafka.committed("default_t_f_down", "down", 2), [None, None], "nothing delivered, nothing committed");
    let log = daemon.log_text();
    assert!(log.contains("Drain timed out"), "the drain timeout was applied:\n{log}");
}

/// Core NATS messages published at 100/s for `seconds` to `subject`.
async fn trickle(nats: &Nats, subject: &str, from: usize, seconds: u64) {
    let client = nats.client().await;
    for i in 0..(seconds * 100) as usize {
        kubeless_nats::publish(&client, subject, format!("m{}", from + i).into_bytes()).await.expect("publish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Messages a function behind a round-robin proxy gets from a second "pod" added after 3 s of
/// traffic, with keep-alive connections reused for `lifetime` at most.
async fn share_of_a_new_pod(lifetime: &str) -> (usize, usize) {
    let nats = Nats::start().await;
    let (a, b) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let port = |f: &Function| f.url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
    let proxy = crate::common::proxy::RoundRobinProxy::start(port(&a)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = format!("http://127.0.0.1:{}", proxy.port);
    let manifests =
        [function_yaml("f", "{function: f}", &service), nats_trigger_yaml("t", "pods", "{function: f}", "")];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let flags = ["--nats-url", &nats.url, "--connection-lifetime", lifetime];
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &flags).await;
    daemon.wait_ready().await;
    trickle(&nats, "pods", 0, 3).await;
    proxy.add_backend(port(&b));
    let before = b.delivered();
    trickle(&nats, "pods", 300, 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    (a.delivered(), b.delivered() - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_behind_the_functions_service_gets_a_share_within_the_connection_lifetime() {
    // Kept for ever (the pool as it was): the connection opened before the new pod keeps every request.
    let (_, forever) = share_of_a_new_pod("0s").await;
    assert!(forever < 60, "with connections kept for ever the new pod gets (almost) nothing: {forever} of 600");
    // Reused for 1 s at most: new connections every second, spread over both pods.
    let (old, new) = share_of_a_new_pod("1s").await;
    assert!(new >= 150, "the new pod's share: {new} of 600 (the old pod had {old} in all)");
}
