//! What Kubeless's controllers did when a Function was deleted: they deleted the KinesisTriggers,
//! CronJobTriggers and HTTPTriggers naming it (Kafka and NATS triggers select by label and stay).
//! Only a deletion the broker sees does this — a trigger applied before its Function is not
//! touched — and only the leader acts.

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::api::{Api, DeleteParams, DynamicObject, Preconditions};
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::watch::api_resource;
use crate::control::store::{Origin, Store};
use crate::control::Snapshot;
use crate::resources::{Kind, ObjectRef, Resource};

/// The Functions in a loaded store.
fn functions(store: &Store) -> BTreeSet<ObjectRef> {
    store.iter().filter(|(r, _)| r.kind == Kind::Function).map(|(r, _)| r.clone()).collect()
}

/// The triggers of `store` that name a Function of `gone` (same namespace).
pub fn orphans(store: &Store, gone: &BTreeSet<ObjectRef>) -> Vec<ObjectRef> {
    store
        .resources()
        .filter_map(|(r, res)| {
            let function = match res {
                Resource::Kinesis(t, _) => &t.spec.function_name,
                Resource::CronJob(t, _) => &t.spec.function_name,
                Resource::Http(t) => &t.spec.function_name,
                _ => return None,
            };
            gone.contains(&ObjectRef::new(Kind::Function, &r.namespace, function)).then(|| r.clone())
        })
        .collect()
}

/// Deletes exactly the trigger object the store holds: if it was deleted and created again
/// meanwhile (a GitOps replace), the new one has another uid and the API server refuses (409).
pub fn delete_params(store: &Store, trigger: &ObjectRef) -> DeleteParams {
    let uid = match store.get(trigger).map(|s| &s.origin) {
        Some(Origin::Api { uid, .. }) if !uid.is_empty() => Some(uid.clone()),
        _ => None,
    };
    DeleteParams { preconditions: Some(Preconditions { uid, resource_version: None }), ..DeleteParams::default() }
}

/// Deletes the 1:1 triggers of every Function deleted while this runs, until `stop`.
pub async fn run(
    client: Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut known: Option<BTreeSet<ObjectRef>> = None;
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
        let snapshot = snapshots.borrow_and_update().clone();
        if !snapshot.loaded {
            continue;
        }
        let now = functions(&snapshot.store);
        let gone: BTreeSet<ObjectRef> =
            known.as_ref().map(|k| k.difference(&now).cloned().collect()).unwrap_or_default();
        known = Some(now);
        if gone.is_empty() || !*leading.borrow() {
            continue;
        }
        for trigger in orphans(&snapshot.store, &gone) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &trigger.namespace, &api_resource(trigger.kind));
            match api.delete(&trigger.name, &delete_params(&snapshot.store, &trigger)).await {
                Ok(_) => info!(object = %trigger, "Deleted: the Function it names was deleted (as Kubeless did)."),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    info!(object = %trigger, "Not deleted: it was created again since its Function went; the new one stays.")
                }
                Err(e) => {
                    warn!(object = %trigger, error = %kubeless_connector::error_chain(&e), "Cannot delete the trigger of a deleted Function.")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::control::manifests::parse_file;
    use crate::control::store::{Change, Origin, Scope, Stored};

    #[test]
    fn only_the_one_to_one_triggers_naming_a_deleted_function_in_its_namespace_are_orphans() {
        let yaml = r#"
apiVersion: kubeless.io/v1beta1
kind: CronJobTrigger
metadata: {name: tick, namespace: a}
spec: {function-name: f, schedule: "@hourly"}
---
apiVersion: kubeless.io/v1beta1
kind: CronJobTrigger
metadata: {name: tick, namespace: b}
spec: {function-name: f, schedule: "@hourly"}
---
apiVersion: kubeless.io/v1beta1
kind: KinesisTrigger
metadata: {name: clicks, namespace: a}
spec: {function-name: f, aws-region: us-east-1, stream: s}
---
apiVersion: kubeless.io/v1beta1
kind: HTTPTrigger
metadata: {name: web, namespace: a}
spec: {function-name: other}
---
apiVersion: kubeless.io/v1beta1
kind: KafkaTrigger
metadata: {name: orders, namespace: a}
spec: {topic: t, functionSelector: {matchLabels: {function: f}}}
"#;
        let objects = parse_file(&PathBuf::from("t.yaml"), yaml)
            .into_iter()
            .map(|l| {
                let l = l.expect("valid");
                let origin = Origin::File { file: PathBuf::from("t.yaml"), doc: 1 };
                (l.object, Stored { origin, resource: Ok(l.resource) })
            })
            .collect();
        let mut store = Store::default();
        store.change(Change::Reset(Scope::ALL, objects));
        let gone = BTreeSet::from([ObjectRef::new(Kind::Function, "a", "f")]);
        let names: Vec<String> = orphans(&store, &gone).iter().map(ToString::to_string).collect();
        assert_eq!(names, ["KinesisTrigger a/clicks", "CronJobTrigger a/tick"]);
    }

    #[test]
    fn a_trigger_is_deleted_only_as_the_object_the_store_holds() {
        let yaml = "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: tick, namespace: a}\nspec: {function-name: f, schedule: '@hourly'}\n";
        let loaded = parse_file(&PathBuf::from("t.yaml"), yaml).into_iter().next().expect("one").expect("valid");
        let origin = Origin::Api { uid: "uid-1".into(), generation: Some(1) };
        let mut store = Store::default();
        store.change(Change::Apply(loaded.object.clone(), Box::new(Stored { origin, resource: Ok(loaded.resource) })));
        let params = delete_params(&store, &loaded.object);
        assert_eq!(params.preconditions.and_then(|p| p.uid).as_deref(), Some("uid-1"));
    }
}
