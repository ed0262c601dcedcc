//! What happens on the delivery path, as typed events (Vector's `internal_events`): each event logs
//! with the same field names wherever it is emitted and counts through the consumer's registered
//! handles, so a call site says what happened, not how it is reported.
//!
//! A message's place is always `source` (topic, subject or stream), `partition` (or shard index)
//! and `offset` (or sequence); the consumer is `trigger` (`namespace/name`) and `function`.

use std::time::{Duration, Instant};

use kubeless_connector::{Failure, Origin};
use tracing::{error, warn};

use super::ConsumerMetrics;

/// One event of the delivery path: reported once, through `metrics`.
pub trait Emit {
    fn emit(self, metrics: &ConsumerMetrics);
}

/// Whose message it is and where it came from.
#[derive(Clone, Copy)]
pub struct MessageAt<'a> {
    pub trigger: &'a str,
    pub function: &'a str,
    pub origin: &'a Origin,
}

/// The last attempt of a message that is not (yet) delivered.
#[derive(Clone, Copy)]
pub struct LastAttempt<'a> {
    pub attempts: u32,
    /// The HTTP status; none: no answer (connection refused, timeout).
    pub status: Option<u16>,
    pub error: &'a str,
}

/// A message taken from the bus.
pub struct Received;

impl Emit for Received {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.received.increment(1);
    }
}

/// A message whose partition or shard was taken away before it was delivered: released, not
/// delivered (its new owner delivers it).
pub struct Stale;

impl Emit for Stale {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.stale.increment(1);
    }
}

/// One HTTP request to the function ended (answered or not).
pub struct RequestFinished {
    pub took: Duration,
}

impl Emit for RequestFinished {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.request_duration.record(self.took.as_secs_f64());
    }
}

/// The function answered 2xx.
pub struct Delivered {
    pub received: Instant,
}

impl Emit for Delivered {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.delivered.increment(1);
        metrics.dispatch_duration.record(self.received.elapsed().as_secs_f64());
    }
}

/// An attempt failed and the message is tried again after `delay`: here, or by the broker
/// redelivering it (`by_broker`, JetStream's NAK with delay).
pub struct RetryScheduled<'a> {
    pub at: MessageAt<'a>,
    pub last: LastAttempt<'a>,
    pub delay: Duration,
    pub by_broker: bool,
}

impl Emit for RetryScheduled<'_> {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.retries.increment(1);
        let Self { at, last, delay, by_broker } = self;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if by_broker {
            warn!(
                trigger = %at.trigger, function = %at.function, source = %at.origin.source, partition = at.origin.partition,
                offset = at.origin.offset, attempts = last.attempts, status = ?last.status, error = %last.error, delay_ms,
                "Delivery failed; the broker redelivers it later."
            );
        } else {
            warn!(
                trigger = %at.trigger, function = %at.function, source = %at.origin.source, partition = at.origin.partition,
                offset = at.origin.offset, attempts = last.attempts, status = ?last.status, error = %last.error, delay_ms,
                "Delivery failed; retrying."
            );
        }
    }
}

/// A message given up on (`reason`) and written to the dead-letter `destination`.
pub struct DeadLettered<'a> {
    pub at: MessageAt<'a>,
    pub last: LastAttempt<'a>,
    pub reason: &'static str,
    pub destination: &'a str,
    pub received: Instant,
}

impl Emit for DeadLettered<'_> {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.dead_lettered.increment(1);
        metrics.dispatch_duration.record(self.received.elapsed().as_secs_f64());
        let Self { at, last, reason, destination, .. } = self;
        warn!(
            trigger = %at.trigger, function = %at.function, source = %at.origin.source, partition = at.origin.partition,
            offset = at.origin.offset, reason, attempts = last.attempts, status = ?last.status, destination,
            "Message dead-lettered."
        );
    }
}

/// A message given up on (`reason`) with no dead-letter destination: it is dropped.
pub struct Dropped<'a> {
    pub at: MessageAt<'a>,
    pub last: LastAttempt<'a>,
    pub reason: &'static str,
    pub received: Instant,
}

impl Emit for Dropped<'_> {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.failed.increment(1);
        metrics.dispatch_duration.record(self.received.elapsed().as_secs_f64());
        let Self { at, last, reason, .. } = self;
        error!(
            trigger = %at.trigger, function = %at.function, source = %at.origin.source, partition = at.origin.partition,
            offset = at.origin.offset, reason, attempts = last.attempts, status = ?last.status, error = %last.error,
            "Message not delivered and no dead-letter destination is configured; it is dropped."
        );
    }
}

/// Writing a dead letter failed; the message stays uncommitted and the write is tried again.
pub struct DeadLetterWriteFailed<'a> {
    pub at: MessageAt<'a>,
    pub error: &'a dyn std::fmt::Display,
    pub tries: u32,
}

impl Emit for DeadLetterWriteFailed<'_> {
    fn emit(self, metrics: &ConsumerMetrics) {
        metrics.dead_letter_write_failures.increment(1);
        let Self { at, error, tries } = self;
        error!(
            trigger = %at.trigger, function = %at.function, source = %at.origin.source, partition = at.origin.partition,
            offset = at.origin.offset, error = %error, tries,
            "Dead-letter write failed; the message stays uncommitted and the write is retried."
        );
    }
}

/// A delivery task panicked (a bug): its message stays uncommitted and is delivered again later.
pub struct DeliveryPanicked<'a> {
    pub trigger: &'a str,
    pub function: &'a str,
}

impl Emit for DeliveryPanicked<'_> {
    fn emit(self, _metrics: &ConsumerMetrics) {
        let Self { trigger, function } = self;
        error!(trigger, function, "A delivery panicked; its message stays uncommitted.");
    }
}

/// A consumer's source failed. Retriable failures restart it after `retry_in`; a permanent one
/// waits for its trigger or function to change.
pub struct ConsumerFailed<'a> {
    pub trigger: &'a str,
    pub function: &'a str,
    pub failure: &'a Failure,
    pub retry_in: Duration,
}

impl Emit for ConsumerFailed<'_> {
    fn emit(self, metrics: &ConsumerMetrics) {
        let Self { trigger, function, failure, retry_in } = self;
        if failure.is_retriable() {
            metrics.restarted(failure.reason);
            error!(
                trigger, function, reason = %failure.reason, error = %failure.detail, retry_in_s = retry_in.as_secs(),
                "Consumer failed; restarting."
            );
        } else {
            error!(
                trigger, function, reason = %failure.reason, error = %failure.detail,
                "Consumer failed; it waits for its trigger or function to change."
            );
        }
    }
}
