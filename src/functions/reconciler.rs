//! The Function and HTTPTrigger reconcilers (Kubernetes mode, leader only): kube-runtime
//! `Controller`s over Functions, which also watch the ConfigMaps, Services, Deployments and HPAs
//! they own, and over HTTPTriggers, which also watch their Ingresses and the Functions they name;
//! so a child edited or deleted by hand is put back. Every write is server-side apply with one field
//! manager, forced (this controller owns what it sets); a child that exists without
//! `created-by: kubeless` is reported and never touched, as Kubeless did.
//!
//! Functions still carrying Kubeless's finalizer are released when deleted: their children are
//! deleted and the finalizer dropped, so the delete does not hang. New Functions get no
//! finalizer: ownerReferences (`controller: true`) let the garbage collector cascade.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ingress::build_ingress;
use super::objects::{build, Children, FunctionConfig, CREATED_BY};
use super::readiness::{readiness, Readiness};
use crate::policy::{pods, TenancyPolicy};
use crate::resources::{
    Condition, Function, FunctionStatus, HTTPTrigger, TriggerStatus, API_VERSION, KUBELESS_FINALIZER, URL_ANNOTATION,
};

/// Readiness reasons that are the cluster policy's refusals, each reported by a Warning Event.
const POLICY_REASONS: [&str; 2] = ["PolicyRefused", "FunctionUrlNotAllowed"];

/// Where `kubeless-config` is when neither the environment nor the CRD says.
pub const DEFAULT_CONFIG: (&str, &str) = ("kubeless", "kubeless-config");
/// A Function or HTTPTrigger not ready is looked at again this often. Changes of what it owns,
/// of its pods and of `kubeless-config` trigger a reconcile at once; this catches the rest (a
/// conflicting object, which carries no reference to the Function, deleted by hand).
const NOT_READY_RECHECK: Duration = Duration::from_secs(60);
/// A ready one, this often.
const READY_RECHECK: Duration = Duration::from_secs(300);

/// What the reconciler is told at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub field_manager: String,
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    /// The broker's function URL template, for `status.url`.
    pub url_template: String,
    /// `KUBELESS_NAMESPACE` and `KUBELESS_CONFIG`, where set.
    pub config_namespace: Option<String>,
    pub config_name: Option<String>,
    /// `--acme-cluster-issuer`, for HTTPTriggers with `tls: true`.
    pub acme_cluster_issuer: Option<String>,
    /// What Functions and HTTPTriggers may ask for.
    pub policy: TenancyPolicy,
}

/// An API error: a 4xx other than a conflict or throttling will not pass on retry.
fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409 && s.code != 429)
}

/// The API server's own words for a refusal, without the debug dump.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("the API server refused a write ({} {}): {}", s.code, s.reason, s.message),
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// `kubeless-config` could not be read (other than not existing): nothing is written until it
    /// can, so no Function rolls or changes Service type on a passing API error.
    #[error("cannot read ConfigMap {namespace}/{name} (kubeless-config); the Function's objects are left as they are: {source}")]
    Config { namespace: String, name: String, source: kube::Error },
}

/// The controller's shared state.
struct Ctx {
    /// For reads and writes (each with a deadline).
    client: Client,
    /// For the controllers' watches.
    watches: Client,
    manager: String,
    url_template: String,
    config: (String, String),
    acme_cluster_issuer: Option<String>,
    /// `autoscaling/v2`, or `v2beta2` where the server has no v2 (before 1.23).
    hpa: ApiResource,
    policy: TenancyPolicy,
    /// Warning Events for what the policy refuses.
    recorder: Recorder,
}

/// Runs the reconciler whenever this replica leads, until `stop`.
pub async fn run(
    clients: crate::kubernetes::Clients,
    settings: Settings,
    mut leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            led = leading.wait_for(|l| *l) => if led.is_err() { return },
            () = stop.cancelled() => return,
        }
        let term = stop.child_token();
        let follower = tokio::spawn({
            let (term, mut leading) = (term.clone(), leading.clone());
            async move {
                tokio::select! {
                    _ = leading.wait_for(|l| !*l) => {}
                    () = term.cancelled() => {}
                }
                term.cancel();
            }
        });
        let Some(ctx) = Ctx::new(clients.clone(), &settings, &term).await.map(Arc::new) else {
            let _ = follower.await;
            if stop.is_cancelled() {
                return;
            }
            continue;
        };
        info!(hpa = %ctx.hpa.api_version, config = %format!("{}/{}", ctx.config.0, ctx.config.1), "Function and HTTPTrigger reconcilers starting (this replica leads).");
        let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
            vec![None]
        } else {
            settings.namespaces.iter().cloned().map(Some).collect()
        };
        let functions = scopes.iter().map(|ns| controller(ctx.clone(), ns.clone(), term.clone()).boxed());
        let triggers = scopes.iter().map(|ns| http_controller(ctx.clone(), ns.clone(), term.clone()).boxed());
        futures::future::join_all(functions.chain(triggers)).await;
        term.cancel();
        let _ = follower.await;
        if stop.is_cancelled() {
            return;
        }
        info!("Function and HTTPTrigger reconcilers stopped (leadership lost); waiting to lead again.");
    }
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn controller(ctx: Arc<Ctx>, ns: Option<String>, term: CancellationToken) {
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

/// A reconcile's outcome; failures are already logged by [`error_policy`], the rest (watch
/// errors, objects gone meanwhile) are for debugging.
fn log_outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> futures::future::Ready<()> {
    if let Err(e) = result {
        debug!(error = %e, "reconcile");
    }
    futures::future::ready(())
}

async fn http_controller(ctx: Arc<Ctx>, ns: Option<String>, term: CancellationToken) {
    let client = ctx.watches.clone();
    let ns = ns.as_deref();
    let owned = watcher::Config::default().labels(&format!("{}={}", CREATED_BY.0, CREATED_BY.1));
    let controller = Controller::new(scoped::<HTTPTrigger>(&client, ns), watcher::Config::default());
    let triggers = controller.store();
    // A Function appearing, or its port changing, re-reconciles the triggers naming it.
    let naming = move |f: Function| {
        let (namespace, name) = (f.namespace(), f.name_any());
        triggers
            .state()
            .into_iter()
            .filter(|t| t.namespace() == namespace && t.spec.function_name == name)
            .map(|t| ObjectRef::from_obj(&*t))
            .collect::<Vec<_>>()
    };
    controller
        .owns(scoped::<Ingress>(&client, ns), owned)
        .watches(scoped::<Function>(&client, ns), watcher::Config::default(), naming)
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile_http, error_policy, ctx)
        .for_each(log_outcome)
        .await;
}

async fn reconcile_http(trigger: Arc<HTTPTrigger>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if trigger.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let readiness = match ctx.ensure_ingress(&trigger).await {
        Ok(r) => r,
        Err(Error::Kube(e)) if is_permanent(&e) => Readiness::not("ApplyFailed", api_message(&e)),
        Err(e) => return Err(e),
    };
    let previous = trigger.status.clone().unwrap_or_default();
    let status = TriggerStatus {
        conditions: vec![ready_condition(&readiness, &previous.conditions)],
        observed_generation: trigger.metadata.generation,
        ..TriggerStatus::default()
    };
    if status != previous {
        ctx.apply_status(&*trigger, &status, status.conditions != previous.conditions, &readiness).await?;
    }
    Ok(if readiness.ready { Action::requeue(READY_RECHECK) } else { Action::requeue(NOT_READY_RECHECK) })
}

/// The `Ready` condition for `readiness`, keeping the previous transition time while it holds.
fn ready_condition(readiness: &Readiness, previous: &[Condition]) -> Condition {
    let status = if readiness.ready { "True" } else { "False" };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Condition::ready(status, &readiness.reason, readiness.message.clone(), previous, &now)
}

fn error_policy<K: Resource<DynamicType = ()>>(object: Arc<K>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    let who = format!("{} {}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any());
    warn!(object = %who, %error, "Reconcile failed; retrying in 5s.");
    Action::requeue(Duration::from_secs(5))
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
    /// `None` if `term` fires before the API server could be asked which HPA version it serves.
    async fn new(clients: crate::kubernetes::Clients, settings: &Settings, term: &CancellationToken) -> Option<Self> {
        let crate::kubernetes::Clients { calls: client, watches } = clients;
        let config =
            config_location(&client, settings.config_namespace.as_deref(), settings.config_name.as_deref()).await;
        let hpa = autoscaling_version(&client, term).await?;
        let reporter = Reporter { controller: settings.field_manager.clone(), instance: None };
        Some(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            watches,
            manager: settings.field_manager.clone(),
            url_template: settings.url_template.clone(),
            config,
            acme_cluster_issuer: settings.acme_cluster_issuer.clone(),
            hpa,
            policy: settings.policy.clone(),
        })
    }

    fn api<K>(&self, ns: &str) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    fn hpa_api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.hpa)
    }

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

    /// Applies `status` to `object`'s status subresource, logging a change of condition.
    async fn apply_status<K, S>(
        &self,
        object: &K,
        status: &S,
        changed: bool,
        readiness: &Readiness,
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize,
    {
        let kind = K::kind(&());
        if changed {
            let who = format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
            if readiness.ready || readiness.reason == "Deploying" {
                info!(object = %format!("{kind} {who}"), reason = %readiness.reason, "{}", readiness.message);
            } else {
                warn!(object = %format!("{kind} {who}"), reason = %readiness.reason, "Not ready: {}", readiness.message);
            }
            if POLICY_REASONS.contains(&readiness.reason.as_str()) {
                let event = Event {
                    type_: EventType::Warning,
                    reason: readiness.reason.clone(),
                    note: Some(readiness.message.chars().take(1024).collect()),
                    action: "Reconcile".to_string(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
                    warn!(object = %format!("{kind} {who}"), error = %e, "Cannot record the policy Event.");
                }
            }
        }
        let patch = json!({"apiVersion": API_VERSION, "kind": kind, "status": status});
        let api: Api<K> = self.api(&object.namespace().unwrap_or_default());
        let params = PatchParams::apply(&self.manager).force();
        ignore_not_found(api.patch_status(&object.name_any(), &params, &Patch::Apply(&patch)).await.map(|_| ()))?;
        Ok(())
    }

    /// Applies an HTTPTrigger's Ingress and says whether it is exposed.
    async fn ensure_ingress(&self, trigger: &HTTPTrigger) -> Result<Readiness, Error> {
        if let Err(errors) = trigger.validate() {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return Ok(Readiness::not("InvalidSpec", message));
        }
        let ns = trigger.namespace().unwrap_or_default();
        let name = trigger.name_any();
        let function_name = &trigger.spec.function_name;
        let Some(function) = self.api::<Function>(&ns).get_opt(function_name).await? else {
            return Ok(Readiness::not(
                "FunctionNotFound",
                format!("Function {ns}/{function_name} does not exist; the Ingress is made when it does"),
            ));
        };
        let user_annotations = trigger.metadata.annotations.clone().unwrap_or_default();
        if let Err(violations) = self.policy.pods.check_ingress(&user_annotations, &trigger.spec.host_name) {
            return Ok(Readiness::not("PolicyRefused", pods::describe(&violations)));
        }
        let owner = trigger.controller_owner_ref(&()).unwrap_or_default();
        let ingress = match build_ingress(trigger, &function, self.acme_cluster_issuer.as_deref(), &owner) {
            Ok(i) => i,
            Err(e) => return Ok(Readiness::not("InvalidSpec", e.to_string())),
        };
        let api = self.api::<Ingress>(&ns);
        if let Some(existing) = api.get_opt(&name).await? {
            if existing.labels().get(CREATED_BY.0).map(String::as_str) != Some(CREATED_BY.1) {
                return Ok(Readiness::not(
                    "Conflict",
                    format!("Ingress {ns}/{name} exists and was not created by kubeless (no label {}={}); it is left untouched", CREATED_BY.0, CREATED_BY.1),
                ));
            }
        }
        api.patch(&name, &PatchParams::apply(&self.manager).force(), &Patch::Apply(&ingress)).await?;
        let scheme = if ingress.spec.as_ref().is_some_and(|s| s.tls.is_some()) { "https" } else { "http" };
        let host = if trigger.spec.host_name.is_empty() { "*" } else { trigger.spec.host_name.as_str() };
        Ok(Readiness {
            ready: true,
            reason: "Exposed".to_string(),
            message: format!(
                "Ingress {ns}/{name} routes {scheme}://{host}/{} to Service {function_name} port {}",
                trigger.spec.path.trim_start_matches('/'),
                function.port()
            ),
        })
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

fn ignore_not_found<T: Default>(r: Result<T, kube::Error>) -> Result<T, Error> {
    match r {
        Err(e) if is_not_found(&e) => Ok(T::default()),
        other => Ok(other?),
    }
}

/// Where `kubeless-config` is, as Kubeless looked: the environment, then the Function CRD's
/// `kubeless.io/namespace` and `kubeless.io/config` annotations, then `kubeless/kubeless-config`.
pub async fn config_location(
    client: &Client,
    config_namespace: Option<&str>,
    config_name: Option<&str>,
) -> (String, String) {
    let crd = if config_namespace.is_some() && config_name.is_some() {
        None
    } else {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        api.get_opt("functions.kubeless.io").await.ok().flatten()
    };
    let annotation = |key: &str| crd.as_ref().and_then(|c| c.annotations().get(key).cloned()).filter(|v| !v.is_empty());
    let namespace = config_namespace
        .map(str::to_string)
        .or_else(|| annotation("kubeless.io/namespace"))
        .unwrap_or_else(|| DEFAULT_CONFIG.0.to_string());
    let name = config_name
        .map(str::to_string)
        .or_else(|| annotation("kubeless.io/config"))
        .unwrap_or_else(|| DEFAULT_CONFIG.1.to_string());
    (namespace, name)
}

/// `autoscaling/v2` if the server serves it, else `autoscaling/v2beta2` (Kubernetes < 1.23).
/// Asked until the API server answers: guessing while it is unreachable could pick a version a
/// newer server no longer has.
async fn autoscaling_version(client: &Client, term: &CancellationToken) -> Option<ApiResource> {
    let version = loop {
        match client.list_api_group_resources("autoscaling/v2").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "horizontalpodautoscalers") => break "v2",
            Ok(_) => break "v2beta2",
            Err(e) if is_not_found(&e) => break "v2beta2",
            Err(e) => {
                warn!(error = %e, "Cannot ask the API server which autoscaling version it serves; retrying in 2s.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    () = term.cancelled() => return None,
                }
            }
        }
    };
    Some(ApiResource {
        group: "autoscaling".to_string(),
        version: version.to_string(),
        api_version: format!("autoscaling/{version}"),
        kind: "HorizontalPodAutoscaler".to_string(),
        plural: "horizontalpodautoscalers".to_string(),
    })
}
