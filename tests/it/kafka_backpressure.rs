//! A slow function with a large backlog: consumption pauses, memory stays bounded, delivery goes on.

use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_function_with_100k_backlog_keeps_memory_bounded_and_delivery_going() {
    const BACKLOG: usize = 100_000;
    const PAYLOAD: usize = 1024;
    // 100k × 1 KiB = ~98 MiB of backlog. A daemon that buffered it would exceed this bound.
    const RSS_LIMIT_MIB: f64 = 80.0;
    let kafka = Kafka::start().await;
    kafka.create_topic("backlog", 4).await;
    let payload = vec![b'x'; PAYLOAD];
    let records = (0..BACKLOG)
        .map(|i| (Some(format!("k{}", i % 1000)), [format!("{i:08}").as_bytes(), &payload[8..]].concat()))
        .collect();
    kafka.publish_all("backlog", records).await;

    let f = Function::start(Behaviour::Slow(Duration::from_secs(1))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests =
        [function_yaml("slow", "{function: slow}", &f.url), trigger_yaml("t", "backlog", "{function: slow}", "")];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    let mut peak = 0.0f64;
    let mut delivered = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(daemon.rss_mib());
        delivered.push(f.delivered());
    }
    eprintln!("peak RSS {peak:.1} MiB; delivered per second: {delivered:?}");
    assert!(peak < RSS_LIMIT_MIB, "daemon RSS {peak:.1} MiB exceeds {RSS_LIMIT_MIB} MiB with a slow function");
    // Delivery goes on: every 5-second window of the last 15 seconds delivered something.
    for w in delivered[5..].windows(5) {
        assert!(w[4] > w[0], "delivery stalled: {delivered:?}");
    }
    // maxInFlight (64) requests per second at 1 s each: the backlog is far from drained.
    assert!(*delivered.last().expect("samples") < BACKLOG / 10);
    let lag = daemon.metric("kubeless_consumer_lag").await;
    assert!(lag > 0.0, "the lag gauge shows the waiting backlog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_retried_forever_pauses_its_partition_at_the_uncommitted_limit() {
    const LIMIT: usize = 200;
    const BACKLOG: usize = 3000;
    let kafka = Kafka::start().await;
    kafka.create_topic("poisoned", 1).await;
    let mut records = vec![(None, b"poison".to_vec())];
    records.extend((0..BACKLOG).map(|i| (None, format!("m{i}").into_bytes())));
    kafka.publish_all("poisoned", records).await;

    let f = Function::start(Behaviour::Poison("poison".into())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let delivery = format!(
        "  delivery:\n    ordering: none\n    maxInFlight: 8\n    maxUncommitted: {LIMIT}\n    retry: {{initialBackoff: 10ms, maxBackoff: 50ms}}\n"
    );
    let manifests =
        [function_yaml("f", "{function: f}", &f.url), trigger_yaml("t", "poisoned", "{function: f}", &delivery)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    // The poison is retried without end; the rest flow until the partition holds LIMIT offsets.
    wait_for("deliveries behind the poison", Duration::from_secs(60), || f.delivered() >= LIMIT / 2).await;
    let start = std::time::Instant::now();
    loop {
        if daemon.metric("kubeless_oldest_unacked_seconds").await >= 3.0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the oldest unfinished message is not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = f.delivered();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = f.delivered();
    eprintln!("delivered behind the poison: {held}, 2 s later {still}");
    // What was handed out before the pause took hold: at most one dispatch channel's worth more.
    assert!(still <= LIMIT + 64, "{still} delivered behind one unfinished message with a limit of {LIMIT}");
    assert_eq!(kafka.committed("default_t_f_poisoned", "poisoned", 1), [None], "nothing is committed past the poison");
    let log = daemon.log_text();
    assert!(log.contains("Partition paused: too many offsets"), "the pause is logged");

    // Once the poison goes through, the partition resumes and everything arrives.
    f.heal();
    wait_for("the whole backlog", Duration::from_secs(120), || f.delivered() == BACKLOG + 1).await;
    let start = std::time::Instant::now();
    while daemon.metric("kubeless_oldest_unacked_seconds").await != 0.0 {
        assert!(start.elapsed() < Duration::from_secs(30), "the gauge does not return to 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
