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
