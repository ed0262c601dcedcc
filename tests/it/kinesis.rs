//! Kinesis → functions through emulators on loopback: every shard and checkpoints on moto_server,
//! resharding on kinesalite (which, unlike moto, closes a split parent and routes to its children).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::common::*;

/// Puts `n` records over `keys` partition keys; returns the shards they landed on.
async fn put_all(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    prefix: &str,
    n: usize,
    keys: usize,
) -> HashSet<String> {
    let mut shards = HashSet::new();
    for i in 0..n {
        let key = format!("pk{}", i % keys);
        let (shard, _) =
            kubeless_kinesis::put_record(client, stream, &key, format!("{prefix}{i}").as_bytes()).await.expect("put");
        shards.insert(shard);
    }
    shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_2_shard_stream_arrive_and_a_kill_9_resumes_from_the_checkpoint() {
    let moto = Kinesis::moto().await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "clicks", 2).await.expect("stream");
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        kinesis_yaml("clicks", "f", "clicks", &moto.endpoint, "  startingPosition: TRIM_HORIZON\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let mut daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;

    put_all(&client, "clicks", "a", 3000, 20).await;
    wait_for("3000 records", Duration::from_secs(120), || f.counts().len() == 3000).await;
    let h = &f.received()[0].headers;
    assert_eq!(h["event-namespace"], "kinesistriggers.kubeless.io");
    assert!(h.contains_key("event-sequence-number") && h.contains_key("event-key"));
    let shards: std::collections::BTreeSet<String> =
        f.received().iter().map(|r| r.headers["event-shard-id"].clone()).collect();
    assert_eq!(shards.len(), 2, "both shards were read");
    tokio::time::sleep(Duration::from_secs(2)).await; // one checkpoint interval

    daemon.kill9();
    let before = f.received().len();
    put_all(&client, "clicks", "b", 3000, 20).await;
    daemon.restart().await;
    daemon.wait_ready().await;
    wait_for("3000 more after the restart", Duration::from_secs(120), || f.counts().len() == 6000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replayed = f.received().len() - before - 3000;
    assert!(replayed < 1000, "{replayed} records replayed: the restart must resume from the checkpoint, not the start");
}

/// Resharding 2 → 4 while the daemon reads: each of the two shards is split (kinesalite has no
/// UpdateShardCount; two SplitShards is the same 2 → 4), which closes it and sends every later
/// record to its children. The readers must finish each parent before starting its children, so
/// for every partition key the records put before the split arrive before those put after it.
/// The function is slow (4 in flight, 10 ms each) so the parents still hold most of their records
/// when the children fill: a reader that started the children early would break the key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_2_to_4_while_reading_loses_no_record_and_keeps_partition_key_order() {
    let kinesis = Kinesis::kinesalite().await;
    let client = kinesis.client().await;
    kubeless_kinesis::create_stream(&client, "orders", 2).await.expect("stream");
    let f = Function::start(Behaviour::Slow(Duration::from_millis(10))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        kinesis_yaml(
            "orders",
            "f",
            "orders",
            &kinesis.endpoint,
            "  startingPosition: TRIM_HORIZON\n  delivery:\n    maxInFlight: 4\n",
        ),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;

    let before = put_all(&client, "orders", "a", 1000, 10).await;
    wait_for("the first records to flow", Duration::from_secs(60), || !f.received().is_empty()).await;
    let parents: HashSet<String> =
        kubeless_kinesis::split_open_shards(&client, "orders").await.expect("reshard").into_iter().collect();
    assert_eq!(parents.len(), 2, "both shards were split");
    assert_eq!(before, parents, "the first records went to the two original shards");
    let after = put_all(&client, "orders", "b", 1000, 10).await;
    assert!(after.is_disjoint(&parents), "records after the split go to the children, not to {parents:?}");
    assert!(after.len() >= 2, "the records after the split spread over the children: {after:?}");

    wait_for("every record across the reshard", Duration::from_secs(120), || f.counts().len() == 2000).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(f.counts().values().all(|n| *n == 1), "no duplicates in a clean run");
    let read_from: HashSet<String> =
        f.received().iter().filter_map(|r| r.headers.get("event-shard-id").cloned()).collect();
    assert!(after.is_subset(&read_from), "the children were read: {read_from:?}");
    // Per partition key: every "a" record before every "b" record, each run in publish order.
    let mut by_key: BTreeMap<String, Vec<(char, usize)>> = BTreeMap::new();
    for r in f.received() {
        let (prefix, n) = r.body.split_at(1);
        by_key.entry(r.key.clone()).or_default().push((prefix.chars().next().unwrap_or('?'), n.parse().expect("n")));
    }
    for (key, seq) in by_key {
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "partition key {key} out of order: {seq:?}");
    }
    let status = daemon.status().await;
    assert_eq!(status["consumers"][0]["state"], "Ready", "the reader survived the reshard");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_reported_and_the_reader_starts_once_it_exists() {
    let moto = Kinesis::moto().await;
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        kinesis_yaml("late", "f", "late", &moto.endpoint, "  startingPosition: TRIM_HORIZON\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_states(&["f"], |s| s[0].contains("stream late does not exist in us-east-1")).await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "late", 1).await.expect("stream");
    daemon.wait_ready().await;
    kubeless_kinesis::put_record(&client, "late", "k", b"finally").await.expect("put");
    wait_for("the record, once the stream exists", Duration::from_secs(60), || f.delivered() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_and_created_again_is_read_from_its_start_not_from_the_old_checkpoint() {
    let moto = Kinesis::moto().await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "again", 1).await.expect("stream");
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        kinesis_yaml("again", "f", "again", &moto.endpoint, "  startingPosition: TRIM_HORIZON\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    put_all(&client, "again", "old", 500, 5).await;
    wait_for("the old stream's records", Duration::from_secs(60), || f.counts().len() == 500).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // its checkpoint is written

    // Same name, new stream: its sequence numbers start again, below the old checkpoint.
    client.delete_stream().stream_name("again").send().await.expect("delete");
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new creation time
    kubeless_kinesis::create_stream(&client, "again", 1).await.expect("stream again");
    put_all(&client, "again", "new", 500, 5).await;
    wait_for("every record of the new stream", Duration::from_secs(90), || {
        f.counts().keys().filter(|b| b.starts_with("new")).count() == 500
    })
    .await;
    assert!(daemon.log_text().contains("deleted and created again"), "the recreation is reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_retried_forever_stops_its_shard_at_the_uncommitted_limit() {
    const LIMIT: usize = 200;
    const RECORDS: usize = 1500;
    // GetRecords returns up to this many records at once; the limit is checked between calls.
    const PER_CALL: usize = 500;
    let moto = Kinesis::moto().await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "poisoned", 1).await.expect("stream");
    kubeless_kinesis::put_record(&client, "poisoned", "pk", b"poison").await.expect("put");
    put_all(&client, "poisoned", "r", RECORDS, 10).await;
    let f = Function::start(Behaviour::Poison("poison".into())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = format!(
        "  startingPosition: TRIM_HORIZON\n  delivery:\n    ordering: none\n    maxUncommitted: {LIMIT}\n    retry: {{initialBackoff: 10ms, maxBackoff: 50ms}}\n"
    );
    let manifests =
        [function_yaml("f", "{function: f}", &f.url), kinesis_yaml("poisoned", "f", "poisoned", &moto.endpoint, &spec)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;

    wait_for("records behind the poison", Duration::from_secs(60), || f.delivered() >= LIMIT / 2).await;
    let start = std::time::Instant::now();
    while daemon.metric("kubeless_oldest_unacked_seconds").await < 3.0 {
        assert!(start.elapsed() < Duration::from_secs(60), "the oldest unfinished record is not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = f.delivered();
    eprintln!("delivered behind the poison: {held}");
    assert!(held < LIMIT + PER_CALL, "{held} delivered behind one unfinished record with a limit of {LIMIT}");
    assert!(daemon.log_text().contains("Shard paused: too many records"), "the pause is logged");

    f.heal();
    wait_for("every record", Duration::from_secs(120), || f.delivered() == RECORDS + 1).await;
}

/// A function that takes `delay` per call and counts calls arriving while the same body is still
/// being handled (a record delivered twice at once), and the arrival order of bodies.
struct Overlaps {
    url: String,
    state: std::sync::Arc<OverlapState>,
}

#[derive(Default)]
struct OverlapState {
    running: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    concurrent_duplicates: std::sync::atomic::AtomicUsize,
    arrivals: std::sync::Mutex<Vec<String>>,
    done: std::sync::Mutex<HashSet<String>>,
}

impl Overlaps {
    async fn start(delay: Duration) -> Self {
        use axum::body::Bytes;
        use axum::extract::State;
        use std::sync::atomic::Ordering;
        use std::sync::Arc;
        async fn handle(State((s, delay)): State<(Arc<OverlapState>, Duration)>, body: Bytes) -> &'static str {
            let body = String::from_utf8_lossy(&body).into_owned();
            {
                let mut running = s.running.lock().expect("lock");
                let n = running.entry(body.clone()).or_default();
                if *n > 0 {
                    s.concurrent_duplicates.fetch_add(1, Ordering::SeqCst);
                }
                *n += 1;
            }
            s.arrivals.lock().expect("lock").push(body.clone());
            tokio::time::sleep(delay).await;
            *s.running.lock().expect("lock").entry(body.clone()).or_default() -= 1;
            s.done.lock().expect("lock").insert(body);
            "ok"
        }
        let state = Arc::new(OverlapState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new().fallback(handle).with_state((state.clone(), delay));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_records_error_mid_stream_drains_before_the_shard_is_read_again() {
    const N: usize = 200;
    let moto = Kinesis::moto().await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "faulty", 1).await.expect("stream");
    put_all(&client, "faulty", "r", N, 20).await;
    // The first GetRecords hands out all 200 records; the second fails while they are delivered.
    let proxy = crate::common::proxy::KinesisFaults::start(&moto.endpoint, 2).await;
    let f = Overlaps::start(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        kinesis_yaml("faulty", "f", "faulty", &proxy.endpoint, "  startingPosition: TRIM_HORIZON\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    wait_for("every record", Duration::from_secs(120), || f.state.done.lock().expect("lock").len() == N).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        proxy.get_records.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the error was injected and reading went on"
    );
    assert!(daemon.log_text().contains("injected by the test"), "the reader saw the error");
    let concurrent = f.state.concurrent_duplicates.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(concurrent, 0, "records delivered twice at once");
    // The failed reader drained and checkpointed all it handed out before the shard was read
    // again: nothing was read twice.
    let arrivals = f.state.arrivals.lock().expect("lock").len();
    assert_eq!(arrivals, N, "each record once");
    // Per key, records arrive in the order they were put (a repeat after the restart may come, but
    // never one put later before one put earlier).
    let mut seen: HashSet<String> = HashSet::new();
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for body in f.state.arrivals.lock().expect("lock").iter() {
        if !seen.insert(body.clone()) {
            continue;
        }
        let i: usize = body.trim_start_matches('r').parse().expect("index");
        if let Some(prev) = last.insert(format!("pk{}", i % 20), i) {
            assert!(prev < i, "r{i} arrived after r{prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_kinesis_triggers_function_goes_on_from_its_checkpoint() {
    const N: usize = 100;
    let moto = Kinesis::moto().await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "edited", 1).await.expect("stream");
    // The first function is slow and takes one record at a time: most records are still unread
    // when the trigger is edited to the second.
    let (slow, fast) =
        (Function::start(Behaviour::Slow(Duration::from_millis(200))).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |function: &str| {
        let extra = "  delivery: {maxInFlight: 1, ordering: partition}\n";
        let manifests = [
            function_yaml("slow", "{function: slow}", &slow.url),
            function_yaml("fast", "{function: fast}", &fast.url),
            kinesis_yaml("edited", function, "edited", &moto.endpoint, extra),
        ];
        std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    };
    write("slow");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--drain-timeout", "10s"]).await;
    daemon.wait_ready().await;
    // LATEST: the reader has its starting point before anything is put.
    tokio::time::sleep(Duration::from_secs(2)).await;
    put_all(&client, "edited", "e", N, 10).await;
    wait_for("the first records at the slow function", Duration::from_secs(60), || slow.delivered() >= 5).await;
    write("fast");
    // Every record reaches one of the two: the new reader starts after the old one's checkpoint,
    // not at LATEST (which skipped every record the old reader had not read yet).
    let all = || {
        let mut got: HashSet<String> = slow.counts().into_keys().collect();
        got.extend(fast.counts().into_keys());
        got.len()
    };
    wait_for("every record at one function or the other", Duration::from_secs(60), || all() == N).await;
    assert!(fast.delivered() > 0, "the edit moved the trigger to the second function");
}
