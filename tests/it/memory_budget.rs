//! The daemon-wide memory budget (`--memory-budget`), against a real kube-apiserver and tansu: the
//! bytes of messages held stay inside it whatever the triggers ask for, and it is shared fairly, so
//! a hostile trigger is paused at its share while a polite one delivers at its own rate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::common::kubeapi::KubeApi;
use crate::common::*;

const MIB: usize = 1 << 20;

async fn cluster() -> KubeApi {
    let api = KubeApi::start().await;
    api.install_crds().await;
    api
}

/// Publishes `count` messages of `size` bytes to `topic`, many in flight.
async fn publish_big(kafka: &Kafka, topic: &str, count: usize, size: usize) {
    let props: BTreeMap<String, String> = [("message.max.bytes".to_string(), (size + MIB).to_string())].into();
    let publisher = kubeless_kafka::Publisher::new(&kafka.brokers, &props).expect("publisher");
    let body = vec![b'x'; size];
    futures::stream::iter(0..count)
        .map(|i| {
            let (publisher, body) = (&publisher, &body);
            async move {
                let mut payload = format!("{topic}-{i}-").into_bytes();
                payload.extend_from_slice(&body[payload.len()..]);
                publisher.publish(topic, Some(format!("k{i}").as_bytes()), &payload, &[]).await.expect("publish")
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

fn selecting(name: &str, topic: &str, function: &str, delivery: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  topic: {topic}\n  functionSelector: {{matchLabels: {{function: {function}}}}}\n  delivery: {delivery}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_triggers_of_one_mib_messages_behind_a_slow_function_stay_inside_the_memory_budget() {
    const TRIGGERS: usize = 40;
    const BUDGET_MIB: f64 = 32.0;
    let api = cluster().await;
    let kafka = Kafka::start().await;
    for i in 0..TRIGGERS {
        kafka.create_topic(&format!("big-{i}"), 1).await;
    }
    let slow = Function::start(Behaviour::Slow(Duration::from_secs(4))).await;
    api.apply_ok(&function_yaml("slow", "{function: slow}", &slow.url));
    let triggers: Vec<String> = (0..TRIGGERS)
        .map(|i| selecting(&format!("big-{i}"), &format!("big-{i}"), "slow", "{maxInFlight: 64}"))
        .collect();
    api.apply_ok(&triggers.join("---\n"));
    let daemon = Daemon::start_kube(&api.kubeconfig, &kafka.brokers, &["--memory-budget", "32MiB"], &[]);
    daemon.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = daemon.rss_mib();

    // 10 messages of 1 MiB on every topic: 400 MiB of backlog, each trigger free to take 64 at once.
    for i in 0..TRIGGERS {
        publish_big(&kafka, &format!("big-{i}"), 10, MIB).await;
    }
    let mut peak = idle;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        peak = peak.max(daemon.rss_mib());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let delivered = slow.received().len();
    eprintln!("idle RSS {idle:.1} MiB, peak {peak:.1} MiB, {delivered} deliveries in 30 s");
    assert!(delivered >= TRIGGERS, "every trigger delivers meanwhile ({delivered})");
    // What the daemon may hold: the budget plus one message past its share per consumer (the held
    // bound asserted below); what librdkafka holds per consumer beyond it (its prefetch is capped at
    // a quarter share, but a fetch returns at least one message: one 1 MiB record queued, one
    // arriving); and allocator slack (jemalloc keeps freed pages for its decay time, librdkafka's
    // glibc arenas keep theirs). Measured: +137..146 MiB here, +167 on CI's busier machine; without
    // the budget the triggers hold the backlog: +495 MiB.
    let held_bound = BUDGET_MIB + TRIGGERS as f64 * 1.0;
    let allowed = held_bound + TRIGGERS as f64 * 2.0 + 32.0;
    assert!(
        peak - idle <= allowed,
        "RSS grew by {:.1} MiB (idle {idle:.1}, peak {peak:.1}), allowed {allowed}",
        peak - idle
    );
    // Each consumer may hold one message past its share (one message always moves): here the
    // shares (0.8 MiB) are smaller than a message, so each holds exactly one.
    let held = daemon.metric("kubeless_memory_budget_held_bytes").await;
    let most = (BUDGET_MIB as usize * MIB + TRIGGERS * (MIB + 1024)) as f64;
    assert!(held > 0.0 && held <= most, "{held} bytes held, at most {most}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_trigger_is_paused_at_its_share_and_a_polite_one_delivers_at_its_rate() {
    const SIZE: usize = 64 << 10;
    let api = cluster().await;
    let kafka = Kafka::start().await;
    kafka.create_topic("flood", 4).await;
    kafka.create_topic("steady", 1).await;
    let (stuck, polite) =
        tokio::join!(Function::start(Behaviour::Slow(Duration::from_secs(30))), Function::start(Behaviour::Ok));
    api.apply_ok(&function_yaml("stuck", "{function: stuck}", &stuck.url));
    api.apply_ok(&function_yaml("polite", "{function: polite}", &polite.url));
    api.apply_ok(&selecting("hostile", "flood", "stuck", "{maxInFlight: 10000, ordering: none}"));
    api.apply_ok(&selecting("polite", "steady", "polite", "{maxInFlight: 4}"));
    publish_big(&kafka, "flood", 2000, SIZE).await;
    let env = [("KUBELESS_MAX_IN_FLIGHT", "10000")];
    let daemon = Daemon::start_kube(&api.kubeconfig, &kafka.brokers, &["--memory-budget", "16MiB"], &env);
    daemon.wait_ready().await;

    // The hostile trigger fills its share (8 MiB: 128 messages of 64 KiB) and stops there.
    wait_for("the hostile trigger to fill its share", Duration::from_secs(60), || stuck.in_flight() >= 100).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let share = (16 * MIB / 2) / SIZE;
    assert!(stuck.in_flight() <= share + 1, "{} in flight, share {share}", stuck.in_flight());

    // The polite one gets everything it is sent, meanwhile.
    publish_big(&kafka, "steady", 200, SIZE).await;
    wait_for("the polite trigger's 200 messages", Duration::from_secs(60), || polite.delivered() >= 200).await;
    assert!(stuck.in_flight() <= share + 1, "{} in flight, share {share}", stuck.in_flight());
}
