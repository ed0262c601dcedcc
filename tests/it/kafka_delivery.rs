//! Kafka → functions through a real tansu broker: fan-out, ordering, retries and dead letters.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_receives_every_message_exactly_once_in_key_order() {
    const MESSAGES: usize = 20_000;
    const KEYS: usize = 200;
    let kafka = Kafka::start().await;
    kafka.create_topic("orders", 4).await;
    let (fa, fb) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("fa", "{app: shop, function: fa}", &fa.url),
        function_yaml("fb", "{app: shop, function: fb}", &fb.url),
        trigger_yaml("orders", "orders", "{app: shop}", ""),
    ];
    std::fs::write(dir.path().join("shop.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    // Payload "key:seq": seq increases per key in publish order.
    let mut seq: HashMap<usize, usize> = HashMap::new();
    let records = (0..MESSAGES)
        .map(|i| {
            let k = i % KEYS;
            let s = seq.entry(k).or_default();
            *s += 1;
            (Some(format!("k{k}")), format!("k{k}:{s}").into_bytes())
        })
        .collect();
    kafka.publish_all("orders", records).await;

    for f in [&fa, &fb] {
        wait_for("every message delivered", Duration::from_secs(300), || f.delivered() >= MESSAGES).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // would-be duplicates get a chance to show
    for (name, f) in [("fa", &fa), ("fb", &fb)] {
        let got = f.received();
        assert_eq!(got.len(), MESSAGES, "{name} must receive each message exactly once");
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        for r in &got {
            let (key, s) = r.body.split_once(':').expect("key:seq");
            let s: usize = s.parse().expect("seq");
            assert_eq!(r.key, key, "event-key header carries the message key");
            let prev = last.insert(key.to_string(), s).unwrap_or(0);
            assert_eq!(s, prev + 1, "{name}: key {key} out of order (after {prev} came {s})");
        }
        assert_eq!(last.len(), KEYS);
        let h = &got[0].headers;
        assert_eq!(h["event-namespace"], "kafkatriggers.kubeless.io");
        assert_eq!(h["event-topic"], "orders");
        assert_eq!(h["content-type"], "application/x-www-form-urlencoded");
        assert!(h.contains_key("event-partition") && h.contains_key("event-offset") && h.contains_key("event-time"));
        assert_eq!(h["event-id"].len(), 15);
    }
    assert_eq!(daemon.metric("kubeless_messages_delivered_total").await as usize, 2 * MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_failures_are_retried_and_rejected_messages_go_to_the_dead_letter_topic() {
    let kafka = Kafka::start().await;
    kafka.create_topic("flaky", 1).await;
    kafka.create_topic("picky", 1).await;
    kafka.create_topic("picky-dlq", 1).await;
    let flaky = Function::start(Behaviour::FailFirst(vec![503, 503, 503])).await;
    let picky = Function::start(Behaviour::Status(400)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let retry = "  delivery:\n    retry: {initialBackoff: 50ms, maxBackoff: 200ms}\n";
    let dlq = "  delivery:\n    deadLetter: {topic: picky-dlq}\n";
    let manifests = [
        function_yaml("flaky", "{function: flaky}", &flaky.url),
        function_yaml("picky", "{function: picky}", &picky.url),
        trigger_yaml("flaky", "flaky", "{function: flaky}", retry),
        trigger_yaml("picky", "picky", "{function: picky}", dlq),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    let publisher = kafka.publisher();
    publisher.publish("flaky", None, b"{\"n\": 1}", &[]).await.expect("publish");
    publisher.publish("picky", Some(b"k"), b"rejected body", &[("trace", b"t-1")]).await.expect("publish");

    wait_for("the flaky function to succeed", Duration::from_secs(60), || flaky.delivered() == 1).await;
    let attempts = flaky.received();
    assert_eq!(attempts.len(), 4, "three 503s, then the 200");
    let ids: Vec<&String> = attempts.iter().map(|r| &r.headers["event-id"]).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "a redelivery carries the same event-id");
    assert_eq!(attempts[3].headers["content-type"], "application/json");

    let letters = kafka.read_all("picky-dlq", 0, 1);
    assert_eq!(letters.len(), 1, "the rejected message is dead-lettered");
    let (payload, h) = &letters[0];
    assert_eq!(payload, b"rejected body");
    assert_eq!(h["kubeless-dead-letter-reason"], "rejected");
    assert_eq!(h["kubeless-dead-letter-status"], "400");
    assert_eq!(h["kubeless-dead-letter-attempts"], "1");
    assert_eq!(h["kubeless-original-topic"], "picky");
    assert_eq!(h["kubeless-original-partition"], "0");
    assert_eq!(h["kubeless-original-offset"], "0");
    assert_eq!(h["kubeless-function"], "picky");
    assert_eq!(h["trace"], "t-1", "the original headers travel with the dead letter");
    assert_eq!(picky.received().len(), 1, "a 400 is not retried");

    wait_for("offsets committed", Duration::from_secs(10), || {
        kafka.committed("default_picky_picky_picky", "picky", 1) == [Some(1)]
            && kafka.committed("default_flaky_flaky_flaky", "flaky", 1) == [Some(1)]
    })
    .await;
    assert_eq!(daemon.metric("kubeless_messages_dead_lettered_total").await, 1.0);
    assert_eq!(daemon.metric("kubeless_delivery_retries_total").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_dead_letter_topic_unreachable_nothing_is_committed() {
    let kafka = Kafka::start().await;
    kafka.create_topic("in", 1).await;
    let picky = Function::start(Behaviour::Status(400)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 1 on loopback: nothing listens there, so every dead-letter write fails.
    let dlq = "  delivery:\n    deadLetter: {topic: lost, brokers: '127.0.0.1:1'}\n    retry: {initialBackoff: 50ms, maxBackoff: 200ms}\n";
    let manifests =
        [function_yaml("picky", "{function: picky}", &picky.url), trigger_yaml("t", "in", "{function: picky}", dlq)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let mut daemon = Daemon::start(dir.path(), &kafka.brokers, &["--drain-timeout", "2s"]).await;
    daemon.wait_ready().await;
    let publisher = kafka.publisher();
    publisher.publish("in", None, b"first", &[]).await.expect("publish");

    // The dead-letter producer gives up on a write after 10 s; wait for the first failure.
    let start = std::time::Instant::now();
    while daemon.metric("kubeless_dead_letter_write_failures_total").await < 1.0 {
        assert!(start.elapsed() < Duration::from_secs(60), "no dead-letter failure reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // more than one auto-commit interval
    assert_eq!(kafka.committed("default_t_picky_in", "in", 1), [None], "nothing may be committed");
    assert_eq!(daemon.metric("kubeless_messages_dead_lettered_total").await, 0.0);

    // Shutdown drains and commits what finished: this message did not.
    daemon.terminate();
    assert_eq!(kafka.committed("default_t_picky_in", "in", 1), [None], "nothing committed on shutdown either");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_functions_are_verified_against_the_trusted_cas_and_a_certificate_they_do_not_sign_is_dead_lettered() {
    let kafka = Kafka::start().await;
    for topic in ["secure", "stranger", "stranger-dlq"] {
        kafka.create_topic(topic, 1).await;
    }
    // Two CAs: the daemon trusts the first (SSL_CERT_FILE), not the second.
    let (trusted, _) = make_test_certificates();
    let (unknown, _) = make_test_certificates();
    let (secure, stranger) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let secure_url =
        tls_front(&secure.url, &trusted.path().join("server.crt"), &trusted.path().join("server.key")).await;
    let stranger_url =
        tls_front(&stranger.url, &unknown.path().join("server.crt"), &unknown.path().join("server.key")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let give_up =
        "  delivery:\n    retry: {maxAttempts: 2, initialBackoff: 50ms}\n    deadLetter: {topic: stranger-dlq}\n";
    let manifests = [
        function_yaml("secure", "{function: secure}", &secure_url),
        function_yaml("stranger", "{function: stranger}", &stranger_url),
        trigger_yaml("secure", "secure", "{function: secure}", ""),
        trigger_yaml("stranger", "stranger", "{function: stranger}", give_up),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let ca = trusted.path().join("ca.crt");
    let env = [("SSL_CERT_FILE", ca.to_str().expect("utf-8"))];
    let daemon = Daemon::start_with_env(dir.path(), &kafka.brokers, &[], &env).await;
    daemon.wait_ready().await;

    let publisher = kafka.publisher();
    publisher.publish("secure", None, b"over tls", &[]).await.expect("publish");
    publisher.publish("stranger", None, b"to an impostor", &[]).await.expect("publish");

    wait_for("delivery over https", Duration::from_secs(60), || secure.delivered() == 1).await;
    assert_eq!(secure.received()[0].body, "over tls");
    let letters = kafka.read_all("stranger-dlq", 0, 1);
    assert_eq!(letters.len(), 1, "the message for the untrusted function is dead-lettered");
    let (payload, h) = &letters[0];
    assert_eq!(payload, b"to an impostor");
    assert_eq!(h["kubeless-dead-letter-attempts"], "2");
    let error = &h["kubeless-dead-letter-error"];
    // Both test CAs share a name, so rustls finds "its" issuer and rejects the signature.
    assert!(error.contains("invalid peer certificate"), "the error names the cause: {error}");
    assert!(stranger.received().is_empty(), "nothing reaches a function whose certificate is not trusted");
}
