//! One consumer, end to end: what it is ([`ConsumerSpec`], built by the control plane's index) and
//! how it runs — the source, the bounded channel, the dispatcher, the deliverer with its function
//! URL and dead-letter sink — restarted with backoff when its source fails. The control plane only
//! decides which consumers run; everything connector-specific about running one is here.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kubeless_connector::{DeadLetterSink, Failure, Health, MemoryBudget, Reason, SourceContext, SourceState};
use kubeless_kafka::{run_source, KafkaDeadLetter};
use kubeless_kinesis::ShardLeases;
use kubeless_nats::NatsDeadLetter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::spec::LOCAL_URL_PREFIX;
use crate::control::spec::{ConsumerSpec, CronSource, SourceSpec};
use crate::cron::runner::Scheduling;
use crate::delivery::event::EventStyle;
use crate::delivery::route::Routes;
use crate::delivery::{Deliverer, HttpClient, Target};
use crate::resources::{DeadLetterTarget, Ordering};
use crate::telemetry::events::{ConsumerFailed, Emit};
use crate::telemetry::{ConsumerMetrics, CronMetrics};
use crate::{cron, dispatch};

/// Backoff between restarts of a consumer whose source failed.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// What consumers share beyond their specs.
#[derive(Clone)]
pub struct Services {
    pub http: HttpClient,
    /// Kubernetes mode: cron ticks on the API, fired by the leader only. None: each trigger's
    /// ticks in a file under its state directory, always fired (one process).
    pub scheduling: Option<Scheduling>,
    /// Kubernetes mode: Kinesis shards split between replicas by Leases holding the checkpoints,
    /// one set per checkpoint key. None: every shard read here, checkpoints in files.
    pub shard_leases: Option<ShardLeasesFor>,
    /// The bytes of messages every consumer together may hold (`--memory-budget`).
    pub budget: MemoryBudget,
    /// Where the functions the daemon runs itself answer (standalone mode's local functions).
    pub routes: Routes,
}

/// Makes the shard leases of one Kinesis reader from its checkpoint key (and an earlier version's
/// key, whose checkpoints are read until its own exist).
pub type ShardLeasesFor = Arc<dyn Fn(&str, Option<&str>) -> Arc<dyn ShardLeases> + Send + Sync>;

impl Services {
    pub fn standalone(http: HttpClient, budget: MemoryBudget, routes: Routes) -> Self {
        Self { http, scheduling: None, shard_leases: None, budget, routes }
    }

    fn scheduling(&self, source: &CronSource) -> Scheduling {
        self.scheduling.clone().unwrap_or_else(|| Scheduling {
            ticks: Arc::new(cron::state::FileStateStore::new(&source.state_dir)),
            leading: tokio::sync::watch::channel(true).1,
        })
    }
}

impl crate::control::supervisor::Runner for Services {
    fn run(
        &self,
        spec: ConsumerSpec,
        health: Health,
        stop: CancellationToken,
    ) -> futures::future::BoxFuture<'static, ()> {
        supervise(spec, self.clone(), health, stop).boxed()
    }
}

/// Runs one consumer, restarting it with backoff if its source fails, until `stop`.
pub async fn supervise(spec: ConsumerSpec, services: Services, health: Health, stop: CancellationToken) {
    let metrics = ConsumerMetrics::new(spec.kind.as_str(), &spec.trigger, &spec.function);
    // The source's health, as gauges and counters, once a second.
    let health_metrics = tokio::spawn({
        let (health, metrics, stop) = (health.clone(), metrics.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let (mut abandoned, mut checkpoint_failures) = (0, 0);
            while !stop.is_cancelled() {
                tick.tick().await;
                metrics.lag.set(health.lag() as f64);
                metrics.failing.set(f64::from(u8::from(matches!(health.state(), SourceState::Failed(_)))));
                // Touched, so a consumer idle for long keeps its series (a stopped one's go).
                metrics.in_flight.increment(0.0);
                metrics.oldest_unacked.set(health.oldest_unfinished_age().unwrap_or_default().as_secs_f64());
                let now = health.abandoned();
                metrics.abandoned.increment(now.saturating_sub(abandoned));
                abandoned = now;
                let now = health.checkpoint_failures();
                metrics.checkpoint_failures.increment(now.saturating_sub(checkpoint_failures));
                checkpoint_failures = now;
            }
        }
    });
    let mut backoff = RESTART_BACKOFF;
    while !stop.is_cancelled() {
        // A panic in a source is a bug, but it must not leave the consumer dead and "Starting"
        // forever: report it and restart like any other failure.
        let result =
            AssertUnwindSafe(run_once(&spec, &services, &health, &stop, &metrics)).catch_unwind().await.unwrap_or_else(
                |panic| Err(Failure::new(Reason::Panicked, format!("the consumer panicked: {}", panic_text(&panic)))),
            );
        if stop.is_cancelled() {
            break;
        }
        let failure =
            result.err().unwrap_or_else(|| Failure::new(Reason::SourceStopped, "the source stopped on its own"));
        health.set(SourceState::Failed(failure.clone()));
        let (trigger, function) = (spec.trigger.as_str(), spec.function.as_str());
        ConsumerFailed { trigger, function, failure: &failure, retry_in: backoff }.emit(&metrics);
        if !failure.is_retriable() {
            // Trying again cannot help: the supervisor restarts this consumer when its spec (its
            // trigger, function or their Secrets) changes.
            stop.cancelled().await;
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
    }
    health_metrics.abort();
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
    services: &Services,
    health: &Health,
    stop: &CancellationToken,
    metrics: &ConsumerMetrics,
) -> Result<(), Failure> {
    let (url, authorization, route) = match spec.url.strip_prefix(LOCAL_URL_PREFIX) {
        Some(function) => (http::Uri::from_static("http://127.0.0.1/"), None, Some(services.routes.route(function))),
        None => {
            let (url, authorization) = crate::delivery::function_target(&spec.url)
                .map_err(|e| Failure::new(Reason::InvalidFunctionUrl, e.to_string()))?;
            (url, authorization, None)
        }
    };
    let dead_letter = dead_letter_sink(spec).await?;
    let (style, method) = match &spec.source {
        SourceSpec::Kafka(_) | SourceSpec::Nats(_) => (EventStyle::Broker, http::Method::POST),
        SourceSpec::Kinesis(_) => (EventStyle::Stream, http::Method::POST),
        SourceSpec::Cron(c) if c.payload.is_none() => (EventStyle::Cron, http::Method::GET),
        SourceSpec::Cron(_) => (EventStyle::Cron, http::Method::POST),
    };
    // JetStream redelivers on a NAK with delay; other sources retry here. A NAK frees the lane, so
    // a later message of it would overtake the retried one: with lanes (NATS messages have no key,
    // so only `ordering: partition` makes them, one per subject) JetStream retries here too, the
    // source keeping the message held with progress acks.
    let redeliver_via_source = matches!(&spec.source, SourceSpec::Nats(n) if n.jetstream_stream.is_some())
        && spec.delivery.ordering != Ordering::Partition;
    let mut retry = spec.delivery.retry.clone();
    if let SourceSpec::Cron(c) = &spec.source {
        // Kubeless made one call per tick. Without limits of its own, a tick's retries end when the
        // next tick is due, so a failing function never piles up retrying calls.
        if retry.max_attempts.is_none() && retry.max_record_age.is_none() {
            let schedule = crate::schedule::Schedule::parse(&c.schedule, c.timezone.as_deref())
                .map_err(|e| Failure::new(Reason::InvalidConfig, e.to_string()))?;
            retry.max_record_age = schedule.interval_after(chrono::Utc::now());
        }
    }
    let target = Target {
        trigger: spec.trigger.clone(),
        function: spec.function.clone(),
        url,
        authorization,
        route,
        timeout: spec.timeout,
        event_namespace: spec.event_namespace,
        style,
        method,
        retry,
        redeliver_via_source,
    };
    let deliverer =
        Arc::new(Deliverer::new(services.http.clone(), target, dead_letter, spec.delivery.rate_limit, metrics.clone()));
    if let SourceSpec::Cron(c) = &spec.source {
        let metrics = CronMetrics::new(&spec.trigger, &spec.function);
        let scheduling = services.scheduling(c);
        return cron::runner::run(&spec.trigger, c, deliverer, metrics, health, scheduling, stop).await;
    }
    let max_in_flight = spec.delivery.max_in_flight as usize;
    // The channel holds one batch of in-flight work: enough to refill every slot without waiting
    // on the source, no more.
    let (tx, rx) = mpsc::channel(max_in_flight.max(16));
    // Kafka and Kinesis bound each partition's span (maxUncommitted), JetStream what it hands out
    // (max_ack_pending); core NATS nothing.
    let source_bounds_partitions = match &spec.source {
        SourceSpec::Kafka(_) | SourceSpec::Kinesis(_) => true,
        SourceSpec::Nats(n) => n.jetstream_stream.is_some(),
        SourceSpec::Cron(_) => false,
    };
    let bounds = dispatch::Bounds { in_flight: max_in_flight, source_bounds_partitions };
    let dispatcher = dispatch::Dispatcher::spawn(rx, deliverer, spec.delivery.ordering, bounds);
    // This source's part of the memory budget, for as long as it runs.
    let budget = services.budget.register();
    let ctx = SourceContext { out: tx, shutdown: stop.child_token(), health: health.clone(), budget };
    let result = match &spec.source {
        SourceSpec::Kafka(kafka) => run_source(kafka.clone(), ctx).await.map_err(|e| e.failure()),
        SourceSpec::Nats(nats) => kubeless_nats::run_source(nats.clone(), ctx).await.map_err(|e| e.failure()),
        SourceSpec::Kinesis(k) => match &services.shard_leases {
            Some(leases) => {
                kubeless_kinesis::run_source_with(
                    k.clone(),
                    ctx,
                    leases(&k.checkpoint_key, k.legacy_checkpoint_key.as_deref()),
                )
                .await
            }
            None => kubeless_kinesis::run_source(k.clone(), ctx).await,
        }
        .map_err(|e| e.failure()),
        SourceSpec::Cron(_) => Ok(()),
    };
    // The source has drained, committed and left its group (or failed): whatever still runs
    // cannot be committed by this consumer any more, so stop retrying it. (If this consumer is
    // abandoned before it gets here, dropping `dispatcher` does the same.)
    dispatcher.abort().await;
    result
}

/// The dead-letter destination of a consumer, if it has one.
async fn dead_letter_sink(spec: &ConsumerSpec) -> Result<Option<Arc<dyn DeadLetterSink>>, Failure> {
    Ok(match (&spec.delivery.dead_letter, &spec.source) {
        (Some(DeadLetterTarget::Kafka { topic, brokers, properties, .. }), SourceSpec::Kafka(kafka)) => {
            // The index fills in the brokers and the properties the policy gives them.
            let brokers = brokers.as_deref().unwrap_or(&kafka.brokers);
            let properties = properties.as_ref().unwrap_or(&kafka.properties);
            let sink = KafkaDeadLetter::new(brokers, topic, properties).map_err(|e| {
                let detail = format!("cannot create the dead-letter producer for topic {topic}: {e}");
                Failure::new(kubeless_kafka::creation_reason(&e), detail)
            })?;
            Some(Arc::new(sink))
        }
        (Some(DeadLetterTarget::Nats { subject }), SourceSpec::Nats(nats)) => {
            let client =
                kubeless_nats::connect(&nats.url, &nats.auth, nats.tls, nats.ca_pem.as_deref()).await.map_err(|e| {
                    Failure::new(Reason::DeadLetterUnavailable, format!("dead-letter subject {subject}: {e}"))
                })?;
            Some(Arc::new(NatsDeadLetter::new(client, subject, nats.jetstream_stream.is_some())))
        }
        _ => None,
    })
}
