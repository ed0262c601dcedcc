//! Status on every trigger, and Warning Events for specs that do not validate.
//!
//! [`trigger_status`] is pure: from what the store, the index and the supervisor know of one
//! trigger it computes the status `kubectl get` shows. The [`StatusWriter`] writes it with
//! server-side apply (one field manager) only when it changed, lag-only changes at most every
//! [`LAG_INTERVAL`] per object and all writes under a global rate, so a moving lag cannot flood
//! the API server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use kubeless_connector::{Failure, SourceState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::watch::api_resource;
use crate::control::index::TriggerProblem;
use crate::control::store::Origin;
use crate::control::supervisor::{state_text_of, ConsumerStatus, Supervisor};
use crate::control::Snapshot;
use crate::resources::{Condition, FunctionConsumer, TriggerStatus, API_VERSION};
use crate::resources::{Kind, ObjectRef};

/// A change of lag alone is written at most this often per object.
pub const LAG_INTERVAL: Duration = Duration::from_secs(15);
/// How often consumer states are looked at for changes.
const TICK: Duration = Duration::from_secs(1);

/// What is known of one trigger, from which its status follows.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub generation: Option<i64>,
    /// Why the spec does not validate.
    pub invalid: Option<&'a str>,
    /// Why a valid trigger runs no consumer.
    pub problem: Option<&'a TriggerProblem>,
    /// A valid kind this build does not run.
    pub unserved: bool,
    pub consumers: &'a [&'a ConsumerStatus],
}

/// The status of one trigger. `previous` keeps `lastTransitionTime` while the condition holds.
pub fn trigger_status(kind: Kind, facts: Facts<'_>, previous: Option<&TriggerStatus>, now: &str) -> TriggerStatus {
    // One order whatever order the supervisor reported in, so equal states write equal statuses.
    let mut consumers = facts.consumers.to_vec();
    consumers.sort_by(|a, b| (&a.function, &a.group).cmp(&(&b.function, &b.group)));
    let facts = Facts { consumers: &consumers, ..facts };
    let (status, reason, message) = ready_condition(facts);
    let functions: Vec<FunctionConsumer> = facts
        .consumers
        .iter()
        .map(|c| FunctionConsumer {
            name: c.function.clone(),
            state: state_text_of(&c.state),
            reason: c.reason.map(str::to_string),
            group: c.group.clone(),
            lag: has_lag(kind).then_some(c.lag),
        })
        .collect();
    let lag = (has_lag(kind) && !facts.consumers.is_empty()).then(|| facts.consumers.iter().map(|c| c.lag).sum());
    TriggerStatus {
        conditions: vec![Condition::ready(status, reason, message, previous.map_or(&[][..], |p| &p.conditions), now)],
        observed_generation: facts.generation,
        lag,
        functions,
        ..TriggerStatus::default()
    }
}

fn has_lag(kind: Kind) -> bool {
    matches!(kind, Kind::KafkaTrigger | Kind::KinesisTrigger)
}

fn ready_condition(facts: Facts<'_>) -> (&'static str, &'static str, String) {
    if let Some(why) = facts.invalid {
        return ("False", "InvalidSpec", why.to_string());
    }
    if let Some(p) = facts.problem {
        return ("False", p.reason.as_str(), p.problem.clone());
    }
    if facts.unserved {
        return (
            "Unknown",
            "NotServed",
            "valid; the Ingress reconciler is off (--function-controller=false)".to_string(),
        );
    }
    if facts.consumers.is_empty() {
        return ("False", "Starting", "consumers are being started".to_string());
    }
    // A failure that needs a person (a permanent one) names the condition first, then the first
    // failed consumer's (functions in name order); the message says every one's.
    let failed: Vec<(&str, &Failure)> = facts
        .consumers
        .iter()
        .filter_map(|c| match &c.state {
            SourceState::Failed(failure) => Some((c.function.as_str(), failure)),
            _ => None,
        })
        .collect();
    if let Some((_, first)) = failed.iter().min_by_key(|(_, f)| f.is_retriable()) {
        let details: Vec<String> = failed.iter().map(|(function, f)| format!("{function}: {f}")).collect();
        return ("False", first.reason.as_str(), details.join("; "));
    }
    let starting: Vec<&str> = facts.consumers.iter().filter(|c| !c.ready).map(|c| c.function.as_str()).collect();
    if !starting.is_empty() {
        let (reason, what) = match facts.consumers[0].kind {
            Kind::KafkaTrigger => ("PartitionsNotAssigned", "partitions not assigned yet"),
            _ => ("Starting", "connecting"),
        };
        return ("False", reason, format!("{what}: {}", starting.join(", ")));
    }
    let mut names: Vec<&str> = facts.consumers.iter().map(|c| c.function.as_str()).collect();
    names.dedup();
    ("True", "Delivering", format!("delivering to {}", names.join(", ")))
}

/// True if `new` differs from `old` in more than lag.
fn differs_beyond_lag(old: &TriggerStatus, new: &TriggerStatus) -> bool {
    let strip = |s: &TriggerStatus| {
        let mut s = s.clone();
        s.lag = None;
        s.functions.iter_mut().for_each(|f| f.lag = None);
        s
    };
    strip(old) != strip(new)
}

struct Written {
    status: TriggerStatus,
    at: Instant,
}

/// Writes trigger status and InvalidSpec Events while this replica leads.
pub struct StatusWriter {
    client: Client,
    field_manager: String,
    recorder: Recorder,
    /// Shared with the cron tick claims.
    limiter: super::ApiWrites,
    written: BTreeMap<ObjectRef, Written>,
    /// (object, generation, message) already reported by an Event.
    evented: BTreeSet<(ObjectRef, Option<i64>, String)>,
    /// HTTPTriggers' status is the Ingress reconciler's to write.
    skip_http: bool,
}

impl StatusWriter {
    pub fn new(client: Client, field_manager: &str, instance: &str, limiter: super::ApiWrites) -> Self {
        let reporter = Reporter { controller: field_manager.to_string(), instance: Some(instance.to_string()) };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            field_manager: field_manager.to_string(),
            limiter,
            written: BTreeMap::new(),
            evented: BTreeSet::new(),
            skip_http: false,
        }
    }

    /// Leaves HTTPTriggers' status to the Ingress reconciler (it still reports invalid specs
    /// as Events).
    pub fn without_http_status(mut self) -> Self {
        self.skip_http = true;
        self
    }

    /// Writes until `stop`: on every new snapshot and every [`TICK`] (consumer states move).
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        supervisor: Arc<Supervisor>,
        leading: watch::Receiver<bool>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let snapshot = snapshots.borrow_and_update().clone();
            if !*leading.borrow() {
                // Another replica writes; what it wrote is unknown here, so write afresh on
                // becoming the leader.
                self.written.clear();
                continue;
            }
            if snapshot.loaded {
                self.round(&snapshot, &supervisor.status(), &stop).await;
            }
        }
    }

    async fn round(&mut self, snapshot: &Snapshot, consumers: &[ConsumerStatus], stop: &CancellationToken) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut by_trigger: BTreeMap<ObjectRef, Vec<&ConsumerStatus>> = BTreeMap::new();
        for c in consumers {
            by_trigger.entry(c.trigger_ref()).or_default().push(c);
        }
        let present: BTreeSet<&ObjectRef> = snapshot.store.iter().map(|(r, _)| r).collect();
        self.written.retain(|r, _| present.contains(r));
        self.evented.retain(|(r, ..)| present.contains(r));
        for (object, stored) in snapshot.store.iter().filter(|(r, _)| r.kind.is_trigger()) {
            let Origin::Api { uid, generation } = &stored.origin else { continue };
            let no_consumers = Vec::new();
            let facts = Facts {
                generation: *generation,
                invalid: stored.resource.as_ref().err().map(String::as_str),
                problem: snapshot.desired.problem_of(object),
                unserved: snapshot.desired.unserved.contains(object),
                consumers: by_trigger.get(object).unwrap_or(&no_consumers),
            };
            if let Some(why) = facts.invalid {
                self.event(object, uid, *generation, "InvalidSpec", why).await;
            }
            if let Some(p) = facts.problem.filter(|p| p.reason.is_policy()) {
                self.event(object, uid, *generation, p.reason.as_str(), &p.problem).await;
            }
            if self.skip_http && object.kind == Kind::HTTPTrigger {
                continue;
            }
            let previous = self.written.get(object);
            let status = trigger_status(object.kind, facts, previous.map(|w| &w.status), &now);
            let due = match previous {
                None => true,
                Some(w) if w.status == status => false,
                Some(w) => differs_beyond_lag(&w.status, &status) || w.at.elapsed() >= LAG_INTERVAL,
            };
            if !due {
                continue;
            }
            tokio::select! {
                () = self.limiter.until_ready() => {}
                () = stop.cancelled() => return,
            }
            match self.write(object, &status).await {
                Ok(()) => {
                    debug!(object = %object, "Status written.");
                    self.written.insert(object.clone(), Written { status, at: Instant::now() });
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {} // deleted meanwhile
                Err(e) => {
                    warn!(object = %object, error = %kubeless_connector::error_chain(&e), "Cannot write status; will retry.")
                }
            }
        }
    }

    async fn write(&self, object: &ObjectRef, status: &TriggerStatus) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &object.namespace, &api_resource(object.kind));
        let body = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": object.kind.as_str(),
            "metadata": {"name": object.name, "namespace": object.namespace},
            "status": status,
        });
        let params = PatchParams::apply(&self.field_manager).force();
        api.patch_status(&object.name, &params, &Patch::Apply(&body)).await.map(|_| ())
    }

    /// One Warning Event per (object, generation, message): an invalid spec, or a spec the
    /// cluster's policy refuses.
    async fn event(&mut self, object: &ObjectRef, uid: &str, generation: Option<i64>, reason: &str, why: &str) {
        let key = (object.clone(), generation, why.to_string());
        if self.evented.contains(&key) {
            return;
        }
        let reference = ObjectReference {
            api_version: Some(API_VERSION.to_string()),
            kind: Some(object.kind.as_str().to_string()),
            name: Some(object.name.clone()),
            namespace: Some(object.namespace.clone()),
            uid: Some(uid.to_string()),
            ..ObjectReference::default()
        };
        // Events are writes too: under the same rate as status and cron claims.
        self.limiter.until_ready().await;
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(truncate(why, 1024)),
            action: "Validate".to_string(),
            secondary: None,
        };
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => {
                self.evented.insert(key);
            }
            Err(e) => {
                warn!(object = %object, reason, error = %kubeless_connector::error_chain(&e), "Cannot record the Warning event; will retry.")
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
