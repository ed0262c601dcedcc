//! Metric names, their help text, and the per-consumer handles the hot path increments.
//!
//! Labels are bounded: `trigger` (`namespace/name`), `function`, and where needed `outcome`.
//! Handles are registered once per consumer, so the hot path does no label hashing.
//!
//! The one place the `metrics` macros are used (`clippy.toml` bans them elsewhere): everything
//! else reports through [`ConsumerMetrics`], [`CronMetrics`], the [`events`] and the daemon-wide
//! setters below.
#![allow(clippy::disallowed_macros)]

pub mod events;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Gauge, Histogram, Unit,
};

pub const MESSAGES_RECEIVED: &str = "kubeless_messages_received_total";
pub const MESSAGES_DELIVERED: &str = "kubeless_messages_delivered_total";
pub const DELIVERY_RETRIES: &str = "kubeless_delivery_retries_total";
pub const MESSAGES_DEAD_LETTERED: &str = "kubeless_messages_dead_lettered_total";
pub const MESSAGES_FAILED: &str = "kubeless_messages_failed_total";
pub const DEAD_LETTER_WRITE_FAILURES: &str = "kubeless_dead_letter_write_failures_total";
pub const DISPATCH_DURATION: &str = "kubeless_dispatch_duration_seconds";
pub const REQUEST_DURATION: &str = "kubeless_request_duration_seconds";
pub const IN_FLIGHT: &str = "kubeless_in_flight_requests";
pub const CONSUMER_LAG: &str = "kubeless_consumer_lag";
pub const OLDEST_UNACKED: &str = "kubeless_oldest_unacked_seconds";
pub const MESSAGES_ABANDONED: &str = "kubeless_messages_abandoned_total";
pub const MESSAGES_STALE: &str = "kubeless_messages_stale_total";
pub const CHECKPOINT_FAILURES: &str = "kubeless_checkpoint_failures_total";
pub const CONSUMERS: &str = "kubeless_consumers";
/// 1 while this replica leads (Kubernetes mode): fires cron ticks, writes status, cleans up.
pub const LEADER: &str = "kubeless_leader";
pub const MANIFEST_ERRORS: &str = "kubeless_manifest_errors";
pub const CONSUMER_RESTARTS: &str = "kubeless_consumer_restarts_total";
/// 1 while a consumer's source is failed (retrying, or waiting for its spec to change).
pub const CONSUMER_FAILED: &str = "kubeless_consumer_failed";
pub const CRON_TICKS: &str = "kubeless_cron_ticks_total";
pub const CRON_LATENESS: &str = "kubeless_cron_tick_lateness_seconds";
pub const MEMORY_BUDGET: &str = "kubeless_memory_budget_bytes";
pub const MEMORY_BUDGET_HELD: &str = "kubeless_memory_budget_held_bytes";
/// Restarts of local functions' processes (standalone mode), per function.
pub const LOCAL_FUNCTION_RESTARTS: &str = "kubeless_local_function_restarts_total";
/// 1 while a local function has a process serving, per function.
pub const LOCAL_FUNCTION_UP: &str = "kubeless_local_function_up";
/// A gauge not set for this long leaves `/metrics` (a stopped consumer's); live ones are set every
/// second.
pub const GAUGE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Every metric the daemon exports.
pub const ALL: &[&str] = &[
    MESSAGES_RECEIVED,
    MESSAGES_DELIVERED,
    DELIVERY_RETRIES,
    MESSAGES_DEAD_LETTERED,
    MESSAGES_FAILED,
    DEAD_LETTER_WRITE_FAILURES,
    DISPATCH_DURATION,
    REQUEST_DURATION,
    IN_FLIGHT,
    CONSUMER_LAG,
    OLDEST_UNACKED,
    MESSAGES_ABANDONED,
    MESSAGES_STALE,
    CHECKPOINT_FAILURES,
    CONSUMERS,
    LEADER,
    MANIFEST_ERRORS,
    CONSUMER_RESTARTS,
    CONSUMER_FAILED,
    CRON_TICKS,
    CRON_LATENESS,
    MEMORY_BUDGET,
    MEMORY_BUDGET_HELD,
    LOCAL_FUNCTION_RESTARTS,
    LOCAL_FUNCTION_UP,
];

/// Buckets for both latency histograms: 1 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Registers help text for every metric; call once at start-up.
pub fn describe() {
    describe_counter!(MESSAGES_RECEIVED, Unit::Count, "Messages taken from the event bus, per trigger and function.");
    describe_counter!(MESSAGES_DELIVERED, Unit::Count, "Messages the function answered with a 2xx.");
    describe_counter!(DELIVERY_RETRIES, Unit::Count, "Retried requests (408, 429, 5xx, timeouts, connection errors).");
    describe_counter!(MESSAGES_DEAD_LETTERED, Unit::Count, "Messages written to the dead-letter destination.");
    describe_counter!(
        MESSAGES_FAILED,
        Unit::Count,
        "Messages that could not be delivered and had no dead-letter destination (logged as errors)."
    );
    describe_counter!(
        DEAD_LETTER_WRITE_FAILURES,
        Unit::Count,
        "Failed dead-letter writes (retried; the message stays uncommitted)."
    );
    describe_histogram!(
        DISPATCH_DURATION,
        Unit::Seconds,
        "From receiving a message to its final outcome, retries included."
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "One HTTP request to a function.");
    describe_gauge!(
        MEMORY_BUDGET,
        Unit::Bytes,
        "The bytes of messages every consumer together may hold (--memory-budget)."
    );
    describe_gauge!(
        MEMORY_BUDGET_HELD,
        Unit::Bytes,
        "Bytes of messages held now (channels, waiting behind busy keys, in flight), across consumers."
    );
    describe_gauge!(IN_FLIGHT, Unit::Count, "HTTP requests to functions in flight.");
    describe_gauge!(CONSUMER_LAG, Unit::Count, "Messages behind the end of the log, per trigger and function.");
    describe_gauge!(
        OLDEST_UNACKED,
        Unit::Seconds,
        "Age of the oldest message handed out and not finished (0 when none): it holds back every commit after it."
    );
    describe_counter!(
        MESSAGES_ABANDONED,
        Unit::Count,
        "Messages dropped without an outcome (a delivery that panicked): uncommitted until read again."
    );
    describe_counter!(
        MESSAGES_STALE,
        Unit::Count,
        "Messages not delivered because their partition was revoked and drained (the new owner delivers them)."
    );
    describe_counter!(
        CHECKPOINT_FAILURES,
        Unit::Count,
        "Failed saves of a position to the state directory (cron ticks, Kinesis checkpoints): the last good one stays."
    );
    describe_gauge!(CONSUMERS, Unit::Count, "Consumers running.");
    describe_gauge!(
        LEADER,
        Unit::Count,
        "1 while this replica leads: fires cron ticks, writes status, cleans up (Kubernetes mode)."
    );
    describe_gauge!(MANIFEST_ERRORS, Unit::Count, "Manifest documents that failed to load or validate.");
    describe_counter!(
        CONSUMER_RESTARTS,
        Unit::Count,
        "Consumers restarted after an error, by the error's reason (a series appears at its first restart)."
    );
    describe_gauge!(
        CONSUMER_FAILED,
        Unit::Count,
        "1 while a consumer's source is failed: retrying, or (a permanent failure) waiting for its trigger to change."
    );
    describe_counter!(
        CRON_TICKS,
        Unit::Count,
        "Cron ticks by outcome: fired, skipped (Forbid), replaced (Replace), succeeded, failed."
    );
    describe_histogram!(CRON_LATENESS, Unit::Seconds, "How late a cron tick fired after its scheduled time.");
    describe_counter!(
        LOCAL_FUNCTION_RESTARTS,
        Unit::Count,
        "Local functions' processes restarted after they exited, per function (standalone mode)."
    );
    describe_gauge!(
        LOCAL_FUNCTION_UP,
        Unit::Count,
        "1 while a local function has a process serving (standalone mode)."
    );
}

/// A local function's process exited and will be restarted.
pub fn local_function_restarted(function: &str) {
    counter!(LOCAL_FUNCTION_RESTARTS, "function" => function.to_string()).increment(1);
}

/// Whether a local function has a process serving; set again every second by its keeper.
pub fn set_local_function_up(function: &str, up: bool) {
    gauge!(LOCAL_FUNCTION_UP, "function" => function.to_string()).set(f64::from(u8::from(up)));
}

/// How many consumers run.
pub fn set_consumers(running: usize) {
    gauge!(CONSUMERS).set(running as f64);
}

/// How many manifest documents are rejected (standalone mode).
pub fn set_manifest_errors(errors: usize) {
    gauge!(MANIFEST_ERRORS).set(errors as f64);
}

/// Whether this replica leads (Kubernetes mode).
pub fn set_leader(leading: bool) {
    gauge!(LEADER).set(f64::from(u8::from(leading)));
}

/// The memory budget and what the consumers hold of it.
pub fn set_memory_budget(total: u64, held: u64) {
    gauge!(MEMORY_BUDGET).set(total as f64);
    gauge!(MEMORY_BUDGET_HELD).set(held as f64);
}

/// The handles of one consumer.
#[derive(Clone)]
pub struct ConsumerMetrics {
    pub received: Counter,
    pub delivered: Counter,
    pub retries: Counter,
    pub dead_lettered: Counter,
    pub failed: Counter,
    pub dead_letter_write_failures: Counter,
    pub dispatch_duration: Histogram,
    pub request_duration: Histogram,
    pub in_flight: Gauge,
    pub lag: Gauge,
    pub oldest_unacked: Gauge,
    pub abandoned: Counter,
    pub stale: Counter,
    pub checkpoint_failures: Counter,
    /// 1 while the source is failed.
    pub failing: Gauge,
    labels: [(&'static str, String); 3],
}

impl ConsumerMetrics {
    /// `kind` keeps a KafkaTrigger and a NATSTrigger of the same namespace/name apart.
    pub fn new(kind: &str, trigger: &str, function: &str) -> Self {
        let labels = [("trigger", trigger.to_string()), ("function", function.to_string()), ("kind", kind.to_string())];
        Self {
            received: counter!(MESSAGES_RECEIVED, &labels),
            delivered: counter!(MESSAGES_DELIVERED, &labels),
            retries: counter!(DELIVERY_RETRIES, &labels),
            dead_lettered: counter!(MESSAGES_DEAD_LETTERED, &labels),
            failed: counter!(MESSAGES_FAILED, &labels),
            dead_letter_write_failures: counter!(DEAD_LETTER_WRITE_FAILURES, &labels),
            dispatch_duration: histogram!(DISPATCH_DURATION, &labels),
            request_duration: histogram!(REQUEST_DURATION, &labels),
            in_flight: gauge!(IN_FLIGHT, &labels),
            lag: gauge!(CONSUMER_LAG, &labels),
            oldest_unacked: gauge!(OLDEST_UNACKED, &labels),
            abandoned: counter!(MESSAGES_ABANDONED, &labels),
            stale: counter!(MESSAGES_STALE, &labels),
            checkpoint_failures: counter!(CHECKPOINT_FAILURES, &labels),
            failing: gauge!(CONSUMER_FAILED, &labels),
            labels,
        }
    }

    /// Counts a restart after a failure, by its reason (restarts are rare: the series is made on
    /// the first one of each reason).
    pub fn restarted(&self, reason: kubeless_connector::Reason) {
        let mut labels = self.labels.to_vec();
        labels.push(("reason", reason.as_str().to_string()));
        counter!(CONSUMER_RESTARTS, &labels).increment(1);
    }
}

/// The handles of one cron trigger.
#[derive(Clone)]
pub struct CronMetrics {
    pub fired: Counter,
    pub skipped: Counter,
    pub replaced: Counter,
    pub succeeded: Counter,
    pub failed: Counter,
    pub lateness: Histogram,
}

impl CronMetrics {
    pub fn new(trigger: &str, function: &str) -> Self {
        let c = |outcome: &'static str| counter!(CRON_TICKS, "trigger" => trigger.to_string(), "function" => function.to_string(), "outcome" => outcome);
        Self {
            fired: c("fired"),
            skipped: c("skipped"),
            replaced: c("replaced"),
            succeeded: c("succeeded"),
            failed: c("failed"),
            lateness: histogram!(CRON_LATENESS, "trigger" => trigger.to_string(), "function" => function.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn triggers_of_two_kinds_with_one_name_have_separate_series() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            super::ConsumerMetrics::new("KafkaTrigger", "default/orders", "f").delivered.increment(2);
            super::ConsumerMetrics::new("NATSTrigger", "default/orders", "f").delivered.increment(5);
        });
        let text = handle.render();
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with(super::MESSAGES_DELIVERED)).collect();
        assert_eq!(series.len(), 2, "{text}");
        assert!(series.iter().any(|l| l.contains(r#"kind="KafkaTrigger""#) && l.ends_with(" 2")), "{series:?}");
        assert!(series.iter().any(|l| l.contains(r#"kind="NATSTrigger""#) && l.ends_with(" 5")), "{series:?}");
    }

    /// The Grafana dashboard in deploy/ queries only metrics that exist, and shows every one.
    #[test]
    fn the_dashboard_queries_exactly_the_exported_metrics() {
        let json = include_str!("../../deploy/grafana/kubeless-broker.json");
        let dashboard: serde_json::Value = serde_json::from_str(json).expect("dashboard JSON");
        let mut used = std::collections::BTreeSet::new();
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let mut rest = expr;
                while let Some(at) = rest.find("kubeless_") {
                    let name: String =
                        rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    rest = &rest[at + name.len()..];
                    let base = ["_bucket", "_sum", "_count"].iter().fold(name.as_str(), |n, s| n.trim_end_matches(s));
                    assert!(super::ALL.contains(&base), "{expr}: {base} is not a metric the daemon exports");
                    used.insert(base.to_string());
                }
            }
        }
        let unused: Vec<&&str> = super::ALL.iter().filter(|m| !used.contains(**m)).collect();
        assert!(unused.is_empty(), "not on the dashboard: {unused:?}");
    }
}
