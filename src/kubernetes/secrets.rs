//! The Secrets triggers name, read one by one with `get`: the daemon keeps no cache of the
//! cluster's (or a namespace's) Secrets and needs no right to list or watch them — a compromise
//! of the daemon does not hand out every Secret of the cluster, and a cluster with thousands of
//! large Secrets (Helm releases, tokens) costs it nothing. Each named Secret is read as soon as a
//! trigger names it and every [`RECHECK`] after that, so a rotated credential reaches the consumers
//! within that time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::store::{Change, Origin, Store, Stored};
use crate::control::{Snapshot, SourceEvent};
use crate::resources::{Kind, ObjectRef, Resource};

/// How often every named Secret is read again.
pub const RECHECK: Duration = Duration::from_secs(30);
/// A read that failed is tried again this soon.
const RETRY: Duration = Duration::from_secs(2);
/// One read's deadline.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads at once.
const PARALLEL_READS: usize = 8;

/// (namespace, name) of every Secret a valid trigger in `store` names.
pub fn referenced(store: &Store) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (object, resource) in store.resources() {
        let ns = object.namespace.clone();
        let mut name = |n: &str| {
            out.insert((ns.clone(), n.to_string()));
        };
        match resource {
            Resource::Kafka(t, policy) => {
                t.spec.auth.iter().for_each(|a| name(&a.secret));
                if let Some(crate::resources::DeadLetterTarget::Kafka { secret: Some(s), .. }) = &policy.dead_letter {
                    name(s);
                }
            }
            Resource::Nats(t, _) => {
                t.spec.auth.iter().for_each(|a| name(&a.secret));
                t.spec.tls.iter().filter_map(|tls| tls.ca_secret.as_deref()).for_each(&mut name);
            }
            Resource::Kinesis(t, _) => t.spec.secret.iter().for_each(|s| name(s)),
            Resource::Function(_) | Resource::Secret(_) | Resource::CronJob(..) | Resource::Http(_) => {}
        }
    }
    out
}

fn stored(mut secret: Secret) -> (ObjectRef, Stored) {
    secret.metadata.managed_fields = None;
    let object = ObjectRef::new(
        Kind::Secret,
        secret.metadata.namespace.clone().unwrap_or_default(),
        secret.metadata.name.clone().unwrap_or_default(),
    );
    let origin = Origin::Api { uid: secret.metadata.uid.clone().unwrap_or_default(), generation: None };
    (object, Stored { origin, resource: Ok(Resource::Secret(secret)) })
}

/// Reads the Secrets the triggers name into the store, until `stop`.
pub async fn run(
    client: Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    out: mpsc::Sender<SourceEvent>,
    stop: CancellationToken,
) {
    // Reads failing now, by what was read, so each failure is logged once.
    let mut failing: BTreeMap<String, String> = BTreeMap::new();
    // What the store holds: each Secret read, by its resourceVersion.
    let mut held: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    // Reads that failed, retried every RETRY rather than at the next recheck.
    let mut failed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        let retry = async {
            if failed.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(RETRY).await;
        };
        let (everything, retrying) = tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                (false, false)
            }
            _ = recheck.tick() => (true, false),
            () = retry => (false, true),
            () = stop.cancelled() => return,
        };
        let now = referenced(&snapshots.borrow_and_update().store);
        let mut changes = Vec::new();
        for gone in wanted.difference(&now) {
            failed.remove(gone);
            if held.remove(gone).is_some() {
                changes.push(Change::Delete(ObjectRef::new(Kind::Secret, &gone.0, &gone.1)));
            }
        }
        let mut to_read: BTreeSet<(String, String)> =
            if everything { now.clone() } else { now.difference(&wanted).cloned().collect() };
        if retrying {
            to_read.extend(failed.iter().filter(|k| now.contains(*k)).cloned());
        }
        wanted = now;
        // A few at a time, each bounded: one namespace naming many Secrets, or a slow answer, does
        // not hold up the others for long.
        let reads = futures::stream::iter(to_read)
            .map(|(ns, name)| {
                let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                async move {
                    let got = tokio::time::timeout(READ_TIMEOUT, api.get_opt(&name)).await;
                    ((ns, name), got)
                }
            })
            .buffer_unordered(PARALLEL_READS)
            .collect::<Vec<_>>()
            .await;
        for ((ns, name), got) in reads {
            let label = format!("get secret {ns}/{name}");
            let key = (ns.clone(), name.clone());
            match got {
                Ok(Ok(Some(secret))) => {
                    failed.remove(&key);
                    let version = secret.metadata.resource_version.clone().unwrap_or_default();
                    if held.get(&key) != Some(&version) {
                        held.insert(key, version);
                        let (object, stored) = stored(secret);
                        changes.push(Change::Apply(object, Box::new(stored)));
                    }
                    clear_error(&mut failing, &label);
                }
                Ok(Ok(None)) => {
                    failed.remove(&key);
                    if held.remove(&key).is_some() {
                        changes.push(Change::Delete(ObjectRef::new(Kind::Secret, &ns, &name)));
                    }
                    clear_error(&mut failing, &label);
                }
                // Kept as it was: consumers using it go on with what they have. (Not a readiness
                // matter: the daemon is fine, one trigger's Secret is not.)
                failure => {
                    let text = match failure {
                        Ok(Err(e)) => kubeless_connector::error_chain(&e),
                        _ => format!("no answer within {READ_TIMEOUT:?}"),
                    };
                    failed.insert(key);
                    if failing.get(&label) != Some(&text) {
                        warn!(secret = %format!("{ns}/{name}"), error = %text, "Cannot read a Secret a trigger names; retrying.");
                        failing.insert(label, text);
                    }
                }
            }
        }
        for change in changes {
            if out.send(SourceEvent::Change(change)).await.is_err() {
                return;
            }
        }
    }
}

fn clear_error(failing: &mut BTreeMap<String, String>, label: &str) {
    if failing.remove(label).is_some() {
        info!(read = %label, "Secret readable again.");
    }
}
