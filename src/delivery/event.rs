//! The request a function receives: Kubeless's `event-*` headers and Content-Type rule, plus the
//! key, partition, offset and broker headers Kubeless never forwarded.

use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Datelike, Timelike, Utc};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use kubeless_connector::Message;

pub const JSON: &str = "application/json";
pub const FORM: &str = "application/x-www-form-urlencoded";

static EVENT_ID: HeaderName = HeaderName::from_static("event-id");
static EVENT_TIME: HeaderName = HeaderName::from_static("event-time");
static EVENT_TYPE: HeaderName = HeaderName::from_static("event-type");
static EVENT_NAMESPACE: HeaderName = HeaderName::from_static("event-namespace");
static EVENT_TOPIC: HeaderName = HeaderName::from_static("event-topic");
static EVENT_KEY: HeaderName = HeaderName::from_static("event-key");
static EVENT_KEY_ENCODING: HeaderName = HeaderName::from_static("event-key-encoding");
static EVENT_PARTITION: HeaderName = HeaderName::from_static("event-partition");
static EVENT_OFFSET: HeaderName = HeaderName::from_static("event-offset");

/// Which header set a source's messages get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStyle {
    /// Event-bus messages: Kubeless's Kafka headers plus key, partition, offset and broker headers.
    Broker,
    /// Stream records (Kinesis): like `Broker`, but the position travels in the source's own
    /// headers (`event-shard-id`, `event-sequence-number`), not `event-partition`/`event-offset`.
    Stream,
    /// Cron ticks, as Kubeless's CronJob sent them: always JSON, `event-time` in RFC 3339 seconds,
    /// no topic or position.
    Cron,
}

/// Headers for one message. `now` is used for `event-time` only when the broker gave no timestamp.
pub fn event_headers(msg: &Message, event_namespace: &'static str, style: EventStyle, now: SystemTime) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(10 + msg.headers.len());
    // Broker headers first, so ours win on a name clash.
    for (k, v) in &msg.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
            h.append(name, value);
        }
    }
    let o = &msg.origin;
    let json = style == EventStyle::Cron || is_json_object(&msg.payload);
    let content_type = HeaderValue::from_static(if json { JSON } else { FORM });
    h.insert(CONTENT_TYPE, content_type.clone());
    h.insert(EVENT_TYPE.clone(), content_type);
    h.insert(EVENT_ID.clone(), ascii(event_id(&o.source, o.partition, o.offset)));
    let time =
        o.timestamp_ms.and_then(DateTime::<Utc>::from_timestamp_millis).unwrap_or_else(|| DateTime::<Utc>::from(now));
    h.insert(EVENT_NAMESPACE.clone(), HeaderValue::from_static(event_namespace));
    if style == EventStyle::Cron {
        h.insert(EVENT_TIME.clone(), ascii(date_time(time, format_args!("+00:00"))));
        return h;
    }
    h.insert(EVENT_TIME.clone(), ascii(go_time(time)));
    if let Ok(topic) = HeaderValue::from_str(&o.source) {
        h.insert(EVENT_TOPIC.clone(), topic);
    }
    if style == EventStyle::Broker {
        h.insert(EVENT_PARTITION.clone(), HeaderValue::from(o.partition));
        h.insert(EVENT_OFFSET.clone(), HeaderValue::from(o.offset));
    }
    if let Some(key) = &msg.key {
        match std::str::from_utf8(key).ok().and_then(|k| HeaderValue::from_str(k).ok()) {
            Some(v) => {
                h.insert(EVENT_KEY.clone(), v);
            }
            None => {
                h.insert(EVENT_KEY.clone(), ascii(URL_SAFE_NO_PAD.encode(key)));
                h.insert(EVENT_KEY_ENCODING.clone(), HeaderValue::from_static("base64url"));
            }
        }
    }
    h
}

fn ascii(s: String) -> HeaderValue {
    // Only called with base64 and digits, which are always valid header values.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Kubeless's event-id shape (11 bytes, base64url without padding: 15 characters), but derived from
/// where the message lives, so a redelivery carries the same id and a function can de-duplicate.
pub fn event_id(source: &str, partition: i32, offset: i64) -> String {
    let mut buf = Vec::with_capacity(source.len() + 13);
    buf.extend_from_slice(source.as_bytes());
    buf.push(0);
    buf.extend_from_slice(&partition.to_be_bytes());
    buf.extend_from_slice(&offset.to_be_bytes());
    let hash = xxhash_rust::xxh3::xxh3_128(&buf).to_be_bytes();
    URL_SAFE_NO_PAD.encode(&hash[..11])
}

/// `2009-11-10 23:00:00` then `suffix`, in one allocation. Written out rather than with
/// `format("%Y-…")`, which parses its pattern on every call: this runs for every delivered message.
fn date_time(t: DateTime<Utc>, suffix: std::fmt::Arguments<'_>) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{suffix}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Go's `time.Time.String()` for a UTC time, as Kubeless sent it:
/// `2009-11-10 23:00:00.123 +0000 UTC` (fraction without trailing zeros, none when zero).
pub fn go_time(t: DateTime<Utc>) -> String {
    let (mut fraction, mut digits) = (t.timestamp_subsec_nanos(), 9);
    if fraction == 0 {
        return date_time(t, format_args!(" +0000 UTC"));
    }
    while fraction % 10 == 0 {
        fraction /= 10;
        digits -= 1;
    }
    date_time(t, format_args!(".{fraction:0digits$} +0000 UTC"))
}

/// Kubeless's rule: JSON if the body parses as a JSON object, else form-encoded.
pub fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use kubeless_connector::{AckHandle, Origin};

    use super::*;

    fn msg(payload: &'static [u8], key: Option<&'static [u8]>) -> Message {
        Message {
            payload: Bytes::from_static(payload),
            key: key.map(Bytes::from_static),
            headers: vec![
                ("trace-id".into(), Bytes::from_static(b"abc")),
                ("event-id".into(), Bytes::from_static(b"spoof")),
            ],
            origin: Origin {
                source: Arc::from("orders"),
                partition: 3,
                offset: 42,
                timestamp_ms: Some(1_257_894_000_123),
            },
            attempt: 1,
            ack: AckHandle::detached(),
        }
    }

    #[test]
    fn kubeless_headers_are_set_and_ours_win_over_broker_headers() {
        let h = event_headers(
            &msg(br#"{"a":1}"#, Some(b"k1")),
            "kafkatriggers.kubeless.io",
            EventStyle::Broker,
            SystemTime::now(),
        );
        assert_eq!(h["content-type"], JSON);
        assert_eq!(h["event-type"], JSON);
        assert_eq!(h["event-namespace"], "kafkatriggers.kubeless.io");
        assert_eq!(h["event-topic"], "orders");
        assert_eq!(h["event-partition"], "3");
        assert_eq!(h["event-offset"], "42");
        assert_eq!(h["event-key"], "k1");
        assert_eq!(h["event-time"], "2009-11-10 23:00:00.123 +0000 UTC");
        assert_eq!(h["trace-id"], "abc");
        assert_eq!(h.get_all("event-id").iter().count(), 1);
        assert_eq!(h["event-id"].len(), 15);
    }

    #[test]
    fn content_type_is_json_only_for_a_json_object() {
        assert!(is_json_object(br#" {"a": [1, 2]} "#));
        for body in [&b"[1,2]"[..], b"\"s\"", b"42", b"{not json", b"a=b&c=d", b""] {
            assert!(!is_json_object(body), "{:?}", String::from_utf8_lossy(body));
        }
        let h = event_headers(&msg(b"[1]", None), "x", EventStyle::Broker, SystemTime::now());
        assert_eq!(h["content-type"], FORM);
        assert!(h.get("event-key").is_none());
    }

    #[test]
    fn event_id_is_deterministic_per_message_and_differs_between_messages() {
        assert_eq!(event_id("t", 0, 1), event_id("t", 0, 1));
        assert_ne!(event_id("t", 0, 1), event_id("t", 0, 2));
        assert_ne!(event_id("t", 0, 1), event_id("t", 1, 1));
        assert_ne!(event_id("t", 0, 1), event_id("u", 0, 1));
        assert!(event_id("t", 0, 1).bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn binary_keys_travel_base64url_encoded() {
        let h = event_headers(&msg(b"x", Some(b"\xff\x00")), "x", EventStyle::Broker, SystemTime::now());
        assert_eq!(h["event-key"], "_wA");
        assert_eq!(h["event-key-encoding"], "base64url");
    }

    #[test]
    fn cron_ticks_are_json_with_an_rfc3339_time_and_no_position() {
        let h = event_headers(&msg(b"", None), "cronjobtriggers.kubeless.io", EventStyle::Cron, SystemTime::now());
        assert_eq!(h["content-type"], JSON);
        assert_eq!(h["event-time"], "2009-11-10 23:00:00+00:00");
        assert_eq!(h["event-namespace"], "cronjobtriggers.kubeless.io");
        assert!(h.get("event-topic").is_none() && h.get("event-offset").is_none());
    }

    #[test]
    fn go_time_matches_gos_format() {
        let t = DateTime::<Utc>::from_timestamp(1_257_894_000, 0).expect("valid");
        assert_eq!(go_time(t), "2009-11-10 23:00:00 +0000 UTC");
        let t = DateTime::<Utc>::from_timestamp(1_257_894_000, 120_000_000).expect("valid");
        assert_eq!(go_time(t), "2009-11-10 23:00:00.12 +0000 UTC");
    }
}
