//! Retry policy, kept apart from transport: which answers are retried, and how long to wait.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::resources::RetryPolicy;

/// What an answer (or the lack of one) means for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Worth another attempt; `after` is the function's own `Retry-After`, if it sent one.
    Retry {
        after: Option<Duration>,
    },
    /// Not worth another attempt (a 4xx other than 408/429, or a redirect): dead-letter it.
    Reject,
}

/// A `Retry-After` longer than this is taken as this: a function must not park a message for days.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// Any 2xx succeeds (Kubeless required exactly 200); 408, 429 and 5xx are retried, except the 5xx
/// that no retry can change (501 Not Implemented, 505 HTTP Version Not Supported); everything else is
/// rejected.
pub fn classify(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        501 | 505 => Verdict::Reject,
        408 | 429 | 500..=599 => Verdict::Retry { after: retry_after.and_then(|v| parse_retry_after(v, now)) },
        _ => Verdict::Reject,
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, capped at [`RETRY_AFTER_CAP`].
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at: SystemTime = chrono::DateTime::parse_from_rfc2822(value).ok()?.into();
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(RETRY_AFTER_CAP))
}

/// Capped exponential backoff with full jitter: a uniform draw from zero to
/// `min(maxBackoff, initialBackoff · 2^(attempt-1))`, so retries of many messages spread out.
pub fn backoff(policy: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    let ceiling = policy
        .initial_backoff
        .checked_mul(1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX))
        .unwrap_or(policy.max_backoff)
        .min(policy.max_backoff);
    ceiling.mul_f64(rng.random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn any_2xx_succeeds_408_429_5xx_retry_other_answers_and_501_505_reject() {
        let now = SystemTime::now();
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify(s, None, now), Verdict::Success, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(classify(s, None, now), Verdict::Retry { after: None }, "{s}");
        }
        for s in [301, 302, 400, 401, 403, 404, 409, 413, 422, 501, 505] {
            assert_eq!(classify(s, None, now), Verdict::Reject, "{s}");
        }
    }

    #[test]
    fn retry_after_is_honoured_as_seconds_or_http_date_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(classify(503, Some("3"), now), Verdict::Retry { after: Some(Duration::from_secs(3)) });
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("999999", now), Some(RETRY_AFTER_CAP));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_exponentially_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: None,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_backoff_set: true,
            max_record_age: None,
        };
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..40 {
            let ceiling = Duration::from_millis(100 * 2u64.pow((attempt - 1).min(20))).min(Duration::from_secs(2));
            let samples: Vec<Duration> = (0..200).map(|_| backoff(&policy, attempt, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
            assert!(distinct.len() > 100, "full jitter spreads delays (attempt {attempt})");
        }
    }
}
