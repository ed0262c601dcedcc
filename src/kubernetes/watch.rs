//! Kubernetes mode's source: one kube-runtime watcher per kind (and per namespace when the watch is
//! limited), turned into store changes. A watcher that fails retries with backoff (at most 5 s
//! apart) and leaves the store as it was: running consumers keep delivering while the API server is away.
//! A relist replaces exactly the objects of its kind and namespace.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::manifests::parse_document;
use crate::control::store::{Change, Origin, Scope, Stored};
use crate::control::{lock_report, SharedReport, SourceEvent};
use crate::resources::{Kind, ObjectRef};

/// How often a failing watch is checked against the API server's `/version`, to clear a
/// connection error once the server is back (the watch itself resumes silently).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The API resource of one of our custom kinds.
pub fn api_resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: "kubeless.io".to_string(),
        version: "v1beta1".to_string(),
        api_version: crate::resources::API_VERSION.to_string(),
        kind: kind.as_str().to_string(),
        plural: kind.plural().to_string(),
    }
}

/// An object from the API server, parsed and validated exactly as a manifest document is.
pub fn from_dynamic(kind: Kind, obj: DynamicObject) -> (ObjectRef, Stored) {
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let origin = Origin::Api { uid: obj.metadata.uid.clone().unwrap_or_default(), generation: obj.metadata.generation };
    let object = ObjectRef::new(kind, namespace, name);
    let mut value = serde_json::to_value(&obj).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        map.insert("apiVersion".into(), crate::resources::API_VERSION.into());
        map.insert("kind".into(), kind.as_str().into());
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
            // Bumped by every status write, tick claim or label-less touch: kept, it would make
            // each of them look like a change and recompute every consumer.
            meta.remove("resourceVersion");
        }
    }
    let resource = serde_yaml::to_value(&value)
        .map_err(|e| e.to_string())
        .and_then(|v| parse_document(v).map(|(_, r)| r).map_err(|(_, problem)| problem));
    (object, Stored { origin, resource })
}

/// Runs every watcher until `stop`. Sends [`SourceEvent::Loaded`] once every watcher has listed
/// its objects.
pub async fn run(
    client: Client,
    namespaces: Vec<String>,
    out: mpsc::Sender<SourceEvent>,
    report: SharedReport,
    stop: CancellationToken,
) {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    // Secrets are not watched: `kubernetes::secrets` reads the ones triggers name.
    let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| *k != Kind::Secret).collect();
    let pending = Arc::new(AtomicUsize::new(scopes.len() * kinds.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for ns in &scopes {
        for &kind in &kinds {
            let w = Watch {
                kind,
                namespace: ns.clone(),
                out: out.clone(),
                report: report.clone(),
                pending: pending.clone(),
                stop: stop.clone(),
            };
            let ar = api_resource(kind);
            let api: Api<DynamicObject> = match ns {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            let stream = watcher(api, watcher::Config::default())
                .try_filter_map(|e| std::future::ready(Ok(terminating_as_deleted(e))))
                .map_ok(move |e| map_event(e, |o| from_dynamic(kind, o)));
            tasks.spawn(w.run(stream.boxed()));
        }
    }
    tasks.spawn(probe(client, report, stop.clone()));
    while tasks.join_next().await.is_some() {}
}

fn watcher<K>(api: Api<K>, config: watcher::Config) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config).backoff(watch_backoff())
}

/// Retries of a failed watch: from 500 ms, doubling, at most 5 s apart (kube-runtime's default
/// grows to 30 s, so after a 20 s outage the first retry that could succeed came up to 30 s late,
/// and a relist after "resource version too old" as late again), reset after a minute of health.
fn watch_backoff() -> ResetTimerBackoff<watcher::ExponentialBackoff> {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(exponential.into(), Duration::from_secs(60))
}

/// An object being deleted (`deletionTimestamp` set) is gone as far as consumers go: its consumers
/// stop now, not when its finalizers are done. Objects migrated from a Kubeless cluster may still
/// carry Kubeless's finalizers (`kubeless.io/kafkatrigger`, …), which nothing removes once Kubeless's
/// controllers are gone: the object would hang in Terminating, so say how to release it. The
/// Function finalizer is the Function reconciler's to release (with it turned off, Kubeless's own
/// controller is still running and releases it).
fn terminating_as_deleted(event: Event<DynamicObject>) -> Option<Event<DynamicObject>> {
    let terminating = |o: &DynamicObject| {
        if o.metadata.deletion_timestamp.is_none() {
            return false;
        }
        let kubeless: Vec<&String> = o
            .metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| f.starts_with("kubeless.io/") && *f != crate::resources::KUBELESS_FINALIZER)
            .collect();
        if !kubeless.is_empty() {
            let kind = o.types.as_ref().map(|t| t.kind.to_lowercase()).unwrap_or_default();
            let (ns, name) =
                (o.metadata.namespace.as_deref().unwrap_or_default(), o.metadata.name.as_deref().unwrap_or_default());
            warn!(
                object = %format!("{kind} {ns}/{name}"), finalizers = ?kubeless,
                "Being deleted, but held by Kubeless's finalizers, which only Kubeless's controllers removed. Its consumers are stopped; release it with: kubectl patch {kind} {name} -n {ns} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}}]'"
            );
        }
        true
    };
    match event {
        Event::Apply(o) if terminating(&o) => Some(Event::Delete(o)),
        Event::InitApply(o) if terminating(&o) => None,
        e => Some(e),
    }
}

fn map_event<K, T>(event: Event<K>, f: impl Fn(K) -> T) -> Event<T> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

type Events = futures::stream::BoxStream<'static, Result<Event<(ObjectRef, Stored)>, watcher::Error>>;

struct Watch {
    kind: Kind,
    namespace: Option<String>,
    out: mpsc::Sender<SourceEvent>,
    report: SharedReport,
    /// Watchers that have not listed once yet.
    pending: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Watch {
    fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("watch {} in namespace {ns}", self.kind.plural()),
            None => format!("watch {} in all namespaces", self.kind.plural()),
        }
    }

    async fn run(self, mut events: Events) {
        let label = self.label();
        let scope = Scope { kind: Some(self.kind), namespace: self.namespace.clone() };
        let mut listing: Vec<(ObjectRef, Stored)> = Vec::new();
        let mut listed = false;
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                () = self.stop.cancelled() => return,
            };
            let Some(event) = event else { return };
            let change = match event {
                Ok(Event::Init) => {
                    listing.clear();
                    None
                }
                Ok(Event::InitApply(o)) => {
                    listing.push(o);
                    None
                }
                Ok(Event::InitDone) => Some(Change::Reset(scope.clone(), std::mem::take(&mut listing))),
                Ok(Event::Apply((r, stored))) => Some(Change::Apply(r, Box::new(stored))),
                Ok(Event::Delete((r, _))) => Some(Change::Delete(r)),
                Err(e) => {
                    let text = kubeless_connector::error_chain(&e);
                    let mut report = lock_report(&self.report);
                    if report.api_errors.get(&label) != Some(&text) {
                        warn!(watch = %label, error = %text, "Watch failed; retrying with backoff. Running consumers keep delivering.");
                        report.api_errors.insert(label.clone(), text);
                    }
                    if is_connection_error(&e) {
                        report.connection_errors.insert(label.clone());
                    } else {
                        report.connection_errors.remove(&label);
                    }
                    continue;
                }
            };
            {
                let mut report = lock_report(&self.report);
                report.connection_errors.remove(&label);
                if report.api_errors.remove(&label).is_some() {
                    info!(watch = %label, "Watch recovered.");
                }
            }
            let done_listing = matches!(change, Some(Change::Reset(..)));
            if let Some(change) = change {
                if self.out.send(SourceEvent::Change(change)).await.is_err() {
                    return;
                }
            }
            if done_listing && !listed {
                listed = true;
                if self.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                    lock_report(&self.report).loaded = true;
                    info!("Every watch has listed its objects.");
                    if self.out.send(SourceEvent::Loaded).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Clears connection errors once the API server answers again: a watch that resumes from its
/// resourceVersion sends nothing until an object changes, so it cannot say it is back itself.
/// Errors the server itself returned (403, 404) stay until their watch lists again.
async fn probe(client: Client, report: SharedReport, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        let failing = !lock_report(&report).connection_errors.is_empty();
        if failing && client.apiserver_version().await.is_ok() {
            let mut r = lock_report(&report);
            let cleared = std::mem::take(&mut r.connection_errors);
            r.api_errors.retain(|what, _| !cleared.contains(what));
            info!("The API server answers again; watches resume from where they were.");
        }
    }
}

/// An error answered by the API server (403, 404, 410…) rather than a failed connection.
fn is_connection_error(e: &watcher::Error) -> bool {
    let inner = match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => return false,
    };
    !matches!(inner, kube::Error::Api(_))
}
