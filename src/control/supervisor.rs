//! The supervisor: diffs the desired consumers against the running ones and starts, stops or
//! restarts only what changed. One code path for boot and for every later change.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kubeless_connector::{DeadLetterSink, Health, SourceContext, SourceState};
use kubeless_kafka::{run_source, KafkaDeadLetter};
use kubeless_nats::NatsDeadLetter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::index::{ConsumerSpec, SourceSpec};
use crate::delivery::event::EventStyle;
use crate::delivery::{Deliverer, HttpClient, Target};
use crate::resources::DeadLetterTarget;
use crate::telemetry::{ConsumerMetrics, CronMetrics};
use crate::{cron, dispatch};

/// Extra time, beyond the drain timeout, a stopping consumer gets before its task is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Backoff between restarts of a consumer whose source failed.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// A consumer that is running.
struct Running {
    spec: ConsumerSpec,
    health: Health,
    /// Cancelled to stop: the source stops taking messages, drains, commits and leaves its group.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What `/readyz` and `/status` show of one consumer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConsumerStatus {
    pub trigger: String,
    pub function: String,
    pub group: String,
    pub topics: Vec<String>,
    pub url: String,
    pub state: String,
    pub ready: bool,
    pub lag: i64,
}

/// Owns every running consumer.
pub struct Supervisor {
    client: HttpClient,
    running: Mutex<BTreeMap<String, Running>>,
}

impl Supervisor {
    pub fn new(client: HttpClient) -> Arc<Self> {
        Arc::new(Self { client, running: Mutex::new(BTreeMap::new()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the running set equal to `desired`: stops what is gone or changed (waiting for each to
    /// drain and commit), then starts what is new or changed.
    pub async fn apply(&self, desired: &BTreeMap<String, ConsumerSpec>) {
        let to_stop: Vec<Running> = {
            let mut running = self.lock();
            let stale: Vec<String> = running
                .iter()
                .filter(|(key, r)| desired.get(*key) != Some(&r.spec))
                .map(|(key, _)| key.clone())
                .collect();
            stale.iter().filter_map(|k| running.remove(k)).collect()
        };
        let stops = to_stop.into_iter().map(|r| {
            info!(trigger = %r.spec.trigger, function = %r.spec.function, source = %r.spec.source.id(), "Stopping consumer.");
            stop(r)
        });
        futures::future::join_all(stops).await;
        let mut running = self.lock();
        for (key, spec) in desired {
            if !running.contains_key(key) {
                info!(trigger = %spec.trigger, function = %spec.function, source = %spec.source.id(), topics = ?spec.source.topics(), url = %spec.url, "Starting consumer.");
                running.insert(key.clone(), start(spec.clone(), self.client.clone()));
            }
        }
        metrics::gauge!(crate::telemetry::CONSUMERS).set(running.len() as f64);
    }

    /// Stops every consumer, each draining and committing, in parallel.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = std::mem::take(&mut *self.lock()).into_values().collect();
        futures::future::join_all(all.into_iter().map(stop)).await;
    }

    pub fn status(&self) -> Vec<ConsumerStatus> {
        self.lock()
            .values()
            .map(|r| {
                let state = r.health.state();
                ConsumerStatus {
                    trigger: r.spec.trigger.clone(),
                    function: r.spec.function.clone(),
                    group: r.spec.source.id().to_string(),
                    topics: r.spec.source.topics(),
                    url: r.spec.url.clone(),
                    ready: state == SourceState::Ready,
                    state: match state {
                        SourceState::Starting => "Starting".to_string(),
                        SourceState::Ready => "Ready".to_string(),
                        SourceState::Failed(why) => format!("Failed: {why}"),
                    },
                    lag: r.health.lag(),
                }
            })
            .collect()
    }
}

async fn stop(r: Running) {
    r.stop.cancel();
    let grace = r.spec.source.drain_timeout() + STOP_GRACE;
    let mut task = r.task;
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        warn!(trigger = %r.spec.trigger, function = %r.spec.function, "Consumer did not stop in time; abandoning it.");
        task.abort();
    }
}

fn start(spec: ConsumerSpec, client: HttpClient) -> Running {
    let health = Health::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(supervise(spec.clone(), client, health.clone(), stop.clone()));
    Running { spec, health, stop, task }
}

/// Runs one consumer, restarting it with backoff if its source fails, until `stop`.
async fn supervise(spec: ConsumerSpec, client: HttpClient, health: Health, stop: CancellationToken) {
    let metrics = ConsumerMetrics::new(&spec.trigger, &spec.function);
    let lag_task = tokio::spawn({
        let (health, gauge, stop) = (health.clone(), metrics.lag.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.is_cancelled() {
                tick.tick().await;
                gauge.set(health.lag() as f64);
            }
        }
    });
    let mut backoff = RESTART_BACKOFF;
    while !stop.is_cancelled() {
        // A panic in a source is a bug, but it must not leave the consumer dead and "Starting"
        // forever: report it and restart like any other failure.
        let result = AssertUnwindSafe(run_once(&spec, &client, &health, &stop, &metrics))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(format!("the consumer panicked: {}", panic_text(&panic))));
        if stop.is_cancelled() {
            break;
        }
        let why = result.err().unwrap_or_else(|| "the source stopped on its own".to_string());
        error!(trigger = %spec.trigger, function = %spec.function, error = %why, retry_in_s = backoff.as_secs(), "Consumer failed; restarting.");
        health.set(SourceState::Failed(why));
        metrics.restarts.increment(1);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
    }
    lag_task.abort();
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// One life of a consumer: source and dispatcher joined by a bounded channel.
async fn run_once(
    spec: &ConsumerSpec,
    client: &HttpClient,
    health: &Health,
    stop: &CancellationToken,
    metrics: &ConsumerMetrics,
) -> Result<(), String> {
    let url = url::Url::parse(&spec.url)
        .map_err(|e| e.to_string())
        .and_then(|u| u.as_str().parse::<http::Uri>().map_err(|e| e.to_string()))
        .map_err(|e| format!("function URL {:?} is not valid: {e}", spec.url))?;
    let dead_letter = dead_letter_sink(spec).await?;
    let (style, method) = match &spec.source {
        SourceSpec::Kafka(_) | SourceSpec::Nats(_) => (EventStyle::Broker, http::Method::POST),
        SourceSpec::Kinesis(_) => (EventStyle::Stream, http::Method::POST),
        SourceSpec::Cron(c) if c.payload.is_none() => (EventStyle::Cron, http::Method::GET),
        SourceSpec::Cron(_) => (EventStyle::Cron, http::Method::POST),
    };
    // JetStream redelivers on a NAK with delay; other sources retry here.
    let redeliver_via_source = matches!(&spec.source, SourceSpec::Nats(n) if n.jetstream_stream.is_some());
    let target = Target {
        trigger: spec.trigger.clone(),
        function: spec.function.clone(),
        url,
        timeout: spec.timeout,
        event_namespace: spec.event_namespace,
        style,
        method,
        retry: spec.delivery.retry.clone(),
        redeliver_via_source,
    };
    let deliverer =
        Arc::new(Deliverer::new(client.clone(), target, dead_letter, spec.delivery.rate_limit, metrics.clone()));
    if let SourceSpec::Cron(c) = &spec.source {
        let metrics = CronMetrics::new(&spec.trigger, &spec.function);
        return cron::runner::run(&spec.trigger, c, deliverer, metrics, health, stop).await;
    }
    let max_in_flight = spec.delivery.max_in_flight as usize;
    // The channel holds one batch of in-flight work: enough to refill every slot without waiting
    // on the source, no more.
    let (tx, rx) = mpsc::channel(max_in_flight.max(16));
    let abort = CancellationToken::new();
    let dispatcher = tokio::spawn(dispatch::run(rx, deliverer, spec.delivery.ordering, max_in_flight, abort.clone()));
    let ctx = SourceContext { out: tx, shutdown: stop.child_token(), health: health.clone() };
    let result = match &spec.source {
        SourceSpec::Kafka(kafka) => run_source(kafka.clone(), ctx).await.map_err(|e| e.to_string()),
        SourceSpec::Nats(nats) => kubeless_nats::run_source(nats.clone(), ctx).await.map_err(|e| e.to_string()),
        SourceSpec::Kinesis(k) => kubeless_kinesis::run_source(k.clone(), ctx).await.map_err(|e| e.to_string()),
        SourceSpec::Cron(_) => Ok(()),
    };
    // The source has drained, committed and left its group (or failed): whatever still runs
    // cannot be committed by this consumer any more, so stop retrying it.
    abort.cancel();
    let _ = dispatcher.await;
    result
}

/// The dead-letter destination of a consumer, if it has one.
async fn dead_letter_sink(spec: &ConsumerSpec) -> Result<Option<Arc<dyn DeadLetterSink>>, String> {
    Ok(match (&spec.delivery.dead_letter, &spec.source) {
        (Some(DeadLetterTarget::Kafka { topic, brokers }), SourceSpec::Kafka(kafka)) => {
            let brokers = brokers.as_deref().unwrap_or(&kafka.brokers);
            let sink = KafkaDeadLetter::new(brokers, topic, &kafka.properties)
                .map_err(|e| format!("cannot create the dead-letter producer for topic {topic}: {e}"))?;
            Some(Arc::new(sink))
        }
        (Some(DeadLetterTarget::Nats { subject }), SourceSpec::Nats(nats)) => {
            let client = kubeless_nats::connect(&nats.url, &nats.auth, nats.tls, nats.ca_pem.as_deref())
                .await
                .map_err(|e| format!("dead-letter subject {subject}: {e}"))?;
            Some(Arc::new(NatsDeadLetter::new(client, subject, nats.jetstream_stream.is_some())))
        }
        _ => None,
    })
}
