//! The supervisor's diff rules, with a runner that records what it was asked to run and drains for
//! as long as each test says, under paused time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use kubeless_connector::{Health, MemoryBudget, SourceState};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Runner, Supervisor, STOP_GRACE};
use crate::control::spec::{ConsumerSpec, CronSource, SourceSpec};
use crate::resources::{ConcurrencyPolicy, DeliveryPolicy, Kind};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Started(String),
    /// Told to stop (cancelled).
    Stopping(String),
    /// Finished draining.
    Stopped(String),
}

/// Runs every consumer as: started, Ready, wait for the stop, drain for the trigger's drain time
/// (`for ever` ignores the stop).
struct Recorder {
    events: Mutex<Vec<(Duration, Event)>>,
    drains: Mutex<BTreeMap<String, Option<Duration>>>,
    start: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self { events: Mutex::default(), drains: Mutex::default(), start: Instant::now() })
    }

    fn drain(&self, trigger: &str, drain: Option<Duration>) {
        lock(&self.drains).insert(trigger.to_string(), drain);
    }

    fn note(&self, event: Event) {
        let since = self.start.elapsed();
        lock(&self.events).push((since, event));
    }

    fn events(&self) -> Vec<Event> {
        lock(&self.events).iter().map(|(_, e)| e.clone()).collect()
    }

    fn at(&self, event: &Event) -> Option<Duration> {
        lock(&self.events).iter().find(|(_, e)| e == event).map(|(t, _)| *t)
    }
}

impl Runner for Arc<Recorder> {
    fn run(&self, spec: ConsumerSpec, health: Health, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let this = self.clone();
        async move {
            let name = spec.trigger.clone();
            this.note(Event::Started(name.clone()));
            health.set(SourceState::Ready);
            stop.cancelled().await;
            this.note(Event::Stopping(name.clone()));
            let drain = lock(&this.drains).get(&name).copied().unwrap_or(Some(Duration::ZERO));
            match drain {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
            this.note(Event::Stopped(name));
        }
        .boxed()
    }
}

/// A cron consumer: its drain timeout is zero, so the supervisor abandons it after the grace.
fn spec(trigger: &str, schedule: &str) -> ConsumerSpec {
    ConsumerSpec {
        kind: Kind::CronJobTrigger,
        trigger: trigger.to_string(),
        function: "default/f".to_string(),
        event_namespace: "cronjobtrigger.kubeless.io",
        source: SourceSpec::Cron(CronSource {
            schedule: schedule.to_string(),
            timezone: None,
            payload: None,
            concurrency: ConcurrencyPolicy::Allow,
            starting_deadline: None,
            state_dir: std::path::PathBuf::from("/nonexistent"),
        }),
        url: "http://127.0.0.1:1/".to_string(),
        timeout: Duration::from_secs(1),
        delivery: DeliveryPolicy::default(),
    }
}

fn desired(specs: &[(&str, ConsumerSpec)]) -> BTreeMap<String, ConsumerSpec> {
    specs.iter().map(|(key, spec)| (key.to_string(), spec.clone())).collect()
}

fn supervisor(recorder: &Arc<Recorder>) -> Arc<Supervisor> {
    Supervisor::new(Arc::new(recorder.clone()), MemoryBudget::new(1 << 20))
}

/// Lets every spawned task run until it waits on time.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn started(t: &str) -> Event {
    Event::Started(t.to_string())
}
fn stopping(t: &str) -> Event {
    Event::Stopping(t.to_string())
}
fn stopped(t: &str) -> Event {
    Event::Stopped(t.to_string())
}

#[tokio::test(start_paused = true)]
async fn every_new_consumer_starts_and_an_equal_snapshot_restarts_none() {
    let recorder = Recorder::new();
    let sup = supervisor(&recorder);
    let both = desired(&[("a", spec("ns/a", "@every 1s")), ("b", spec("ns/b", "@every 1s"))]);
    sup.apply(&both);
    settle().await;
    assert_eq!(recorder.events(), vec![started("ns/a"), started("ns/b")]);

    sup.apply(&both.clone());
    settle().await;
    assert_eq!(recorder.events().len(), 2, "{:?}", recorder.events());
    assert_eq!(sup.running(), 2);
    let status = sup.status();
    assert!(status.iter().all(|s| s.ready && s.state == SourceState::Ready), "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn a_removed_consumer_stops_and_the_others_keep_running() {
    let recorder = Recorder::new();
    let sup = supervisor(&recorder);
    sup.apply(&desired(&[("a", spec("ns/a", "@every 1s")), ("b", spec("ns/b", "@every 1s"))]));
    settle().await;
    sup.apply(&desired(&[("b", spec("ns/b", "@every 1s"))]));
    settle().await;
    assert_eq!(recorder.events(), vec![started("ns/a"), started("ns/b"), stopping("ns/a"), stopped("ns/a")]);
    assert_eq!(sup.running(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_with_the_same_key_starts_only_after_its_predecessor_stopped() {
    let recorder = Recorder::new();
    recorder.drain("ns/a", Some(Duration::from_secs(3)));
    let sup = supervisor(&recorder);
    sup.apply(&desired(&[("a", spec("ns/a", "@every 1s"))]));
    settle().await;

    // The spec changes under the same key (the same group): the new one waits for the drain.
    sup.apply(&desired(&[("a", spec("ns/a-edited", "@every 2s"))]));
    settle().await;
    assert_eq!(sup.stopping(), vec!["a".to_string()]);
    assert!(!recorder.events().contains(&started("ns/a-edited")), "{:?}", recorder.events());

    tokio::time::sleep(Duration::from_secs(4)).await;
    settle().await;
    let stopped_at = recorder.at(&stopped("ns/a")).expect("the old consumer stopped");
    let started_at = recorder.at(&started("ns/a-edited")).expect("the new consumer started");
    assert!(started_at >= stopped_at, "started at {started_at:?}, predecessor stopped at {stopped_at:?}");
    assert!(stopped_at >= Duration::from_secs(3));
    assert!(sup.stopping().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_consumer_with_another_key_starts_at_once_while_a_stopped_one_drains() {
    let recorder = Recorder::new();
    recorder.drain("ns/a", Some(Duration::from_secs(3)));
    let sup = supervisor(&recorder);
    sup.apply(&desired(&[("a", spec("ns/a", "@every 1s"))]));
    settle().await;
    sup.apply(&desired(&[("b", spec("ns/b", "@every 1s"))]));
    settle().await;
    assert!(recorder.events().contains(&started("ns/b")), "{:?}", recorder.events());
    assert!(!recorder.events().contains(&stopped("ns/a")), "{:?}", recorder.events());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(recorder.events().last(), Some(&stopped("ns/a")));
}

#[tokio::test(start_paused = true)]
async fn a_consumer_that_outlives_its_drain_and_grace_is_abandoned_and_its_successor_starts() {
    let recorder = Recorder::new();
    recorder.drain("ns/stuck", None);
    let sup = supervisor(&recorder);
    sup.apply(&desired(&[("a", spec("ns/stuck", "@every 1s"))]));
    settle().await;
    sup.apply(&desired(&[("a", spec("ns/next", "@every 1s"))]));
    settle().await;
    tokio::time::sleep(STOP_GRACE - Duration::from_millis(100)).await;
    settle().await;
    assert!(!recorder.events().contains(&started("ns/next")), "started before the grace: {:?}", recorder.events());

    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert!(recorder.events().contains(&started("ns/next")), "{:?}", recorder.events());
    assert!(!recorder.events().contains(&stopped("ns/stuck")), "the stuck consumer was abandoned, not drained");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_consumer_at_once_and_waits_for_the_ones_already_stopping() {
    let recorder = Recorder::new();
    for t in ["ns/a", "ns/b", "ns/gone"] {
        recorder.drain(t, Some(Duration::from_secs(2)));
    }
    let sup = supervisor(&recorder);
    sup.apply(&desired(&[
        ("a", spec("ns/a", "@every 1s")),
        ("b", spec("ns/b", "@every 1s")),
        ("gone", spec("ns/gone", "@every 1s")),
    ]));
    settle().await;
    sup.apply(&desired(&[("a", spec("ns/a", "@every 1s")), ("b", spec("ns/b", "@every 1s"))]));
    settle().await;

    let began = Instant::now();
    sup.shutdown().await;
    // In parallel: one drain's time, not three.
    assert!(began.elapsed() < Duration::from_secs(3), "{:?}", began.elapsed());
    for t in ["ns/a", "ns/b", "ns/gone"] {
        assert!(recorder.events().contains(&stopped(t)), "{t} drained: {:?}", recorder.events());
    }
    assert_eq!(sup.running(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_cancelled_before_the_predecessor_finished_never_starts_the_successor() {
    let recorder = Recorder::new();
    recorder.drain("ns/a", Some(Duration::from_secs(3)));
    let sup = supervisor(&recorder);
    sup.apply(&desired(&[("a", spec("ns/a", "@every 1s"))]));
    settle().await;
    sup.apply(&desired(&[("a", spec("ns/a2", "@every 1s"))]));
    settle().await;
    // Removed again while it still waits for its predecessor.
    sup.apply(&desired(&[]));
    tokio::time::sleep(Duration::from_secs(5)).await;
    settle().await;
    assert!(!recorder.events().contains(&started("ns/a2")), "{:?}", recorder.events());
}
