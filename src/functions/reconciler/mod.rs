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

mod function;
mod http_trigger;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::function::controller;
use self::http_trigger::http_controller;
use super::readiness::Readiness;
use crate::policy::TenancyPolicy;
use crate::resources::{Condition, API_VERSION};

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

/// A reconcile's outcome; failures are already logged by [`error_policy`], the rest (watch
/// errors, objects gone meanwhile) are for debugging.
fn log_outcome<T, E: std::fmt::Display>(result: Result<T, E>) -> futures::future::Ready<()> {
    if let Err(e) = result {
        debug!(error = %e, "reconcile");
    }
    futures::future::ready(())
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
