//! The request a function receives: Kubeless's `event-*` headers and Content-Type rule, plus the
//! key, partition, offset and broker headers Kubeless never forwarded.

use std::sync::Arc;
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

/// Broker headers forwarded per message, and their total size (names and values): a producer cannot
/// make a request the function's server refuses, or spend its memory.
pub const MAX_FORWARDED_HEADERS: usize = 64;
pub const MAX_FORWARDED_BYTES: usize = 16 * 1024;

/// Headers that frame or route the HTTP request itself (RFC 9110 §7.6.1, §6.4; Host, Expect): a
/// producer's copy could corrupt or smuggle the request, so none is forwarded.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "content-length",
    "content-encoding",
    "expect",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The broker headers a request may carry: valid names and values, none that frames or routes the
/// request or that this broker sets itself (`event-key` of a keyless message included), within
/// [`MAX_FORWARDED_HEADERS`] and [`MAX_FORWARDED_BYTES`].
fn forwarded(headers: &[(String, bytes::Bytes)], style: EventStyle, h: &mut HeaderMap) {
    let ours = [&EVENT_ID, &EVENT_TIME, &EVENT_TYPE, &EVENT_NAMESPACE, &EVENT_TOPIC, &EVENT_KEY, &EVENT_KEY_ENCODING];
    let mut budget = MAX_FORWARDED_BYTES;
    let mut count = 0;
    for (k, v) in headers {
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else { continue };
        if NOT_FORWARDED.contains(&name.as_str()) || name == CONTENT_TYPE || ours.contains(&&name) {
            continue;
        }
        // A broker's own position headers come from the source, not the producer (Stream style);
        // on broker messages a producer's copy of ours is dropped.
        if style == EventStyle::Broker && (name == EVENT_PARTITION || name == EVENT_OFFSET) {
            continue;
        }
        let Ok(value) = HeaderValue::from_bytes(v) else { continue };
        let size = name.as_str().len() + value.len();
        if count == MAX_FORWARDED_HEADERS {
            break;
        }
        if size > budget {
            continue;
        }
        budget -= size;
        count += 1;
        h.append(name, value);
    }
}

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
    let mut h = HeaderMap::with_capacity(10 + msg.headers.len().min(MAX_FORWARDED_HEADERS));
    forwarded(&msg.headers, style, &mut h);
    let o = &msg.origin;
    let json = style == EventStyle::Cron || is_json_object(&msg.payload);
    let content_type = HeaderValue::from_static(if json { JSON } else { FORM });
    h.insert(CONTENT_TYPE, content_type.clone());
    h.insert(EVENT_TYPE.clone(), content_type);
    h.insert(EVENT_ID.clone(), event_id_value(&o.source, o.partition, o.offset));
    let time =
        o.timestamp_ms.and_then(DateTime::<Utc>::from_timestamp_millis).unwrap_or_else(|| DateTime::<Utc>::from(now));
    h.insert(EVENT_NAMESPACE.clone(), HeaderValue::from_static(event_namespace));
    if style == EventStyle::Cron {
        h.insert(EVENT_TIME.clone(), ascii(date_time(time, format_args!("+00:00"))));
        return h;
    }
    RECENT.with_borrow_mut(|recent| {
        h.insert(EVENT_TIME.clone(), recent.go_time(time));
        if let Some(topic) = recent.topic(&o.source) {
            h.insert(EVENT_TOPIC.clone(), topic);
        }
    });
    if style == EventStyle::Broker {
        h.insert(EVENT_PARTITION.clone(), HeaderValue::from(o.partition));
        h.insert(EVENT_OFFSET.clone(), HeaderValue::from(o.offset));
    }
    if let Some(key) = &msg.key {
        // The same rule as `HeaderValue::from_str`, but sharing the key's bytes instead of copying.
        let visible = key.iter().all(|&b| (b' '..=b'~').contains(&b) || b == b'\t');
        match visible.then(|| HeaderValue::from_maybe_shared(key.clone())) {
            Some(Ok(v)) => {
                h.insert(EVENT_KEY.clone(), v);
            }
            _ => {
                h.insert(EVENT_KEY.clone(), ascii(URL_SAFE_NO_PAD.encode(key)));
                h.insert(EVENT_KEY_ENCODING.clone(), HeaderValue::from_static("base64url"));
            }
        }
    }
    h
}

thread_local! {
    static RECENT: std::cell::RefCell<Recent> = const { std::cell::RefCell::new(Recent { time: None, topic: None }) };
}

/// The last `event-time` and `event-topic` values this thread built. Messages of one batch share
/// their topic and, mostly, their broker timestamp's millisecond, so each is formatted once per
/// change rather than once per message (a `HeaderValue` clone is a reference count).
struct Recent {
    time: Option<(DateTime<Utc>, HeaderValue)>,
    topic: Option<(Arc<str>, HeaderValue)>,
}

impl Recent {
    fn go_time(&mut self, t: DateTime<Utc>) -> HeaderValue {
        match &self.time {
            Some((last, value)) if *last == t => value.clone(),
            _ => {
                let value = ascii(go_time(t));
                self.time = Some((t, value.clone()));
                value
            }
        }
    }

    /// None for a name that is not a valid header value.
    fn topic(&mut self, source: &Arc<str>) -> Option<HeaderValue> {
        match &self.topic {
            Some((last, value)) if **last == **source => Some(value.clone()),
            _ => {
                let value = HeaderValue::from_str(source).ok()?;
                self.topic = Some((source.clone(), value.clone()));
                Some(value)
            }
        }
    }
}

fn ascii(s: String) -> HeaderValue {
    // Only called with base64 and digits, which are always valid header values.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Kubeless's event-id shape (11 bytes, base64url without padding: 15 characters), but derived from
/// where the message lives, so a redelivery carries the same id and a function can de-duplicate.
pub fn event_id(source: &str, partition: i32, offset: i64) -> String {
    String::from_utf8_lossy(&event_id_bytes(source, partition, offset)).into_owned()
}

fn event_id_value(source: &str, partition: i32, offset: i64) -> HeaderValue {
    // base64url is always a valid header value.
    HeaderValue::from_bytes(&event_id_bytes(source, partition, offset)).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The id's 15 characters, hashed and encoded on the stack (this runs for every message).
fn event_id_bytes(source: &str, partition: i32, offset: i64) -> [u8; 15] {
    let hash = {
        let mut stack = [0u8; 128];
        let len = source.len() + 13;
        let mut heap = Vec::new();
        let buf = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap[..]
        };
        let (name, position) = buf.split_at_mut(source.len());
        name.copy_from_slice(source.as_bytes());
        position[0] = 0;
        position[1..5].copy_from_slice(&partition.to_be_bytes());
        position[5..].copy_from_slice(&offset.to_be_bytes());
        xxhash_rust::xxh3::xxh3_128(buf).to_be_bytes()
    };
    let mut id = [0u8; 15];
    // 11 bytes are exactly 15 base64 characters without padding, so the slice always fits.
    let _ = URL_SAFE_NO_PAD.encode_slice(&hash[..11], &mut id);
    id
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
            charge: Default::default(),
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
    fn a_producer_cannot_frame_route_or_flood_the_request_through_its_headers() {
        let mut m = msg(b"hello", None);
        let mut headers: Vec<(String, Bytes)> = [
            ("Content-Length", &b"0"[..]),
            ("transfer-encoding", b"chunked"),
            ("Host", b"evil.example"),
            ("connection", b"close, x-secret"),
            ("upgrade", b"h2c"),
            ("te", b"trailers"),
            ("trailer", b"x"),
            ("expect", b"100-continue"),
            ("proxy-authorization", b"Basic eA=="),
            ("content-type", b"text/evil"),
            ("event-key", b"forged"),
            ("event-partition", b"99"),
            ("bad name", b"x"),
            ("x-crlf", b"a\r\nx-injected: 1"),
            ("x-ok", b"fine"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Bytes::from_static(v)))
        .collect();
        headers.push(("x-big".into(), Bytes::from(vec![b'a'; MAX_FORWARDED_BYTES])));
        headers.extend((0..200).map(|i| (format!("x-{i}"), Bytes::from_static(b"v"))));
        m.headers = headers;
        let h = event_headers(&m, "kafkatriggers.kubeless.io", EventStyle::Broker, SystemTime::now());
        for gone in [
            "content-length",
            "transfer-encoding",
            "host",
            "connection",
            "upgrade",
            "te",
            "trailer",
            "expect",
            "proxy-authorization",
            "event-key",
            "x-crlf",
            "x-injected",
            "x-big",
        ] {
            assert!(h.get(gone).is_none(), "{gone} was forwarded: {:?}", h.get(gone));
        }
        assert_eq!(h["content-type"], FORM, "ours, not the producer's");
        assert_eq!(h.get_all("content-type").iter().count(), 1);
        assert_eq!(h["event-partition"], "3");
        assert_eq!(h["x-ok"], "fine");
        let forwarded = h.keys().filter(|k| k.as_str().starts_with("x-")).count();
        assert_eq!(forwarded, MAX_FORWARDED_HEADERS, "at most {MAX_FORWARDED_HEADERS} broker headers");
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
    fn event_ids_keep_their_values_across_releases() {
        // Functions de-duplicate on event-id: a redelivery after an upgrade must carry the same id.
        assert_eq!(event_id("orders", 3, 42), "xuzNKAj1x-hf7rk");
        // A name too long for the stack buffer takes the heap path, with the same hash.
        assert_eq!(event_id(&"t".repeat(200), 0, 7), "_PEpxC0Th2SVbS4");
    }

    #[test]
    fn cached_times_and_topics_follow_each_message() {
        let mut m = msg(b"x", None);
        let first = event_headers(&m, "x", EventStyle::Broker, SystemTime::now());
        m.origin.timestamp_ms = Some(1_257_894_000_124);
        m.origin.source = Arc::from("payments");
        let second = event_headers(&m, "x", EventStyle::Broker, SystemTime::now());
        assert_eq!(first["event-time"], "2009-11-10 23:00:00.123 +0000 UTC");
        assert_eq!(second["event-time"], "2009-11-10 23:00:00.124 +0000 UTC");
        assert_eq!(first["event-topic"], "orders");
        assert_eq!(second["event-topic"], "payments");
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
        // Valid UTF-8 outside visible ASCII is not a header value either.
        let h = event_headers(&msg(b"x", Some("k\u{e9}".as_bytes())), "x", EventStyle::Broker, SystemTime::now());
        assert_eq!(h["event-key"], "a8Op");
        assert_eq!(h["event-key-encoding"], "base64url");
        let h = event_headers(&msg(b"x", Some(b"a b\tc~")), "x", EventStyle::Broker, SystemTime::now());
        assert_eq!(h["event-key"], "a b\tc~");
        assert!(h.get("event-key-encoding").is_none());
    }

    #[test]
    fn cron_ticks_are_json_with_an_rfc3339_time_and_no_position() {
        let h = event_headers(&msg(b"", None), "cronjobtrigger.kubeless.io", EventStyle::Cron, SystemTime::now());
        assert_eq!(h["content-type"], JSON);
        assert_eq!(h["event-time"], "2009-11-10 23:00:00+00:00");
        assert_eq!(h["event-namespace"], "cronjobtrigger.kubeless.io");
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
