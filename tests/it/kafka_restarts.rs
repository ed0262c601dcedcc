//! The daemon dies or is stopped mid-stream: nothing is lost; a clean stop leaves no duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

const MESSAGES: usize = 6_000;

/// A manifests directory: function `f` at `f`'s URL and trigger `t` on `stream`, with `extra` added
/// to the trigger's spec.
fn manifests(f: &Function, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [function_yaml("f", "{function: f}", &f.url), trigger_yaml("t", "stream", "{function: f}", extra)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    dir
}

/// Publishes the stream and starts a daemon on it; `extra` is added to the trigger's spec.
async fn setup(kafka: &Kafka, f: &Function, extra: &str) -> (tempfile::TempDir, Daemon) {
    kafka.create_topic("stream", 4).await;
    let dir = manifests(f, extra);
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &["--drain-timeout", "10s"]).await;
    daemon.wait_ready().await;
    let records = (0..MESSAGES).map(|i| (Some(format!("k{}", i % 50)), format!("m{i}").into_bytes())).collect();
    kafka.publish_all("stream", records).await;
    (dir, daemon)
}

/// How often each body arrived with a 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_mid_stream_then_restart_loses_no_message() {
    let kafka = Kafka::start().await;
    // A little latency per request keeps the stream going long enough to kill it in the middle.
    let f = Function::start(Behaviour::Slow(Duration::from_millis(5))).await;
    let (_dir, mut daemon) = setup(&kafka, &f, "  delivery:\n    maxInFlight: 8\n").await;
    wait_for("a third of the stream", Duration::from_secs(120), || f.delivered() >= MESSAGES / 3).await;
    // Offsets are committed every second: kill after the first commit, so that the duplicates
    // below are bounded by the window since (before it, everything would be read again).
    wait_for("a commit", Duration::from_secs(30), || {
        kafka.committed("default_t_f_stream", "stream", 4).iter().any(Option::is_some)
    })
    .await;
    daemon.kill9();
    // Requests the daemon sent before it died may still be in the function's handler (5 ms each);
    // they count as delivered before the kill.
    wait_for("requests in flight at the kill to finish", Duration::from_secs(10), || f.in_flight() == 0).await;
    let before_kill = f.counts();
    assert!(before_kill.len() < MESSAGES, "the kill must land mid-stream");

    daemon.restart().await;
    wait_for("every message after the restart", Duration::from_secs(180), || f.counts().len() == MESSAGES).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = f.counts();
    assert_eq!(after.len(), MESSAGES, "no message lost");
    // Duplicates come only from the window that was delivered but not yet committed at the kill:
    // every duplicated message was delivered before the kill, and at most once more after it.
    for (body, n) in &after {
        if *n > 1 {
            assert!(before_kill.contains_key(body), "{body} was duplicated but never delivered before the kill");
            assert_eq!(*n, before_kill[body] + 1, "{body} delivered {n} times");
        }
    }
    let dups: usize = after.values().map(|n| n - 1).sum();
    assert!(dups < before_kill.len(), "duplicates ({dups}) limited to the uncommitted window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_restart_delivers_every_message_with_zero_duplicates() {
    let kafka = Kafka::start().await;
    let f = Function::start(Behaviour::Slow(Duration::from_millis(5))).await;
    let (_dir, mut daemon) = setup(&kafka, &f, "").await;
    wait_for("a third of the stream", Duration::from_secs(120), || f.delivered() >= MESSAGES / 3).await;
    daemon.terminate();
    let before = f.delivered();
    assert!(before < MESSAGES, "the stop must land mid-stream");
    daemon.restart().await;
    wait_for("every message after the restart", Duration::from_secs(180), || f.counts().len() == MESSAGES).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = f.counts();
    let dups: Vec<(&String, &usize)> = after.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{} duplicates after SIGTERM, e.g. {:?}", dups.len(), dups.first());
    assert_eq!(after.len(), MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_joining_mid_stream_takes_partitions_without_loss_or_duplicates() {
    let kafka = Kafka::start().await;
    kafka.create_topic("stream", 4).await;
    let f = Function::start(Behaviour::Slow(Duration::from_millis(5))).await;
    // Few requests in flight (~800 msg/s) so the first daemon falls behind the producer below.
    let dir = manifests(&f, "  delivery:\n    maxInFlight: 4\n");
    let first = Daemon::start(dir.path(), &kafka.brokers, &["--drain-timeout", "10s"]).await;
    first.wait_ready().await;

    // The producer keeps publishing until told to stop, then publishes a tail, so the stream is
    // flowing when the group rebalances and the second daemon's partitions get new messages
    // after it owns them, however long the join takes on a loaded machine.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(kafka.publisher(), stop.clone()));
    wait_for("the first daemon to deliver", Duration::from_secs(120), || f.delivered() >= 500).await;

    // Same manifests, same consumer groups: the group rebalances, the first daemon's partitions are
    // revoked, drained and committed before the second daemon takes half of them.
    let second = Daemon::start(dir.path(), &kafka.brokers, &["--drain-timeout", "10s"]).await;
    second.wait_ready().await;
    wait_for("the second daemon to own partitions", Duration::from_secs(120), || {
        second.log_text().lines().any(|l| l.contains("Partitions assigned.") && !l.contains("partitions=0"))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let published = producer.await.expect("producer task");
    wait_for("every message", Duration::from_secs(180), || f.counts().len() == published).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = f.counts();
    assert_eq!(after.len(), published, "no message lost");
    let dups: Vec<(&String, &usize)> = after.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{} duplicates across the rebalance, e.g. {:?}", dups.len(), dups.first());
    let (a, b) = (
        first.metric("kubeless_messages_delivered_total").await,
        second.metric("kubeless_messages_delivered_total").await,
    );
    assert!(a > 0.0 && b > 0.0, "both daemons delivered (first {a}, second {b})");
    assert!(first.log_text().contains("Partitions revoked"), "the first daemon went through a revocation");
}

/// Publishes batches of 100 records over 50 keys, 10 batches a second, until `stop` is set, then
/// 1,000 more; returns how many it published.
async fn produce_until(publisher: kubeless_kafka::Publisher, stop: Arc<AtomicBool>) -> usize {
    const BATCH: usize = 100;
    let mut sent = 0;
    let mut tail = None;
    while tail.is_none_or(|end| sent < end) {
        if tail.is_none() && stop.load(Ordering::Relaxed) {
            tail = Some(sent + 1_000);
        }
        let batch =
            (sent..sent + BATCH).map(|i| {
                let (key, body) = (format!("k{}", i % 50), format!("m{i}"));
                let publisher = &publisher;
                async move {
                    publisher.publish("stream", Some(key.as_bytes()), body.as_bytes(), &[]).await.expect("publish")
                }
            });
        futures::future::join_all(batch).await;
        sent += BATCH;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sent
}

/// Consumer-group churn: a second and a third daemon join and leave (SIGTERM) five times while the
/// producer publishes. All three run the same trigger and function names — one consumer group —
/// but each calls its own copy of the function, so each copy's requests are one owner's deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_joining_and_leaving_five_times_lose_nothing_and_keep_key_order_per_owner() {
    const ROUNDS: usize = 5;
    const MAX_IN_FLIGHT: usize = 4;
    let kafka = Kafka::start().await;
    kafka.create_topic("stream", 4).await;
    let mut owners = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..3 {
        let f = Function::start(Behaviour::Slow(Duration::from_millis(2))).await;
        dirs.push(manifests(&f, &format!("  delivery:\n    maxInFlight: {MAX_IN_FLIGHT}\n")));
        owners.push(f);
    }
    let args = ["--drain-timeout", "10s"];
    let first = Daemon::start(dirs[0].path(), &kafka.brokers, &args).await;
    first.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(kafka.publisher(), stop.clone()));
    wait_for("the first daemon to deliver", Duration::from_secs(120), || owners[0].delivered() >= 500).await;

    let owns_partitions =
        |d: &Daemon| d.log_text().lines().any(|l| l.contains("Partitions assigned.") && !l.contains("partitions=0"));
    for round in 1..=ROUNDS {
        let before = (owners[1].delivered(), owners[2].delivered());
        let mut joined = [
            Daemon::start(dirs[1].path(), &kafka.brokers, &args).await,
            Daemon::start(dirs[2].path(), &kafka.brokers, &args).await,
        ];
        wait_for(&format!("round {round}: both to own partitions and deliver"), Duration::from_secs(120), || {
            joined.iter().all(owns_partitions) && owners[1].delivered() > before.0 && owners[2].delivered() > before.1
        })
        .await;
        for d in &mut joined {
            d.terminate(); // exit code 0, asserted
        }
    }
    stop.store(true, Ordering::Relaxed);
    let published = producer.await.expect("producer task");

    let all = || {
        let mut c: HashMap<String, usize> = HashMap::new();
        for f in &owners {
            for (body, n) in f.counts() {
                *c.entry(body).or_default() += n;
            }
        }
        c
    };
    wait_for("every message", Duration::from_secs(180), || all().len() == published).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = all();
    assert_eq!(counts.len(), published, "no message lost");
    // Each owner delivers a key's messages in the order they were published (m{i}: i grows).
    for (owner, f) in owners.iter().enumerate() {
        let mut last: HashMap<String, usize> = HashMap::new();
        for r in f.received() {
            let i: usize = r.body.trim_start_matches('m').parse().expect("body m{i}");
            if let Some(prev) = last.insert(r.key.clone(), i) {
                assert!(i > prev, "daemon {owner} delivered key {} out of order: m{prev} then m{i}", r.key);
            }
        }
    }
    // Every leave is a SIGTERM: the leaving member drains and commits before its partitions move,
    // so a duplicate can only come from what was in flight at a membership change — at most
    // maxInFlight per partition at each of the 4 changes a round makes (two joins, two leaves).
    let dups: usize = counts.values().map(|n| n - 1).sum();
    let bound = ROUNDS * 4 * 4 * MAX_IN_FLIGHT;
    eprintln!("{published} messages, {dups} duplicates over {ROUNDS} rounds (bound {bound})");
    assert!(dups <= bound, "{dups} duplicates over {ROUNDS} rounds of churn (bound {bound})");
}

/// A SIGTERM lands while the group rebalances (a second daemon just joined and the first is
/// draining its revoked partitions): the first exits cleanly (code 0) within its drain timeout,
/// having committed only what it delivered, and the second takes every partition and delivers the
/// rest — nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_a_rebalance_exits_cleanly_and_the_survivor_delivers_the_rest() {
    let kafka = Kafka::start().await;
    kafka.create_topic("stream", 4).await;
    // Slow enough that the revoked partitions' drain is still running when the signal lands.
    let f = Function::start(Behaviour::Slow(Duration::from_millis(20))).await;
    let dir = manifests(&f, "  delivery:\n    maxInFlight: 16\n");
    let args = ["--drain-timeout", "10s"];
    let mut first = Daemon::start(dir.path(), &kafka.brokers, &args).await;
    first.wait_ready().await;
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(produce_until(kafka.publisher(), stop.clone()));
    wait_for("the first daemon to deliver", Duration::from_secs(120), || f.delivered() >= 500).await;

    let second = Daemon::start(dir.path(), &kafka.brokers, &args).await;
    wait_for("the rebalance to revoke the first daemon's partitions", Duration::from_secs(120), || {
        first.log_text().contains("Partitions revoked")
    })
    .await;
    first.terminate(); // exit code 0, asserted
    assert!(first.log_text().contains("stopping during a rebalance"), "the signal landed during the rebalance");
    wait_for("the second daemon to own every partition", Duration::from_secs(120), || {
        second.log_text().lines().any(|l| l.contains("Partitions assigned.") && l.contains("partitions=4"))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let published = producer.await.expect("producer task");
    wait_for("every message", Duration::from_secs(180), || f.counts().len() == published).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = f.counts();
    assert_eq!(counts.len(), published, "no message lost");
    let dups: usize = counts.values().map(|n| n - 1).sum();
    eprintln!("{published} messages, {dups} duplicates");
    // The first daemon drained before it left: what it delivered was committed.
    assert!(dups <= 4 * 16, "{dups} duplicates, more than was in flight at the signal");
}
