//! The Function reconciler: a Function's ConfigMap, Service, Deployment and HPA applied (unless
//! the policy refuses them or a child is not kubeless's), its `status` written, and a Function
//! deleted with Kubeless's finalizer released.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{
    api_message, error_policy, ignore_not_found, is_permanent, log_outcome, ready_condition, scoped, Ctx, Error,
    NOT_READY_RECHECK, READY_RECHECK,
};
use crate::functions::objects::{build, Children, FunctionConfig, CREATED_BY};
use crate::functions::readiness::{readiness, Readiness};
use crate::policy::pods;
use crate::resources::{Function, FunctionStatus, KUBELESS_FINALIZER, URL_ANNOTATION};

pub(super) async fn controller(ctx: Arc<Ctx>, ns: Option<String>, term: CancellationToken) {
    let client = ctx.watches.clone();
    let ns = ns.as_deref();
    let owned = watcher::Config::default().labels(&format!("{}={}", CREATED_BY.0, CREATED_BY.1));
    let function_pods = watcher::Config::default().labels(&format!("{}={},function", CREATED_BY.0, CREATED_BY.1));
    let hpas: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ctx.hpa),
        None => Api::all_with(client.clone(), &ctx.hpa),
    };
    // A change of kubeless-config (catalogue, template) re-reconciles every Function.
    let config_api: Api<ConfigMap> = Api::namespaced(client.clone(), &ctx.config.0);
    let config_changes =
        watcher(config_api, watcher::Config::default().fields(&format!("metadata.name={}", ctx.config.1)))
            .touched_objects()
            .filter_map(|r| futures::future::ready(r.ok().map(|_| ())));
    Controller::new(scoped::<Function>(&client, ns), watcher::Config::default())
        .owns(scoped::<ConfigMap>(&client, ns), owned.clone())
        .owns(scoped::<Service>(&client, ns), owned.clone())
        .owns(scoped::<Deployment>(&client, ns), owned.clone())
        .owns_with(hpas, ctx.hpa.clone(), owned)
        // A pod stuck (image pull, crash loop) or recovering changes the Function's readiness.
        .watches(scoped::<Pod>(&client, ns), function_pods, |pod: Pod| {
            let function = pod.labels().get("function").cloned();
            function.map(|name| ObjectRef::new(&name).within(&pod.namespace().unwrap_or_default()))
        })
        .reconcile_all_on(config_changes)
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(log_outcome)
        .await;
}

async fn reconcile(function: Arc<Function>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if function.metadata.deletion_timestamp.is_some() {
        if function.finalizers().iter().any(|f| f == KUBELESS_FINALIZER) {
            ctx.release(&function).await?;
        }
        return Ok(Action::await_change());
    }
    let readiness = match ctx.ensure(&function).await {
        Ok(r) => r,
        Err(Error::Kube(e)) if is_permanent(&e) => Readiness::not("ApplyFailed", api_message(&e)),
        Err(e) => return Err(e),
    };
    let recheck = if readiness.ready { READY_RECHECK } else { NOT_READY_RECHECK };
    ctx.write_status(&function, &readiness).await?;
    Ok(Action::requeue(recheck))
}

impl Ctx {
    /// `kubeless-config`'s settings; without the ConfigMap, the defaults. Any other failure to read
    /// it (throttled, a server error, a timeout, no right to read it) is an error, retried: falling
    /// back to the defaults would roll every Function and turn NodePort Services into ClusterIP.
    async fn function_config(&self) -> Result<Result<FunctionConfig, Readiness>, Error> {
        let (ns, name) = &self.config;
        match self.api::<ConfigMap>(ns).get_opt(name).await {
            Ok(Some(cm)) => Ok(FunctionConfig::from_data(&cm.data.unwrap_or_default())
                .map_err(|e| Readiness::not("InvalidConfig", format!("ConfigMap {ns}/{name} key {e}")))),
            Ok(None) => Ok(Ok(FunctionConfig::default())),
            Err(source) => Err(Error::Config { namespace: ns.clone(), name: name.clone(), source }),
        }
    }

    /// Applies a Function's children and says how ready it is; refusals come back as readiness.
    async fn ensure(&self, function: &Function) -> Result<Readiness, Error> {
        if let Some(url) = function.annotations().get(URL_ANNOTATION) {
            let shown = kubeless_connector::redact_url(url);
            if !self.policy.function_url_allowed(url) {
                return Ok(Readiness::not(
                    "FunctionUrlNotAllowed",
                    format!("{URL_ANNOTATION} {shown} is not among the URLs this cluster lets triggers reach (--function-url-allow); remove it to deploy the function"),
                ));
            }
            return Ok(Readiness {
                ready: true,
                reason: "External".to_string(),
                message: format!("the function runs at {shown} ({URL_ANNOTATION}); nothing is deployed for it"),
            });
        }
        let ns = function.namespace().unwrap_or_default();
        let name = function.name_any();
        let config = match self.function_config().await? {
            Ok(c) => c,
            Err(not) => return Ok(not),
        };
        // Objects read from the API server always have a name and a uid.
        let owner = function.controller_owner_ref(&()).unwrap_or_default();
        let mut children = match build(function, &config, &owner) {
            Ok(c) => c,
            Err(e) => return Ok(Readiness::not(e.reason(), e.to_string())),
        };
        // Nothing is written for a Function asking for more than the cluster's policy allows.
        if let Err(violations) = self.check_policy(function, &mut children) {
            return Ok(Readiness::not("PolicyRefused", pods::describe(&violations)));
        }
        // Nothing is touched if any child exists that kubeless did not create.
        let existing_cm = self.api::<ConfigMap>(&ns).get_opt(&name).await?;
        let existing_svc = self.api::<Service>(&ns).get_opt(&name).await?;
        let existing_dep = self.api::<Deployment>(&ns).get_opt(&name).await?;
        let existing_hpa = self.hpa_api(&ns).get_opt(&name).await?;
        let conflicts = [
            ("ConfigMap", existing_cm.as_ref().map(|o| o.labels())),
            ("Service", existing_svc.as_ref().map(|o| o.labels())),
            ("Deployment", existing_dep.as_ref().map(|o| o.labels())),
            (
                "HorizontalPodAutoscaler",
                existing_hpa.as_ref().filter(|_| children.autoscaler.is_some()).map(|o| o.labels()),
            ),
        ];
        for (kind, labels) in conflicts {
            if labels.is_some_and(|l| l.get(CREATED_BY.0).map(String::as_str) != Some(CREATED_BY.1)) {
                return Ok(Readiness::not(
                    "Conflict",
                    format!("{kind} {ns}/{name} exists and was not created by kubeless (no label {}={}); it is left untouched", CREATED_BY.0, CREATED_BY.1),
                ));
            }
        }
        // A Deployment's selector is immutable: keep the one it was created with.
        if let Some(selector) = existing_dep.as_ref().and_then(|d| d.spec.as_ref()).map(|s| s.selector.clone()) {
            if let Some(spec) = children.deployment.spec.as_mut() {
                let pod_labels = spec
                    .template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(BTreeMap::new);
                pod_labels.extend(selector.match_labels.clone().unwrap_or_default());
                spec.selector = selector;
            }
        }
        let Children { config_map, service, deployment, autoscaler } = children;
        let params = PatchParams::apply(&self.manager).force();
        self.api::<ConfigMap>(&ns).patch(&name, &params, &Patch::Apply(&config_map)).await?;
        self.api::<Service>(&ns).patch(&name, &params, &Patch::Apply(&service)).await?;
        let deployment = self.api::<Deployment>(&ns).patch(&name, &params, &Patch::Apply(&deployment)).await?;
        match autoscaler {
            Some(mut hpa) => {
                hpa["apiVersion"] = json!(self.hpa.api_version);
                hpa["kind"] = json!(self.hpa.kind);
                self.hpa_api(&ns).patch(&name, &params, &Patch::Apply(&hpa)).await?;
            }
            None => {
                if existing_hpa.as_ref().is_some_and(|h| owned_by(h.meta().owner_references.as_deref(), function)) {
                    ignore_not_found(self.hpa_api(&ns).delete(&name, &DeleteParams::default()).await.map(|_| ()))?;
                }
            }
        }
        let pods = self
            .api::<Pod>(&ns)
            .list(&ListParams::default().labels(&format!("function={name},{}={}", CREATED_BY.0, CREATED_BY.1)))
            .await?;
        Ok(readiness(&deployment, &pods.items))
    }

    /// What the Function's author wrote (pod template, Service) against the policy; the pod it
    /// becomes may lose its token mount.
    fn check_policy(&self, function: &Function, children: &mut Children) -> Result<(), Vec<pods::Violation>> {
        let policy = &self.policy.pods;
        let mut violations = Vec::new();
        // `build` has already refused a spec.deployment that is not a Deployment.
        let asked = function.spec.deployment.clone().and_then(|d| serde_json::from_value::<Deployment>(d).ok());
        if let Some(pod) = asked.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.template.spec.as_ref()) {
            violations.extend(policy.check_pod(pod, "spec.deployment.spec.template.spec").err().unwrap_or_default());
        }
        if let Some(service) = &function.spec.service {
            violations.extend(policy.check_service(service).err().unwrap_or_default());
        }
        if let Some(pod) = children.deployment.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            policy.harden(pod);
        }
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }

    /// Writes `status` (server-side apply on the status subresource) if it changed.
    async fn write_status(&self, function: &Function, readiness: &Readiness) -> Result<(), Error> {
        let previous = function.status.clone().unwrap_or_default();
        let url =
            Some(kubeless_connector::redact_url(&crate::control::index::function_url(function, &self.url_template)));
        let status = FunctionStatus {
            conditions: vec![ready_condition(readiness, &previous.conditions)],
            observed_generation: function.metadata.generation,
            url,
        };
        if status == previous {
            return Ok(());
        }
        self.apply_status(function, &status, status.conditions != previous.conditions, readiness).await
    }

    /// A Function deleted with Kubeless's finalizer: delete its children as Kubeless did, then
    /// drop the finalizer so the delete completes.
    async fn release(&self, function: &Function) -> Result<(), Error> {
        let ns = function.namespace().unwrap_or_default();
        let name = function.name_any();
        let background =
            DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
        delete_if_ours(self.api::<Deployment>(&ns), &name, function, &background).await?;
        delete_if_ours(self.api::<Service>(&ns), &name, function, &background).await?;
        delete_if_ours(self.api::<ConfigMap>(&ns), &name, function, &background).await?;
        delete_if_ours(self.hpa_api(&ns), &name, function, &background).await?;
        let finalizers: Vec<&String> = function.finalizers().iter().filter(|f| *f != KUBELESS_FINALIZER).collect();
        // The resourceVersion read makes this a checked write: a finalizer changed meanwhile by
        // another controller fails it (409), and it is retried from a fresh read.
        let patch = json!({"metadata": {
            "finalizers": finalizers,
            "resourceVersion": function.resource_version(),
        }});
        let api: Api<Function> = self.api(&ns);
        ignore_not_found(api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ()))?;
        info!(function = %format!("{ns}/{name}"), "Released a Function deleted with Kubeless's finalizer: its children are deleted.");
        Ok(())
    }
}

/// Deletes child `name` if it is labelled `created-by: kubeless` and is this Function's (by
/// ownerReference, or by the `function` label for objects Kubeless made before it set them).
async fn delete_if_ours<K>(api: Api<K>, name: &str, function: &Function, params: &DeleteParams) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(child) = api.get_opt(name).await? else { return Ok(()) };
    let labels = child.labels();
    let ours = labels.get(CREATED_BY.0).map(String::as_str) == Some(CREATED_BY.1)
        && (owned_by(child.meta().owner_references.as_deref(), function)
            || labels.get("function").map(String::as_str) == Some(name));
    if ours {
        ignore_not_found(api.delete(name, params).await.map(|_| ()))?;
    }
    Ok(())
}

fn owned_by(refs: Option<&[OwnerReference]>, function: &Function) -> bool {
    let uid = function.metadata.uid.as_deref().unwrap_or_default();
    refs.unwrap_or_default().iter().any(|r| r.kind == "Function" && r.uid == uid)
}
