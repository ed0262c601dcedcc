//! `spec.delivery`: how messages reach a function (our extension; every field optional).

use std::num::NonZeroU32;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::{check_brokers, check_subject, check_topic, parse_duration, Errors};

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliverySpec {
    /// `key` (default): in order within a message key, in parallel across keys (messages without
    /// a key are unordered). `partition`: in order within a partition (Kubeless's behaviour).
    /// `none`: fully parallel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<Ordering>,
    /// Requests in flight at once for one (trigger, function). Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Messages a partition or shard may hold uncommitted, counted from its oldest unfinished one
    /// (one message retried forever holds back the commit of everything after it); at the limit
    /// the partition is paused until they finish. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uncommitted: Option<u32>,
    /// Per-request timeout, overriding the Function's `spec.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<DeadLetterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    Key,
    Partition,
    None,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included. Unset: retriable failures are retried without limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// First backoff (default 200ms); each retry doubles it, with full jitter.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub initial_backoff: Option<String>,
    /// Backoff cap (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub max_backoff: Option<String>,
    /// Stop retrying a message older than this (from its broker timestamp) and dead-letter it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub max_record_age: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetterSpec {
    /// Kafka topic for messages that cannot be delivered (KafkaTrigger).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub topic: Option<String>,
    /// NATS subject for messages that cannot be delivered (NATSTrigger; through JetStream when the
    /// trigger uses it, so the write is confirmed by the stream capturing the subject).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub subject: Option<String>,
    /// Brokers of the dead-letter topic, if not the trigger's own.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub brokers: Option<String>,
    /// A Secret in the trigger's namespace with the credentials for `brokers` (the keys of a
    /// KafkaTrigger's `auth.secret`). Without `brokers`, the trigger's own credentials are used.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::resources::empty_is_unset")]
    pub secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Requests per second to the function, at most.
    pub per_second: u32,
    /// Requests allowed in a burst above the rate (default: one second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// Retry behaviour with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// `maxBackoff` was written in the trigger (else Kubeless's `BACKOFF_INTERVAL` may set it).
    pub max_backoff_set: bool,
    pub max_record_age: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: None,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            max_backoff_set: false,
            max_record_age: None,
        }
    }
}

/// Where dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTarget {
    /// A Kafka topic; brokers default to the trigger's.
    Kafka {
        topic: String,
        brokers: Option<String>,
        /// A Secret with the credentials for `brokers`.
        secret: Option<String>,
        /// The producer's properties, filled in by the index from the policy (`None`: the
        /// trigger's source's).
        properties: Option<kubeless_kafka::Properties>,
    },
    Nats {
        subject: String,
    },
}

/// `spec.delivery` resolved: defaults applied, durations parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub ordering: Ordering,
    pub max_in_flight: u32,
    pub max_uncommitted: u32,
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    pub dead_letter: Option<DeadLetterTarget>,
    /// (per second, burst).
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            ordering: Ordering::Key,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_uncommitted: DEFAULT_MAX_UNCOMMITTED,
            timeout: None,
            retry: RetryPolicy::default(),
            dead_letter: None,
            rate_limit: None,
        }
    }
}

/// Enough to keep a function with ~5 ms latency busy at >10k req/s while bounding what one
/// trigger can have outstanding.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// A ceiling that keeps a typo (`maxInFlight: 1000000`) from turning into unbounded memory.
pub const MAX_MAX_IN_FLIGHT: u32 = 10_000;
/// A few seconds of a busy partition: enough that one slow message does not pause the partition at
/// once, small enough that what a restart redelivers and what the tracker holds stay small.
pub const DEFAULT_MAX_UNCOMMITTED: u32 = 10_000;
/// The limit must leave room for a full dispatcher, and stay a bound.
pub const MAX_UNCOMMITTED_RANGE: std::ops::RangeInclusive<u32> = 100..=1_000_000;
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

impl DeliverySpec {
    /// Checks every field, reporting paths under `field` (e.g. `spec.delivery`).
    pub fn resolve(&self, errors: &mut Errors, field: &str) -> DeliveryPolicy {
        let mut policy = DeliveryPolicy { ordering: self.ordering.unwrap_or_default(), ..DeliveryPolicy::default() };
        if let Some(n) = self.max_in_flight {
            if n == 0 || n > MAX_MAX_IN_FLIGHT {
                errors.push(format!("{field}.maxInFlight"), format!("{n} must be between 1 and {MAX_MAX_IN_FLIGHT}"));
            } else {
                policy.max_in_flight = n;
            }
        }
        if let Some(n) = self.max_uncommitted {
            if MAX_UNCOMMITTED_RANGE.contains(&n) {
                policy.max_uncommitted = n;
            } else {
                let (lo, hi) = (MAX_UNCOMMITTED_RANGE.start(), MAX_UNCOMMITTED_RANGE.end());
                errors.push(format!("{field}.maxUncommitted"), format!("{n} must be between {lo} and {hi}"));
            }
        }
        policy.timeout = parse_duration(errors, &format!("{field}.timeout"), self.timeout.as_deref());
        if let Some(retry) = &self.retry {
            let f = format!("{field}.retry");
            if retry.max_attempts == Some(0) {
                errors.push(format!("{f}.maxAttempts"), "must be at least 1 (the first attempt counts)");
            }
            policy.retry.max_attempts = retry.max_attempts;
            if let Some(d) = parse_duration(errors, &format!("{f}.initialBackoff"), retry.initial_backoff.as_deref()) {
                policy.retry.initial_backoff = d;
            }
            if let Some(d) = parse_duration(errors, &format!("{f}.maxBackoff"), retry.max_backoff.as_deref()) {
                policy.retry.max_backoff = d;
                policy.retry.max_backoff_set = true;
            }
            if policy.retry.initial_backoff > policy.retry.max_backoff {
                errors.push(
                    format!("{f}.initialBackoff"),
                    format!(
                        "{:?} is longer than maxBackoff {:?}",
                        policy.retry.initial_backoff, policy.retry.max_backoff
                    ),
                );
            }
            policy.retry.max_record_age =
                parse_duration(errors, &format!("{f}.maxRecordAge"), retry.max_record_age.as_deref());
        }
        if let Some(dl) = &self.dead_letter {
            let f = format!("{field}.deadLetter");
            match (dl.topic.as_deref(), dl.subject.as_deref()) {
                (Some(_), Some(_)) => {
                    errors.push(format!("{f}.subject"), "set topic (Kafka) or subject (NATS), not both")
                }
                (Some(topic), None) => {
                    check_topic(errors, &format!("{f}.topic"), topic);
                    if let Some(b) = &dl.brokers {
                        check_brokers(errors, &format!("{f}.brokers"), b);
                    }
                    if let Some(secret) = &dl.secret {
                        super::validate::check_object_name(errors, &format!("{f}.secret"), secret);
                    }
                    policy.dead_letter = Some(DeadLetterTarget::Kafka {
                        topic: topic.to_string(),
                        brokers: dl.brokers.clone(),
                        secret: dl.secret.clone(),
                        properties: None,
                    });
                }
                (None, Some(subject)) => {
                    check_subject(errors, &format!("{f}.subject"), subject);
                    policy.dead_letter = Some(DeadLetterTarget::Nats { subject: subject.to_string() });
                }
                (None, None) => {
                    errors.push(format!("{f}.topic"), "is required when deadLetter is set (or subject, for NATS)")
                }
            }
        }
        if let Some(rl) = &self.rate_limit {
            let f = format!("{field}.rateLimit");
            match (NonZeroU32::new(rl.per_second), rl.burst.map(NonZeroU32::new)) {
                (None, _) => errors.push(format!("{f}.perSecond"), "must be at least 1"),
                (Some(_), Some(None)) => errors.push(format!("{f}.burst"), "must be at least 1"),
                (Some(rate), burst) => policy.rate_limit = Some((rate, burst.flatten().unwrap_or(rate))),
            }
        }
        policy
    }
}
