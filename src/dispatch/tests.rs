//! Dispatch and delivery against a real HTTP server on loopback, with scripted answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes as Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use futures::future::BoxFuture;
use kubeless_connector::{
    AckHandle, Acker, DeadLetter, DeadLetterError, DeadLetterReason, DeadLetterSink, Message, Origin, Outcome, Position,
};

use super::*;
use crate::delivery::{HttpClient, Target};
use crate::resources::RetryPolicy;
use crate::telemetry::ConsumerMetrics;

/// What the stub saw, and how it answers.
#[derive(Default)]
struct Stub {
    /// (event-key, event-partition, body) in arrival order.
    seen: Mutex<Vec<(String, String, String)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Per-partition in-flight counts, and the most seen at once for any partition.
    per_partition: Mutex<HashMap<String, usize>>,
    max_per_partition: AtomicUsize,
    /// Statuses to answer, in order; 200 once they run out.
    script: Mutex<Vec<u16>>,
    delay: Duration,
    /// Messages with this key are answered 503, always.
    poison_key: Option<String>,
}

async fn handle(State(stub): State<Arc<Stub>>, headers: HeaderMap, body: Body) -> StatusCode {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (key, partition) = (header("event-key"), header("event-partition"));
    let now = stub.in_flight.fetch_add(1, AtomicOrdering::SeqCst) + 1;
    stub.max_in_flight.fetch_max(now, AtomicOrdering::SeqCst);
    {
        let mut pp = stub.per_partition.lock().expect("lock");
        let n = pp.entry(partition.clone()).or_default();
        *n += 1;
        stub.max_per_partition.fetch_max(*n, AtomicOrdering::SeqCst);
    }
    let status = {
        let mut script = stub.script.lock().expect("lock");
        if stub.poison_key.as_deref() == Some(key.as_str()) {
            503
        } else if script.is_empty() {
            200
        } else {
            script.remove(0)
        }
    };
    if status == 200 {
        stub.seen.lock().expect("lock").push((key, partition.clone(), String::from_utf8_lossy(&body).into_owned()));
    }
    tokio::time::sleep(stub.delay).await;
    *stub.per_partition.lock().expect("lock").get_mut(&partition).expect("entry") -= 1;
    stub.in_flight.fetch_sub(1, AtomicOrdering::SeqCst);
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

async fn serve(stub: Arc<Stub>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route("/", post(handle)).with_state(stub);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[derive(Default)]
struct Acks(Mutex<Vec<(Position, Outcome)>>);

impl Acker for Acks {
    fn ack(&self, position: Position, outcome: Outcome) {
        self.0.lock().expect("lock").push((position, outcome));
    }
}

impl Acks {
    fn all(&self) -> Vec<(Position, Outcome)> {
        self.0.lock().expect("lock").clone()
    }
}

fn message(acks: &Arc<Acks>, partition: i32, offset: i64, key: Option<&str>) -> Message {
    Message {
        payload: bytes::Bytes::from(format!("{offset}")),
        key: key.map(|k| bytes::Bytes::from(k.to_string())),
        headers: Vec::new(),
        origin: Origin { source: Arc::from("t"), partition, offset, timestamp_ms: None },
        attempt: 1,
        ack: AckHandle::new(acks.clone(), Position { slot: partition as u32, generation: 1, offset }),
        charge: Default::default(),
    }
}

fn retry(max_attempts: Option<u32>) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_backoff_set: true,
        max_record_age: None,
    }
}

fn target(url: &str, retry: RetryPolicy) -> Target {
    let (url, authorization) = crate::delivery::function_target(url).expect("url");
    Target {
        trigger: "ns/t".into(),
        function: "f".into(),
        url,
        authorization,
        route: None,
        timeout: Duration::from_secs(10),
        event_namespace: "kafkatriggers.kubeless.io",
        style: crate::delivery::event::EventStyle::Broker,
        method: http::Method::POST,
        retry,
        redeliver_via_source: false,
    }
}

fn deliverer(url: &str, retry: RetryPolicy, dead_letter: Option<Arc<dyn DeadLetterSink>>) -> Arc<Deliverer> {
    let target = target(url, retry);
    Arc::new(Deliverer::new(
        HttpClient::new(),
        target,
        dead_letter,
        None,
        ConsumerMetrics::new("KafkaTrigger", "ns/t", "f"),
    ))
}

/// Runs a dispatcher over `messages` until every one is acknowledged (or `expect_acks` are).
async fn dispatch_all(d: Arc<Deliverer>, ordering: Ordering, max_in_flight: usize, messages: Vec<Message>) {
    let (tx, rx) = mpsc::channel(8);
    let abort = CancellationToken::new();
    let task = tokio::spawn(run(rx, d, ordering, max_in_flight, abort));
    for m in messages {
        tx.send(m).await.expect("dispatcher alive");
    }
    drop(tx);
    task.await.expect("dispatcher ends when input closes");
}

#[tokio::test]
async fn key_ordering_keeps_each_keys_order_and_runs_keys_in_parallel_within_max_in_flight() {
    let stub = Arc::new(Stub { delay: Duration::from_millis(2), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let acks = Arc::new(Acks::default());
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let msgs: Vec<Message> = (0..240).map(|i| message(&acks, 0, i, Some(keys[i as usize % keys.len()]))).collect();
    dispatch_all(deliverer(&url, retry(None), None), Ordering::Key, 4, msgs).await;

    let seen = stub.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 240);
    for key in keys {
        let offsets: Vec<i64> =
            seen.iter().filter(|(k, ..)| k == key).map(|(_, _, b)| b.parse().expect("offset")).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {offsets:?}");
    }
    let max = stub.max_in_flight.load(AtomicOrdering::SeqCst);
    assert!(max > 1 && max <= 4, "in flight at once: {max}");
    assert_eq!(acks.all().len(), 240);
    assert!(acks.all().iter().all(|(_, o)| *o == Outcome::Delivered));
}

#[tokio::test]
async fn partition_ordering_has_one_request_in_flight_per_partition() {
    let stub = Arc::new(Stub { delay: Duration::from_millis(2), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let acks = Arc::new(Acks::default());
    let msgs: Vec<Message> = (0..120).map(|i| message(&acks, (i % 3) as i32, i, Some(&format!("k{i}")))).collect();
    dispatch_all(deliverer(&url, retry(None), None), Ordering::Partition, 8, msgs).await;
    assert_eq!(stub.max_per_partition.load(AtomicOrdering::SeqCst), 1);
    assert!(stub.max_in_flight.load(AtomicOrdering::SeqCst) > 1, "partitions run in parallel");
    for p in ["0", "1", "2"] {
        let seen = stub.seen.lock().expect("lock").clone();
        let offsets: Vec<i64> =
            seen.iter().filter(|(_, pp, _)| pp == p).map(|(_, _, b)| b.parse().expect("offset")).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "partition {p} out of order");
    }
}

#[tokio::test]
async fn a_503_three_times_then_200_is_retried_to_success() {
    let stub = Arc::new(Stub { script: Mutex::new(vec![503, 503, 503]), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let acks = Arc::new(Acks::default());
    dispatch_all(deliverer(&url, retry(None), None), Ordering::Key, 4, vec![message(&acks, 0, 7, None)]).await;
    assert_eq!(stub.seen.lock().expect("lock").len(), 1);
    assert_eq!(acks.all(), vec![(Position { slot: 0, generation: 1, offset: 7 }, Outcome::Delivered)]);
}

/// (reason, status, attempts, offset) of one dead letter.
type Letter = (DeadLetterReason, Option<u16>, u32, i64);

/// A dead-letter destination that records letters, or fails every write.
#[derive(Default)]
struct RecordingSink {
    fail: bool,
    writes: AtomicUsize,
    letters: Mutex<Vec<Letter>>,
}

impl DeadLetterSink for RecordingSink {
    fn describe(&self) -> String {
        "recording sink".into()
    }

    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            self.writes.fetch_add(1, AtomicOrdering::SeqCst);
            if self.fail {
                return Err(DeadLetterError::WriteFailed { target: "nowhere".into(), reason: "unreachable".into() });
            }
            let entry = (letter.reason, letter.status, letter.attempts, letter.message.origin.offset);
            self.letters.lock().expect("lock").push(entry);
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_400_is_dead_lettered_at_once_with_its_status() {
    let stub = Arc::new(Stub { script: Mutex::new(vec![400]), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let sink = Arc::new(RecordingSink::default());
    let acks = Arc::new(Acks::default());
    dispatch_all(deliverer(&url, retry(None), Some(sink.clone())), Ordering::Key, 4, vec![message(&acks, 0, 3, None)])
        .await;
    assert_eq!(*sink.letters.lock().expect("lock"), vec![(DeadLetterReason::Rejected, Some(400), 1, 3)]);
    assert_eq!(acks.all()[0].1, Outcome::DeadLettered);
}

#[tokio::test]
async fn exhausted_retries_are_dead_lettered_after_max_attempts() {
    let stub = Arc::new(Stub { script: Mutex::new(vec![500; 10]), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let sink = Arc::new(RecordingSink::default());
    let acks = Arc::new(Acks::default());
    dispatch_all(
        deliverer(&url, retry(Some(3)), Some(sink.clone())),
        Ordering::Key,
        4,
        vec![message(&acks, 0, 5, None)],
    )
    .await;
    assert_eq!(*sink.letters.lock().expect("lock"), vec![(DeadLetterReason::RetriesExhausted, Some(500), 3, 5)]);
    assert_eq!(stub.script.lock().expect("lock").len(), 7, "exactly three attempts were made");
}

#[tokio::test]
async fn a_failing_dead_letter_write_is_retried_and_never_acknowledged() {
    let stub = Arc::new(Stub { script: Mutex::new(vec![400]), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let sink = Arc::new(RecordingSink { fail: true, ..RecordingSink::default() });
    let acks = Arc::new(Acks::default());
    let (tx, rx) = mpsc::channel(1);
    let abort = CancellationToken::new();
    let task = tokio::spawn(run(rx, deliverer(&url, retry(None), Some(sink.clone())), Ordering::Key, 4, abort.clone()));
    tx.send(message(&acks, 0, 1, None)).await.expect("send");
    while sink.writes.load(AtomicOrdering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    abort.cancel();
    task.await.expect("dispatcher stops on abort");
    let outcomes: Vec<Outcome> = acks.all().into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, vec![Outcome::Released], "a message whose dead letter was not written must not be finished");
}

#[tokio::test]
async fn an_unreachable_function_is_retried_not_dropped() {
    // Nothing listens on this port: connection refused is retriable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    drop(listener);
    let acks = Arc::new(Acks::default());
    let d = deliverer(&url, retry(Some(4)), None);
    dispatch_all(d, Ordering::None, 1, vec![message(&acks, 0, 9, None)]).await;
    // With no dead-letter destination the exhausted message is logged, counted and finished.
    assert_eq!(acks.all()[0].1, Outcome::DeadLettered);
}

#[tokio::test]
async fn an_attempt_dropped_mid_request_leaves_the_in_flight_gauge_where_it_was() {
    let (url, held) = silent_function().await;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let metrics = metrics::with_local_recorder(&recorder, || ConsumerMetrics::new("KafkaTrigger", "ns/t", "f"));
    let target = Target { timeout: Duration::from_secs(60), ..target(&url, retry(None)) };
    let deliverer = Arc::new(Deliverer::new(HttpClient::new(), target, None, None, metrics));
    let gauge = || {
        handle
            .render()
            .lines()
            .find(|l| l.starts_with(crate::telemetry::IN_FLIGHT))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let acks = Arc::new(Acks::default());
    let task = tokio::spawn({
        let (deliverer, msg) = (deliverer.clone(), message(&acks, 0, 1, None));
        async move { deliverer.deliver(msg, &CancellationToken::new()).await }
    });
    let start = std::time::Instant::now();
    while gauge() != Some(1.0) {
        assert!(start.elapsed() < Duration::from_secs(10), "the request never started: {:?}", gauge());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stop past its grace aborts the task with the request in flight.
    task.abort();
    let _ = task.await;
    assert_eq!(gauge(), Some(0.0), "the aborted request is no longer counted");
    held.abort();
}

#[tokio::test]
async fn an_abandoned_consumer_stops_calling_the_function() {
    // A function that always answers 503: without limits, its message is retried forever.
    let calls = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/",
        post({
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, AtomicOrdering::SeqCst);
                async { StatusCode::SERVICE_UNAVAILABLE }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let acks = Arc::new(Acks::default());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The consumer task owns its dispatcher, as `run_once` does; a stop past its grace aborts it.
    let consumer = tokio::spawn({
        let msg = message(&acks, 0, 1, None);
        let deliverer = deliverer(&url, retry(None), None);
        async move {
            let _dispatcher = Dispatcher::spawn(rx, deliverer, Ordering::None, 4);
            tx.send(msg).await.expect("send");
            std::future::pending::<()>().await;
        }
    });
    let start = std::time::Instant::now();
    while calls.load(AtomicOrdering::SeqCst) < 3 {
        assert!(start.elapsed() < Duration::from_secs(10), "no retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.abort();
    let _ = consumer.await;
    tokio::time::sleep(Duration::from_millis(100)).await; // a retry in the air lands
    let after_abort = calls.load(AtomicOrdering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await; // many backoffs (1–5 ms) long
    assert_eq!(calls.load(AtomicOrdering::SeqCst), after_abort, "the abandoned consumer kept retrying");
    let outcomes: Vec<Outcome> = acks.all().into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, vec![Outcome::Released], "given back unfinished: the next owner delivers it again");
}

/// A function that accepts connections and never answers.
async fn silent_function() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    (url, held)
}

#[tokio::test]
async fn an_aborted_dispatcher_releases_running_waiting_and_unread_messages_and_abandons_none() {
    let (url, held) = silent_function().await;
    let acks = Arc::new(Acks::default());
    let (tx, rx) = mpsc::channel(8);
    let dispatcher = Dispatcher::spawn(rx, deliverer(&url, retry(None), None), Ordering::Key, 1);
    // One runs (the only slot); the rest sit in the channel or wait behind its key.
    for i in 0..9 {
        tx.send_timeout(message(&acks, 0, i, Some("k")), Duration::from_secs(10)).await.expect("room");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    dispatcher.abort().await;
    let outcomes = acks.all();
    assert!(outcomes.iter().all(|(_, o)| *o == Outcome::Released), "{outcomes:?}");
    let mut released: Vec<i64> = outcomes.iter().map(|(p, _)| p.offset).collect();
    released.sort_unstable();
    assert_eq!(released, (0..9).collect::<Vec<_>>(), "each message given back once");
    held.abort();
}

/// Acks whose partition can be revoked.
#[derive(Default)]
struct Revocable {
    acks: Acks,
    revoked: std::sync::atomic::AtomicBool,
}

impl Acker for Revocable {
    fn ack(&self, position: Position, outcome: Outcome) {
        self.acks.ack(position, outcome);
    }

    fn is_current(&self, _position: Position) -> bool {
        !self.revoked.load(AtomicOrdering::SeqCst)
    }
}

#[tokio::test]
async fn a_message_of_a_revoked_partition_is_neither_retried_nor_started() {
    let stub = Arc::new(Stub { script: Mutex::new(vec![503; 1000]), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let acks = Arc::new(Revocable::default());
    let msg = |offset| Message {
        ack: AckHandle::new(acks.clone(), Position { slot: 0, generation: 1, offset }),
        charge: Default::default(),
        ..message(&Arc::new(Acks::default()), 0, offset, Some("k"))
    };
    let (tx, rx) = mpsc::channel(8);
    let _dispatcher = Dispatcher::spawn(rx, deliverer(&url, retry(None), None), Ordering::Key, 4);
    // 1 is retried (503s); 2 waits behind it on the same key.
    tx.send(msg(1)).await.expect("send");
    tx.send(msg(2)).await.expect("send");
    let start = std::time::Instant::now();
    while stub.script.lock().expect("lock").len() > 995 {
        assert!(start.elapsed() < Duration::from_secs(10), "no retries");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The partition is revoked and its drain ran out: the new owner reads both again.
    acks.revoked.store(true, AtomicOrdering::SeqCst);
    let start = std::time::Instant::now();
    while acks.acks.all().len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "not given back: {:?}", acks.acks.all());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = 1000 - stub.script.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_millis(200)).await; // many backoffs (1–5 ms) long
    assert_eq!(1000 - stub.script.lock().expect("lock").len(), calls, "a revoked message was still retried");
    let outcomes: Vec<(i64, Outcome)> = acks.acks.all().into_iter().map(|(p, o)| (p.offset, o)).collect();
    assert_eq!(outcomes, vec![(1, Outcome::Released), (2, Outcome::Released)], "2 was never started");
}

/// A dead-letter destination with a bug.
struct PanickingSink;

impl DeadLetterSink for PanickingSink {
    fn describe(&self) -> String {
        "panicking sink".into()
    }

    fn send<'a>(&'a self, _letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async { panic!("a bug in the dead-letter writer") })
    }
}

#[tokio::test]
async fn a_delivery_that_panics_reports_its_message_abandoned_and_its_lane_moves_on() {
    let stub = Arc::new(Stub { script: Mutex::new(vec![400]), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let acks = Arc::new(Acks::default());
    let msgs = vec![message(&acks, 0, 1, Some("k")), message(&acks, 0, 2, Some("k"))];
    dispatch_all(deliverer(&url, retry(None), Some(Arc::new(PanickingSink))), Ordering::Key, 4, msgs).await;
    let outcomes: Vec<(i64, Outcome)> = acks.all().into_iter().map(|(p, o)| (p.offset, o)).collect();
    assert_eq!(outcomes, vec![(1, Outcome::Abandoned), (2, Outcome::Delivered)]);
}

/// A key failing for ever on partition 0 with 60 more of it behind (more than the 16 that may wait
/// with 4 in flight), then 200 messages on other keys of partition 1: how many of those are
/// delivered within `wait`.
async fn delivered_behind_a_poisoned_key(source_bounds_partitions: bool, wait: Duration) -> usize {
    let stub = Arc::new(Stub { poison_key: Some("poison".into()), ..Stub::default() });
    let url = serve(stub.clone()).await;
    let acks = Arc::new(Acks::default());
    let (tx, rx) = mpsc::channel(4);
    let abort = CancellationToken::new();
    let bounds = Bounds { in_flight: 4, source_bounds_partitions };
    let task = tokio::spawn(run(rx, deliverer(&url, retry(None), None), Ordering::Key, bounds, abort.clone()));
    let sender = tokio::spawn({
        let acks = acks.clone();
        async move {
            for offset in 0..61 {
                tx.send(message(&acks, 0, offset, Some("poison"))).await.expect("send");
            }
            for offset in 0..200 {
                tx.send(message(&acks, 1, offset, Some(&format!("k{}", offset % 8)))).await.expect("send");
            }
        }
    });
    let delivered = || acks.all().iter().filter(|(p, o)| p.slot == 1 && *o == Outcome::Delivered).count();
    let deadline = tokio::time::Instant::now() + wait;
    while delivered() < 200 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(acks.all().iter().all(|(p, _)| p.slot == 1), "nothing of the poisoned partition finished");
    sender.abort();
    abort.cancel();
    task.await.expect("dispatcher stops on abort");
    delivered()
}

#[tokio::test]
async fn a_poisoned_key_holds_back_only_its_own_partition_where_the_source_bounds_partitions() {
    assert_eq!(
        delivered_behind_a_poisoned_key(true, Duration::from_secs(20)).await,
        200,
        "the other partition flows behind the poisoned key"
    );
}

#[tokio::test]
async fn without_a_bound_per_partition_from_the_source_the_waiting_bound_holds_for_all() {
    // Core NATS: nothing else would bound what waits behind the failing key.
    assert_eq!(
        delivered_behind_a_poisoned_key(false, Duration::from_secs(3)).await,
        0,
        "reading stops at 4 × 4 waiting"
    );
}
