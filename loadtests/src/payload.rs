//! Message bodies carry their send time so the sink can measure end-to-end latency: the first
//! 20 bytes are the send time in microseconds since the Unix epoch, zero-padded ASCII digits, then
//! filler up to the requested size. ASCII keeps the body printable whatever the source.

use std::time::{SystemTime, UNIX_EPOCH};

const STAMP: usize = 20;

/// Microseconds since the Unix epoch.
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A body of `size` bytes (at least the stamp) stamped with the current time.
pub fn stamped(size: usize) -> Vec<u8> {
    let mut body = format!("{:020}", now_micros()).into_bytes();
    body.resize(size.max(STAMP), b'x');
    body
}

/// The send time in a body made by [`stamped`], if it has one.
pub fn sent_micros(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body.get(..STAMP)?).ok()?.parse().ok()
}

/// The partition key of message `i` among `keys` keys.
pub fn key(i: u64, keys: u64) -> String {
    format!("k{}", i % keys.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_body_has_its_size_and_gives_back_its_send_time() {
        let before = now_micros();
        let body = stamped(1024);
        assert_eq!(body.len(), 1024);
        let sent = sent_micros(&body).expect("stamp");
        assert!(sent >= before && sent <= now_micros());
    }

    #[test]
    fn bodies_without_a_stamp_have_no_send_time() {
        assert_eq!(sent_micros(b"short"), None);
        assert_eq!(sent_micros(&[b'x'; 64]), None);
    }
}
