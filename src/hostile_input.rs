//! Property tests over everything the daemon reads from outside: manifests (any YAML, and valid
//! manifests with one field replaced by anything), the headers built from arbitrary keys, topics and
//! broker headers, cron expressions and `Retry-After` values. Each must end in a value or an error
//! that names what is wrong, never a panic.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use kubeless_connector::{AckHandle, Message, Origin};
use proptest::prelude::*;
use serde_yaml::Value;

use crate::control::manifests::{parse_document, parse_file};
use crate::delivery::event::{event_headers, EventStyle};
use crate::delivery::retry::{parse_retry_after, RETRY_AFTER_CAP};
use crate::schedule::Schedule;

/// Any YAML value, a few levels deep.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop::sample::select(vec!["", "0", "-1", "1e9", "10x", "5m", "key", "none", "@every 0s", "* * * * *"])
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec(("[a-zA-Z-]{1,12}", inner), 0..4)
                .prop_map(|kv| Value::Mapping(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())),
        ]
    })
}

const KAFKA: &str = "apiVersion: kubeless.io/v1beta1
kind: KafkaTrigger
metadata: {name: t, namespace: ns}
spec:
  topic: orders
  functionSelector: {matchLabels: {app: f}}
  initialOffset: earliest
  delivery:
    ordering: key
    maxInFlight: 8
    maxUncommitted: 500
    timeout: 5s
    retry: {maxAttempts: 3, initialBackoff: 100ms, maxBackoff: 1s, maxRecordAge: 1h}
    rateLimit: {perSecond: 10, burst: 5}
";

const NATS: &str = "apiVersion: kubeless.io/v1beta1
kind: NATSTrigger
metadata: {name: t, namespace: ns}
spec:
  topic: orders.>
  functionSelector: {matchLabels: {app: f}}
  jetstream: {stream: ORDERS}
";

const KINESIS: &str = "apiVersion: kubeless.io/v1beta1
kind: KinesisTrigger
metadata: {name: t, namespace: ns}
spec:
  function-name: f
  aws-region: us-east-1
  stream: clicks
  secret: aws
  shard: shardId-000000000000
";

const CRON: &str = "apiVersion: kubeless.io/v1beta1
kind: CronJobTrigger
metadata: {name: t, namespace: ns}
spec:
  function-name: f
  schedule: '*/5 * * * *'
  timezone: Europe/Paris
  concurrencyPolicy: Forbid
";

const FUNCTION: &str = "apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: f, namespace: ns, labels: {app: f}}
spec: {runtime: python3.7, handler: h.f, timeout: '30'}
";

/// (manifest, path of a field in it) pairs to replace.
fn field() -> impl Strategy<Value = (&'static str, Vec<&'static str>)> {
    let fields: Vec<(&str, Vec<&str>)> = vec![
        (KAFKA, vec!["spec", "topic"]),
        (KAFKA, vec!["spec", "functionSelector"]),
        (KAFKA, vec!["spec", "initialOffset"]),
        (KAFKA, vec!["spec", "delivery", "ordering"]),
        (KAFKA, vec!["spec", "delivery", "maxInFlight"]),
        (KAFKA, vec!["spec", "delivery", "maxUncommitted"]),
        (KAFKA, vec!["spec", "delivery", "timeout"]),
        (KAFKA, vec!["spec", "delivery", "retry", "maxAttempts"]),
        (KAFKA, vec!["spec", "delivery", "retry", "initialBackoff"]),
        (KAFKA, vec!["spec", "delivery", "retry", "maxRecordAge"]),
        (KAFKA, vec!["spec", "delivery", "rateLimit", "perSecond"]),
        (NATS, vec!["spec", "topic"]),
        (NATS, vec!["spec", "jetstream"]),
        (KINESIS, vec!["spec", "aws-region"]),
        (KINESIS, vec!["spec", "stream"]),
        (KINESIS, vec!["spec", "shard"]),
        (CRON, vec!["spec", "schedule"]),
        (CRON, vec!["spec", "timezone"]),
        (CRON, vec!["spec", "concurrencyPolicy"]),
        (FUNCTION, vec!["spec", "timeout"]),
    ];
    prop::sample::select(fields)
}

fn replace(doc: &mut Value, path: &[&str], with: Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut at = doc;
    for p in parents {
        at = at.get_mut(*p).expect("the path exists in the base manifest");
    }
    if let Value::Mapping(m) = at {
        m.insert(Value::from(*last), with);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_manifest_file_is_parsed_or_refused_naming_the_file(text in ".{0,300}") {
        for result in parse_file(Path::new("/m/odd.yaml"), &text) {
            if let Err(e) = result {
                prop_assert!(e.to_string().starts_with("/m/odd.yaml (document "), "{e}");
            }
        }
    }

    #[test]
    fn a_field_replaced_by_anything_is_accepted_or_refused_naming_that_field(
        (base, path) in field(),
        with in any_value(),
    ) {
        let mut doc: Value = serde_yaml::from_str(base).expect("base manifest");
        prop_assert!(parse_document(doc.clone()).is_ok(), "the base manifest is valid");
        replace(&mut doc, &path, with.clone());
        if let Err((_, problem)) = parse_document(doc) {
            let leaf = path[path.len() - 1];
            prop_assert!(problem.contains(leaf), "{}: {with:?} → {problem}", path.join("."));
        }
    }

    #[test]
    fn headers_from_any_key_topic_and_broker_headers_are_valid_http(
        key in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        topic in ".{1,60}",
        headers in prop::collection::vec((".{0,20}", prop::collection::vec(any::<u8>(), 0..40)), 0..20),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        partition in any::<i32>(),
        offset in any::<i64>(),
        timestamp in prop::option::of(any::<i64>()),
    ) {
        let msg = Message {
            payload: Bytes::from(payload),
            key: key.map(Bytes::from),
            headers: headers.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect(),
            origin: Origin { source: Arc::from(topic.as_str()), partition, offset, timestamp_ms: timestamp },
            attempt: 1,
            ack: AckHandle::detached(),
            charge: Default::default(),
        };
        for style in [EventStyle::Broker, EventStyle::Stream, EventStyle::Cron] {
            let h = event_headers(&msg, "kafkatriggers.kubeless.io", style, SystemTime::now());
            // A HeaderMap holds only valid names and values (no CR, LF or NUL can reach the wire);
            // what must hold besides is that the event's identity is always there and the topic is
            // passed on as it is whenever it is plain text.
            prop_assert!(h.contains_key("event-id") && h.contains_key("event-namespace"));
            let plain = topic.bytes().all(|b| (b' '..=b'~').contains(&b)) && topic.trim() == topic;
            if style != EventStyle::Cron && plain {
                prop_assert_eq!(h.get("event-topic").and_then(|v| v.to_str().ok()), Some(topic.as_str()));
            }
        }
    }

    #[test]
    fn any_cron_expression_and_timezone_parse_or_fail_and_a_schedule_always_answers(
        pattern in prop_oneof![
            ".{0,40}",
            "(CRON_TZ=[A-Za-z/_]{0,20} )?(@every [0-9]{0,6}[a-z]{0,3}|@(yearly|monthly|weekly|daily|hourly|midnight)|([0-9*/,-]{1,8} ){4}[0-9*/,-]{1,8})",
        ],
        timezone in prop::option::of(prop_oneof![".{0,20}", Just("Europe/Paris".to_string())]),
        at in 0i64..4_000_000_000,
    ) {
        if let Ok(schedule) = Schedule::parse(&pattern, timezone.as_deref()) {
            let t = chrono::DateTime::from_timestamp(at, 0).expect("in range");
            let _ = schedule.next_after(t);
            let _ = schedule.interval_after(t);
            let _ = schedule.last_at_or_before(t);
        }
    }

    #[test]
    fn any_retry_after_is_refused_or_a_delay_within_the_cap(value in prop_oneof![
        ".{0,40}",
        "[0-9]{1,30}",
        Just("Wed, 21 Oct 2015 07:28:00 GMT".to_string()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
    ]) {
        if let Some(delay) = parse_retry_after(&value, SystemTime::now()) {
            prop_assert!(delay <= RETRY_AFTER_CAP);
        }
    }
}
