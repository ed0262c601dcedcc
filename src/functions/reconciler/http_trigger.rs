//! The HTTPTrigger reconciler: an HTTPTrigger's Ingress applied to the Function it names (when
//! that Function exists and the policy allows the host and annotations), and its `status` written.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::{
    api_message, error_policy, is_permanent, log_outcome, ready_condition, scoped, Ctx, Error, NOT_READY_RECHECK,
    READY_RECHECK,
};
use crate::functions::ingress::build_ingress;
use crate::functions::objects::CREATED_BY;
use crate::functions::readiness::Readiness;
use crate::policy::pods;
use crate::resources::{Function, HTTPTrigger, TriggerStatus};

pub(super) async fn http_controller(ctx: Arc<Ctx>, ns: Option<String>, term: CancellationToken) {
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

impl Ctx {
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
}
