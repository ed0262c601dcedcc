//! Messages at the edges: a 10 MiB payload, 1,000 headers, a binary key, a topic name at Kafka's
//! length limit. Each is delivered (headers within the forwarding limits), and none disturbs the
//! daemon.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_message_1000_headers_and_a_binary_key_on_a_249_character_topic_are_delivered() {
    // Kafka's limit for a topic name.
    let topic: String = "t".repeat(249);
    let kafka = Kafka::start().await;
    kafka.create_topic(&topic, 1).await;
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [function_yaml("f", "{function: f}", &f.url), trigger_yaml("t", &topic, "{function: f}", "")];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    let big: Vec<u8> = (0..10 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
    let props: BTreeMap<String, String> = [("message.max.bytes".to_string(), (11 << 20).to_string())].into();
    let publisher = kubeless_kafka::Publisher::new(&kafka.brokers, &props).expect("publisher");
    publisher.publish(&topic, Some(b"big"), &big, &[]).await.expect("publish 10 MiB");
    let names: Vec<String> = (0..1000).map(|i| format!("x-h{i:04}")).collect();
    let headers: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"v".as_slice())).collect();
    publisher.publish(&topic, Some(b"many"), b"headers", &headers).await.expect("publish 1000 headers");
    let binary_key = [0u8, 0xff, b'\n', 0x80, b'k'];
    publisher.publish(&topic, Some(&binary_key), b"binary", &[]).await.expect("publish binary key");

    wait_for("the three messages", Duration::from_secs(120), || f.delivered() == 3).await;
    let got = f.received();
    let body_of = |b: &str| got.iter().find(|r| r.body == b).unwrap_or_else(|| panic!("{b} not received"));
    let large = got.iter().find(|r| r.body.len() == big.len()).expect("the 10 MiB message");
    assert!(large.body.as_bytes() == big.as_slice(), "the 10 MiB body arrived intact");
    assert_eq!(large.headers["event-topic"], topic);
    let forwarded = body_of("headers").headers.keys().filter(|k| k.starts_with("x-h")).count();
    assert_eq!(forwarded, 64, "headers forwarded up to the limit, in order; the rest dropped");
    let binary = body_of("binary");
    assert_eq!(binary.headers["event-key-encoding"], "base64url");
    assert_eq!(binary.headers["event-key"], "AP8KgGs", "the key's bytes, base64url without padding");
    assert_eq!(daemon.get("/healthz").await.map(|(s, _)| s), Some(200));
    assert_eq!(daemon.metric("kubeless_messages_failed_total").await, 0.0);
}
