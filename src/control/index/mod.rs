//! The desired state: from the valid resources, every consumer that should run. Pure and
//! synchronous, so boot and every change go through the same diff (see `supervisor`).

mod cron;
mod kafka;
mod kinesis;
mod nats;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{Selector, SelectorExt};
use kubeless_kafka::Properties;

use super::spec::local_url;
pub use super::spec::{ConsumerSpec, CronSource, SourceSpec};
use super::store::LocalState;

use self::cron::cron_consumer;
use self::kafka::{kafka_consumers, refuse_taken_groups};
use self::kinesis::kinesis_consumer;
use self::nats::nats_consumers;
use super::store::Store;
use crate::policy::TenancyPolicy;
use crate::resources::{DeliveryPolicy, Function, Kind, ObjectRef, Resource, URL_ANNOTATION};

/// Kubeless's consumer-group id: `<ns>_<trigger>_<function>_<topic>`.
pub const DEFAULT_GROUP_TEMPLATE: &str = "{namespace}_{trigger}_{function}_{topic}";
/// Where a function is reached when it has no `kubeless.io/url` annotation.
pub const DEFAULT_URL_TEMPLATE: &str = "http://{name}.{namespace}.svc.cluster.local:{port}";
pub const KAFKA_EVENT_NAMESPACE: &str = "kafkatriggers.kubeless.io";
/// Singular, as Kubeless sent it (its other triggers use the plural resource name).
pub const CRON_EVENT_NAMESPACE: &str = "cronjobtrigger.kubeless.io";
pub const NATS_EVENT_NAMESPACE: &str = "natstriggers.kubeless.io";
pub const KINESIS_EVENT_NAMESPACE: &str = "kinesistriggers.kubeless.io";

/// Process-wide settings the index needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSettings {
    /// Brokers for triggers without `spec.brokers` (env `KAFKA_BROKERS`).
    pub kafka_brokers: String,
    pub url_template: String,
    /// librdkafka properties for every client of the daemon's own brokers (security, session
    /// timeout…); other brokers get only those that are not security properties.
    pub kafka_properties: Properties,
    pub drain_timeout: Duration,
    /// Where the scheduler remembers fired ticks.
    pub state_dir: PathBuf,
    /// NATS server for triggers without `spec.url` (env `NATS_URL`).
    pub nats_url: String,
    /// Kubeless's `BACKOFF_INTERVAL`: the longest wait between retries of a trigger that sets no
    /// `delivery.retry.maxBackoff`.
    pub default_max_backoff: Option<Duration>,
    /// What trigger authors may ask of the daemon.
    pub policy: TenancyPolicy,
    /// Standalone mode: a Function without `kubeless.io/url` is run by the daemon itself and
    /// reached where its process answers (`--local-functions`).
    pub local_functions: bool,
}

impl IndexSettings {
    /// A trigger's delivery policy with the daemon-wide defaults filled in.
    pub fn with_defaults(&self, policy: &DeliveryPolicy) -> DeliveryPolicy {
        let mut policy = policy.clone();
        if let Some(max) = self.default_max_backoff.filter(|_| !policy.retry.max_backoff_set) {
            policy.retry.max_backoff = max;
            policy.retry.initial_backoff = policy.retry.initial_backoff.min(max);
        }
        policy
    }
}

/// Why a valid trigger runs no consumer, as the `reason` of its `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// `spec.functionSelector` is not a valid selector.
    BadSelector,
    /// A Secret the trigger names is missing or lacks a key.
    SecretNotFound,
    /// One consumer group would be shared by several functions.
    SharedConsumerGroup,
    /// The selector matches no Function (not an error: one may be added later).
    NoFunctionSelected,
    /// The Function a Kinesis or cron trigger names does not exist (yet).
    FunctionNotFound,
    /// Brokers or a server the admin does not let triggers name.
    BrokersNotAllowed,
    /// Another trigger (created first) already uses the consumer group.
    ConsumerGroupTaken,
    /// A dead-letter topic outside those the admin allows.
    DeadLetterNotAllowed,
    /// A Function's `kubeless.io/url` outside the admin's allow-list.
    FunctionUrlNotAllowed,
    /// The trigger must bring its own credentials (a Kinesis Secret).
    CredentialsRequired,
    /// An endpoint override the admin does not allow.
    EndpointNotAllowed,
    /// More than the admin's ceilings allow (in flight, uncommitted, topics, functions, cron rate).
    LimitExceeded,
    /// A topic or subject the admin does not let this namespace read.
    TopicNotAllowed,
    /// A local function is being prepared or started (not an error: it will serve soon).
    FunctionStarting,
    /// A local function did not start: its runtime is missing, its dependencies did not install,
    /// or it exited before answering `/healthz`.
    FunctionNotRunning,
    /// A Function the daemon cannot run itself as written (and that names no `kubeless.io/url`).
    FunctionNotRunnable,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadSelector => "BadSelector",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SharedConsumerGroup => "SharedConsumerGroup",
            Reason::NoFunctionSelected => "NoFunctionSelected",
            Reason::FunctionNotFound => "FunctionNotFound",
            Reason::BrokersNotAllowed => "BrokersNotAllowed",
            Reason::ConsumerGroupTaken => "ConsumerGroupTaken",
            Reason::DeadLetterNotAllowed => "DeadLetterNotAllowed",
            Reason::FunctionUrlNotAllowed => "FunctionUrlNotAllowed",
            Reason::CredentialsRequired => "CredentialsRequired",
            Reason::EndpointNotAllowed => "EndpointNotAllowed",
            Reason::LimitExceeded => "LimitExceeded",
            Reason::TopicNotAllowed => "TopicNotAllowed",
            Reason::FunctionStarting => "FunctionStarting",
            Reason::FunctionNotRunning => "FunctionNotRunning",
            Reason::FunctionNotRunnable => "FunctionNotRunnable",
        }
    }

    /// Refused by the admin's policy: worth a Warning Event on the trigger.
    pub fn is_policy(self) -> bool {
        matches!(
            self,
            Reason::BrokersNotAllowed
                | Reason::ConsumerGroupTaken
                | Reason::DeadLetterNotAllowed
                | Reason::FunctionUrlNotAllowed
                | Reason::CredentialsRequired
                | Reason::EndpointNotAllowed
                | Reason::LimitExceeded
                | Reason::TopicNotAllowed
        )
    }

    /// Waiting for a Function rather than wrong.
    pub fn is_idle(self) -> bool {
        matches!(self, Reason::NoFunctionSelected | Reason::FunctionNotFound | Reason::FunctionStarting)
    }
}

/// A trigger that is valid on its own but cannot run as written (or has nothing to deliver to).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TriggerProblem {
    pub trigger: ObjectRef,
    pub reason: Reason,
    pub problem: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub consumers: BTreeMap<String, ConsumerSpec>,
    pub problems: Vec<TriggerProblem>,
    /// Valid resources of kinds this build does not run yet.
    pub unserved: Vec<ObjectRef>,
}

impl Desired {
    /// The problem that keeps `trigger` from running, if any.
    pub fn problem_of(&self, trigger: &ObjectRef) -> Option<&TriggerProblem> {
        self.problems.iter().find(|p| p.trigger == *trigger)
    }
}

/// Secret contents by (namespace, name): `data` decoded, `stringData` merged over it.
type Secrets = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

fn secrets_of(store: &Store) -> Secrets {
    store
        .resources()
        .filter_map(|(_, r)| match r {
            Resource::Secret(s) => Some(s),
            _ => None,
        })
        .map(|s| {
            let key = (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default());
            (key, secret_data(s))
        })
        .collect()
}

/// A Secret's keys: `data`, with `stringData` (as a manifest may carry it) winning, as the API
/// server merges them.
pub fn secret_data(s: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = s.data.iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect();
    data.extend(s.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    data
}

/// One key of a Secret as text.
fn secret_text(secrets: &Secrets, ns: &str, name: &str, key: &str) -> Option<String> {
    let value = secrets.get(&(ns.to_string(), name.to_string()))?.get(key)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// Every consumer the valid resources of `store` call for, and why the triggers that run none
/// do not.
pub fn desired(store: &Store, settings: &IndexSettings) -> Desired {
    let mut out = Desired::default();
    let secrets = secrets_of(store);
    let functions: Vec<&Function> = store
        .resources()
        .filter_map(|(_, r)| match r {
            Resource::Function(f) => Some(f),
            _ => None,
        })
        .collect();
    // When each trigger was created: the first ones keep a shared group, and a namespace's
    // triggers past the admin's ceiling are the latest ones.
    let created: BTreeMap<ObjectRef, Option<Time>> =
        store.resources().filter_map(|(o, r)| created_at(r).map(|t| (o.clone(), t))).collect();
    let crowded = if settings.policy.enforced {
        past_namespace_ceiling(&created, settings.policy.limits.max_triggers_per_namespace)
    } else {
        BTreeSet::new()
    };
    for (object, resource) in store.resources() {
        if crowded.contains(object) {
            let why = format!(
                "namespace {} has more than {} triggers, this cluster's ceiling (--max-triggers-per-namespace); this one is among the latest created",
                object.namespace, settings.policy.limits.max_triggers_per_namespace
            );
            out.problems.push(problem(object, Reason::LimitExceeded, why));
            continue;
        }
        let ctx = Ctx { store, functions: &functions, secrets: &secrets, settings };
        match resource {
            Resource::Function(_) | Resource::Secret(_) => {}
            Resource::Kafka(trigger, policy) => kafka_consumers(trigger, policy, &ctx, &mut out),
            Resource::CronJob(trigger, policy) => cron_consumer(trigger, policy, &ctx, &mut out),
            Resource::Nats(trigger, policy) => nats_consumers(trigger, policy, &ctx, &mut out),
            Resource::Kinesis(trigger, policy) => kinesis_consumer(trigger, policy, &ctx, &mut out),
            Resource::Http(_) => out.unserved.push(object.clone()),
        }
    }
    if settings.policy.enforced {
        refuse_taken_groups(&created, &mut out);
    }
    out
}

/// A consuming trigger's creation time (`None` inside: not known, as in a manifest file).
fn created_at(resource: &Resource) -> Option<Option<Time>> {
    let meta = match resource {
        Resource::Kafka(t, _) => &t.metadata,
        Resource::Nats(t, _) => &t.metadata,
        Resource::Kinesis(t, _) => &t.metadata,
        Resource::CronJob(t, _) => &t.metadata,
        Resource::Function(_) | Resource::Secret(_) | Resource::Http(_) => return None,
    };
    Some(meta.creation_timestamp.clone())
}

/// The triggers of each namespace past the first `ceiling` by creation time: one team's many
/// triggers cannot take every share of the memory budget or every consumer thread.
fn past_namespace_ceiling(created: &BTreeMap<ObjectRef, Option<Time>>, ceiling: usize) -> BTreeSet<ObjectRef> {
    let mut by_namespace: BTreeMap<&str, Vec<(Option<&Time>, &ObjectRef)>> = BTreeMap::new();
    for (object, time) in created {
        by_namespace.entry(object.namespace.as_str()).or_default().push((time.as_ref(), object));
    }
    let mut out = BTreeSet::new();
    for mut triggers in by_namespace.into_values() {
        triggers.sort();
        out.extend(triggers.into_iter().skip(ceiling).map(|(_, o)| o.clone()));
    }
    out
}

/// What every trigger's consumers are built from.
struct Ctx<'a> {
    store: &'a Store,
    functions: &'a [&'a Function],
    secrets: &'a Secrets,
    settings: &'a IndexSettings,
}

impl Ctx<'_> {
    fn policy(&self) -> &TenancyPolicy {
        &self.settings.policy
    }
}

fn problem(trigger: &ObjectRef, reason: Reason, problem: String) -> TriggerProblem {
    TriggerProblem { trigger: trigger.clone(), reason, problem }
}

/// Why `value` (of `field`) is refused: none of the admin's `patterns` (set by `flag`) matches it
/// for this namespace, or it is one of NATS's own subjects.
fn not_allowed(field: &str, value: &str, ns: &str, patterns: &[String], flag: &str) -> String {
    format!(
        "{field} {value:?} is not one this namespace may use (allowed: {}; never NATS's own $… or _INBOX… subjects; {flag})",
        patterns.join(", ").replace("{namespace}", ns)
    )
}

/// The admin's ceilings on a trigger's delivery settings.
fn over_limits(policy: &DeliveryPolicy, tenancy: &TenancyPolicy) -> Option<String> {
    let limits = &tenancy.limits;
    if !tenancy.enforced {
        return None;
    }
    if policy.max_in_flight > limits.max_in_flight {
        return Some(format!(
            "spec.delivery.maxInFlight {} is above this cluster's ceiling of {} (--max-in-flight)",
            policy.max_in_flight, limits.max_in_flight
        ));
    }
    if policy.max_uncommitted > limits.max_uncommitted {
        return Some(format!(
            "spec.delivery.maxUncommitted {} is above this cluster's ceiling of {} (--max-uncommitted)",
            policy.max_uncommitted, limits.max_uncommitted
        ));
    }
    None
}

/// Where a trigger reaches `function`, if the policy lets it: a `kubeless.io/url` outside the
/// admin's allow-list is reported on the trigger and the function is skipped.
fn reach(function: &Function, trigger: &ObjectRef, ctx: &Ctx<'_>, out: &mut Desired) -> Option<String> {
    let annotated = function.url().is_some();
    if ctx.settings.local_functions && !annotated {
        return reach_local(function, trigger, ctx, out);
    }
    let url = function_url(function, &ctx.settings.url_template);
    if annotated && !ctx.policy().function_url_allowed(&url) {
        let why = format!(
            "Function {}/{}: {URL_ANNOTATION} {} is not among the URLs this cluster lets triggers reach (--function-url-allow); without the annotation the function is reached at its Service",
            function.metadata.namespace.as_deref().unwrap_or_default(),
            function.metadata.name.as_deref().unwrap_or_default(),
            kubeless_connector::redact_url(&url),
        );
        out.problems.push(problem(trigger, Reason::FunctionUrlNotAllowed, why));
        return None;
    }
    Some(url)
}

/// A function the daemon runs itself: reached once a process of it serves; until then the
/// trigger waits (starting) or says why it cannot run.
fn reach_local(function: &Function, trigger: &ObjectRef, ctx: &Ctx<'_>, out: &mut Desired) -> Option<String> {
    let ns = function.metadata.namespace.as_deref().unwrap_or_default();
    let name = function.metadata.name.as_deref().unwrap_or_default();
    let (reason, why) = match ctx.store.local(&ObjectRef::new(Kind::Function, ns, name)) {
        Some(LocalState::Serving) => return Some(local_url(ns, name)),
        Some(LocalState::Starting) | None => (
            Reason::FunctionStarting,
            format!("Function {ns}/{name} is starting locally (dependencies, then its /healthz)"),
        ),
        Some(LocalState::Failed(why)) => {
            (Reason::FunctionNotRunning, format!("Function {ns}/{name} does not run locally: {why}"))
        }
        Some(LocalState::Unrunnable(why)) => (
            Reason::FunctionNotRunnable,
            format!("Function {ns}/{name} cannot run locally: {why}; give it a {URL_ANNOTATION} annotation instead"),
        ),
    };
    out.problems.push(problem(trigger, reason, why));
    None
}

/// The functions in the trigger's namespace that its selector matches. A bad selector is reported
/// as a problem and a selector matching nothing as an idle trigger; both give `None`.
fn selected<'a>(
    label: ObjectRef,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    ns: &str,
    ctx: &Ctx<'a>,
    out: &mut Desired,
) -> Option<Vec<&'a Function>> {
    let functions = ctx.functions;
    let selector = match selector.cloned().map(Selector::try_from)? {
        Ok(s) => s,
        Err(e) => {
            let problem = format!("spec.functionSelector: {}", e.0);
            out.problems.push(TriggerProblem { trigger: label, reason: Reason::BadSelector, problem });
            return None;
        }
    };
    let matched: Vec<&Function> = functions
        .iter()
        .copied()
        .filter(|f| f.metadata.namespace.as_deref() == Some(ns))
        .filter(|f| selector.matches(f.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .collect();
    if matched.is_empty() {
        let problem = format!("spec.functionSelector matches no Function in namespace {ns}");
        out.problems.push(TriggerProblem { trigger: label, reason: Reason::NoFunctionSelected, problem });
        return None;
    }
    let tenancy = ctx.policy();
    if tenancy.enforced && matched.len() > tenancy.limits.max_functions {
        let problem = format!(
            "spec.functionSelector matches {} Functions; this cluster's ceiling is {} per trigger (--max-functions-per-trigger)",
            matched.len(),
            tenancy.limits.max_functions
        );
        out.problems.push(TriggerProblem { trigger: label, reason: Reason::LimitExceeded, problem });
        return None;
    }
    Some(matched)
}

/// The Function a 1:1 trigger (Kinesis, cron) names, in the trigger's namespace; `None` (reported
/// as idle) if it does not exist.
fn named_function<'a>(trigger: ObjectRef, fname: &str, ctx: &Ctx<'a>, out: &mut Desired) -> Option<&'a Function> {
    let ns = trigger.namespace.as_str();
    let found = ctx
        .functions
        .iter()
        .copied()
        .find(|f| f.metadata.namespace.as_deref() == Some(ns) && f.metadata.name.as_deref() == Some(fname));
    if found.is_none() {
        let problem = format!("spec.function-name: Function {ns}/{fname} does not exist");
        out.problems.push(TriggerProblem { trigger, reason: Reason::FunctionNotFound, problem });
    }
    found
}

/// The `kubeless.io/url` annotation if set, else the template with `{name}`, `{namespace}` and
/// `{port}` filled in.
pub fn function_url(function: &Function, template: &str) -> String {
    if let Some(url) = function.url() {
        return url.to_string();
    }
    template
        .replace("{name}", function.metadata.name.as_deref().unwrap_or_default())
        .replace("{namespace}", function.metadata.namespace.as_deref().unwrap_or_default())
        .replace("{port}", &function.port().to_string())
}

#[cfg(test)]
mod tests;
