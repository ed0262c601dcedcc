//! The desired state: from the valid resources, every consumer that should run. Pure and
//! synchronous, so boot and every change go through the same diff (see `supervisor`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::{Selector, SelectorExt};
use kubeless_kafka::{InitialOffset, KafkaSourceConfig, Properties};
use kubeless_kinesis::{KinesisSourceConfig, StartingPosition};
use kubeless_nats::{NatsAuth, NatsSourceConfig};

pub use super::spec::{ConsumerSpec, CronSource, SourceSpec};

use super::store::Store;
use crate::policy::{broker_list, same_brokers, TenancyPolicy};
use crate::resources::{
    CronJobTrigger, DeadLetterTarget, DeliveryPolicy, Function, InitialOffsetSpec, KafkaTrigger, Kind, KinesisTrigger,
    NATSTrigger, ObjectRef, Resource, StartingPositionSpec, URL_ANNOTATION,
};

/// Kubeless's consumer-group id: `<ns>_<trigger>_<function>_<topic>`.
pub const DEFAULT_GROUP_TEMPLATE: &str = "{namespace}_{trigger}_{function}_{topic}";
/// Where a function is reached when it has no `kubeless.io/url` annotation.
pub const DEFAULT_URL_TEMPLATE: &str = "http://{name}.{namespace}.svc.cluster.local:{port}";
pub const KAFKA_EVENT_NAMESPACE: &str = "kafkatriggers.kubeless.io";
/// Singular, as Kubeless sent it (its other triggers use the plural resource name).
pub const CRON_EVENT_NAMESPACE: &str = "cronjobtrigger.kubeless.io";
pub const NATS_EVENT_NAMESPACE: &str = "natstriggers.kubeless.io";
pub const KINESIS_EVENT_NAMESPACE: &str = "kinesistriggers.kubeless.io";
/// Pause between `GetRecords` calls on an idle shard (Kubeless polled every 250 ms).
const KINESIS_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A JetStream message is redelivered if not acknowledged this long after a request would have
/// timed out.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(5);

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
        matches!(self, Reason::NoFunctionSelected | Reason::FunctionNotFound)
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

/// NATS credentials from `spec.auth.secret`: `token`, or `user` + `password`, or `creds`.
fn nats_auth(secrets: &Secrets, ns: &str, name: &str) -> Result<NatsAuth, String> {
    if !secrets.contains_key(&(ns.to_string(), name.to_string())) {
        return Err(format!(
            "spec.auth.secret: Secret {ns}/{name} not found (in standalone mode, add a v1 Secret manifest)"
        ));
    }
    let get = |k: &str| secret_text(secrets, ns, name, k);
    if let Some(token) = get("token") {
        Ok(NatsAuth::Token(token))
    } else if let (Some(user), Some(password)) = (get("user"), get("password")) {
        Ok(NatsAuth::UserPassword(user, password))
    } else if let Some(creds) = get("creds") {
        Ok(NatsAuth::Credentials(creds))
    } else {
        Err(format!("spec.auth.secret: Secret {ns}/{name} has none of the keys token, user and password, or creds"))
    }
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
        let ctx = Ctx { functions: &functions, secrets: &secrets, settings };
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

/// A Kafka consumer group belongs to the trigger created first among those that would join it
/// on the same brokers; the others are refused whole, and the first keeps running untouched.
fn refuse_taken_groups(created: &BTreeMap<ObjectRef, Option<Time>>, out: &mut Desired) {
    // (brokers, group) → (created, trigger) of the first trigger using it.
    type GroupKey = (Vec<String>, String);
    let mut owner: BTreeMap<GroupKey, (Option<&Time>, ObjectRef)> = BTreeMap::new();
    for spec in out.consumers.values() {
        let SourceSpec::Kafka(k) = &spec.source else { continue };
        let trigger = spec.trigger_ref();
        let candidate = (created.get(&trigger).and_then(Option::as_ref), trigger);
        let slot = owner.entry((broker_list(&k.brokers), k.group_id.clone())).or_insert_with(|| candidate.clone());
        if candidate < *slot {
            *slot = candidate;
        }
    }
    let mut refused: BTreeMap<ObjectRef, String> = BTreeMap::new();
    for spec in out.consumers.values() {
        let SourceSpec::Kafka(k) = &spec.source else { continue };
        let trigger = spec.trigger_ref();
        let Some((_, first)) = owner.get(&(broker_list(&k.brokers), k.group_id.clone())) else { continue };
        if *first != trigger {
            refused.entry(trigger).or_insert_with(|| {
                format!(
                    "consumer group {:?} is already used by {first}, created first; name another spec.consumerGroup",
                    k.group_id
                )
            });
        }
    }
    for (trigger, why) in refused {
        out.consumers.retain(|_, c| c.trigger_ref() != trigger);
        out.problems.push(problem(&trigger, Reason::ConsumerGroupTaken, why));
    }
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

/// Brokers and client properties for a Kafka client of a trigger in `ns`: the daemon's
/// credentials go only to its own brokers; other brokers must be allowed by the admin and get the
/// trigger's own credentials (`secret`), if any, never the daemon's.
/// `brokers` and `secret` come with the field they are in, for the messages.
fn kafka_client(
    ctx: &Ctx<'_>,
    ns: &str,
    brokers: Option<(&str, &str)>,
    secret: Option<(&str, &str)>,
) -> Result<(String, Properties), (Reason, String)> {
    let settings = ctx.settings;
    let brokers_field = brokers.map(|(f, _)| f).unwrap_or_default();
    let (brokers, own) = match brokers.map(|(_, b)| b) {
        None => (settings.kafka_brokers.clone(), true),
        Some(b) if same_brokers(b, &settings.kafka_brokers) => (settings.kafka_brokers.clone(), true),
        Some(b) => (b.to_string(), false),
    };
    if !own && !ctx.policy().tenant_brokers_allowed(&brokers) {
        return Err((
            Reason::BrokersNotAllowed,
            format!(
                "{brokers_field} {brokers:?}: this cluster lets triggers name only its own Kafka brokers (or those allowed by --tenant-brokers); leave it unset to use the cluster's"
            ),
        ));
    }
    let mut props = match (own, ctx.policy().enforced) {
        // Today's behaviour where the manifest author is the admin.
        (true, _) | (false, false) => settings.kafka_properties.clone(),
        (false, true) => settings.kafka_properties.without_security(),
    };
    if let Some((field, name)) = secret {
        let Some(keys) = ctx.secrets.get(&(ns.to_string(), name.to_string())) else {
            return Err((
                Reason::SecretNotFound,
                format!("{field}: Secret {ns}/{name} not found (in standalone mode, add a v1 Secret manifest)"),
            ));
        };
        let get = |k: &str| keys.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        let own_credentials = kubeless_kafka::secret_properties(get)
            .map_err(|e| (Reason::SecretNotFound, format!("{field}: Secret {ns}/{name} {e}")))?;
        props = props.without_security();
        props.extend(own_credentials.into_inner());
    }
    Ok((brokers, props))
}

fn kafka_consumers(trigger: &KafkaTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let label = ObjectRef::new(Kind::KafkaTrigger, ns, name);
    let Some(matched) = selected(label.clone(), trigger.spec.function_selector.as_ref(), ns, ctx, out) else {
        return;
    };
    let tenancy = ctx.policy();
    let template = trigger.spec.consumer_group.clone().unwrap_or_else(|| DEFAULT_GROUP_TEMPLATE.to_string());
    if matched.len() > 1 && !template.contains("{function}") {
        let why = format!(
            "spec.consumerGroup {template:?} is shared by the {} functions the selector matches, so each would get only part of the messages; add {{function}} to it",
            matched.len()
        );
        return out.problems.push(problem(&label, Reason::SharedConsumerGroup, why));
    }
    let topics = trigger.topics();
    if tenancy.enforced && topics.len() > tenancy.limits.max_topics {
        let why = format!(
            "{} topics is above this cluster's ceiling of {} per trigger (--max-topics-per-trigger)",
            topics.len(),
            tenancy.limits.max_topics
        );
        return out.problems.push(problem(&label, Reason::LimitExceeded, why));
    }
    if let Some(why) = over_limits(policy, tenancy) {
        return out.problems.push(problem(&label, Reason::LimitExceeded, why));
    }
    if let Some(topic) = topics.iter().find(|t| !tenancy.trigger_topic_allowed(ns, t)) {
        let why = not_allowed("spec.topic", topic, ns, &tenancy.trigger_topics, "--trigger-topics");
        return out.problems.push(problem(&label, Reason::TopicNotAllowed, why));
    }
    let auth = trigger.spec.auth.as_ref().map(|a| ("spec.auth.secret", a.secret.as_str()));
    let brokers = trigger.spec.brokers.as_deref().map(|b| ("spec.brokers", b));
    let (brokers, properties) = match kafka_client(ctx, ns, brokers, auth) {
        Ok(client) => client,
        Err((reason, why)) => return out.problems.push(problem(&label, reason, why)),
    };
    let mut delivery = policy.clone();
    if let Some(DeadLetterTarget::Kafka { topic, brokers: dl_brokers, secret, properties: dl_props }) =
        &mut delivery.dead_letter
    {
        if !tenancy.dead_letter_topic_allowed(ns, topic) {
            let (field, patterns) = ("spec.delivery.deadLetter.topic", &tenancy.dead_letter_topics);
            let why = not_allowed(field, topic, ns, patterns, "--dead-letter-topics");
            return out.problems.push(problem(&label, Reason::DeadLetterNotAllowed, why));
        }
        match dl_brokers.clone() {
            None => {
                *dl_brokers = Some(brokers.clone());
                *dl_props = Some(properties.clone());
            }
            Some(b) => {
                let auth = secret.as_deref().map(|s| ("spec.delivery.deadLetter.secret", s));
                match kafka_client(ctx, ns, Some(("spec.delivery.deadLetter.brokers", &b)), auth) {
                    Ok((b, props)) => {
                        *dl_brokers = Some(b);
                        *dl_props = Some(props);
                    }
                    Err((reason, why)) => return out.problems.push(problem(&label, reason, why)),
                }
            }
        }
    }
    for function in matched {
        let fname = function.metadata.name.as_deref().unwrap_or_default();
        let Some(url) = reach(function, &label, ctx, out) else { continue };
        // Topics that render to the same group share one consumer.
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for topic in &topics {
            let group = template
                .replace("{namespace}", ns)
                .replace("{trigger}", name)
                .replace("{function}", fname)
                .replace("{topic}", topic);
            groups.entry(tenancy.consumer_group(ns, &group)).or_default().insert(topic.clone());
        }
        for (group_id, topics) in groups {
            let spec = ConsumerSpec {
                kind: Kind::KafkaTrigger,
                trigger: format!("{ns}/{name}"),
                function: fname.to_string(),
                event_namespace: KAFKA_EVENT_NAMESPACE,
                source: SourceSpec::Kafka(KafkaSourceConfig {
                    brokers: brokers.clone(),
                    group_id,
                    topics: topics.into_iter().collect(),
                    initial_offset: match trigger.spec.initial_offset.unwrap_or_default() {
                        InitialOffsetSpec::Earliest => InitialOffset::Earliest,
                        InitialOffsetSpec::Latest => InitialOffset::Latest,
                    },
                    properties: properties.clone(),
                    drain_timeout: ctx.settings.drain_timeout,
                    max_uncommitted: delivery.max_uncommitted as usize,
                }),
                url: url.clone(),
                timeout: policy.timeout.unwrap_or_else(|| function.timeout()),
                delivery: ctx.settings.with_defaults(&delivery),
            };
            out.consumers.insert(spec.key(), spec);
        }
    }
}

/// Where a trigger reaches `function`, if the policy lets it: a `kubeless.io/url` outside the
/// admin's allow-list is reported on the trigger and the function is skipped.
fn reach(function: &Function, trigger: &ObjectRef, ctx: &Ctx<'_>, out: &mut Desired) -> Option<String> {
    let url = function_url(function, &ctx.settings.url_template);
    let annotated = function.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(URL_ANNOTATION));
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

/// The `host:port` of every server of a NATS URL list (`nats://a:4222,nats://b:4222`).
fn nats_servers(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            let with_scheme = if u.contains("://") { u.to_string() } else { format!("nats://{u}") };
            match url::Url::parse(&with_scheme) {
                // ws:// and wss:// have their known ports; nats:// and tls:// NATS's own.
                Ok(p) => format!("{}:{}", p.host_str().unwrap_or_default(), p.port_or_known_default().unwrap_or(4222)),
                Err(_) => u.to_string(),
            }
        })
        .collect()
}

fn nats_consumers(trigger: &NATSTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
    let (secrets, settings) = (ctx.secrets, ctx.settings);
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let label = ObjectRef::new(Kind::NATSTrigger, ns, name);
    let Some(matched) = selected(label.clone(), trigger.spec.function_selector.as_ref(), ns, ctx, out) else {
        return;
    };
    if let Some(why) = over_limits(policy, ctx.policy()) {
        return out.problems.push(problem(&label, Reason::LimitExceeded, why));
    }
    if !ctx.policy().trigger_topic_allowed(ns, &trigger.spec.topic) {
        let why = not_allowed("spec.topic", &trigger.spec.topic, ns, &ctx.policy().trigger_topics, "--trigger-topics");
        return out.problems.push(problem(&label, Reason::TopicNotAllowed, why));
    }
    if let Some(DeadLetterTarget::Nats { subject }) = &policy.dead_letter {
        if !ctx.policy().dead_letter_topic_allowed(ns, subject) {
            let (field, patterns) = ("spec.delivery.deadLetter.subject", &ctx.policy().dead_letter_topics);
            let why = not_allowed(field, subject, ns, patterns, "--dead-letter-topics");
            return out.problems.push(problem(&label, Reason::DeadLetterNotAllowed, why));
        }
    }
    if let Some(url) = trigger.spec.url.as_deref() {
        let own = nats_servers(url) == nats_servers(&settings.nats_url);
        if !own && !ctx.policy().tenant_brokers_allowed(&nats_servers(url).join(",")) {
            let why = format!(
                "spec.url {:?}: this cluster lets triggers name only its own NATS server (or those allowed by --tenant-brokers); leave it unset to use the cluster's",
                kubeless_connector::redact_url(url)
            );
            return out.problems.push(problem(&label, Reason::BrokersNotAllowed, why));
        }
    }
    let auth = match &trigger.spec.auth {
        None => NatsAuth::None,
        Some(a) => match nats_auth(secrets, ns, &a.secret) {
            Ok(auth) => auth,
            Err(problem) => {
                return out.problems.push(TriggerProblem { trigger: label, reason: Reason::SecretNotFound, problem })
            }
        },
    };
    let ca_pem = match trigger.spec.tls.as_ref().and_then(|t| t.ca_secret.as_deref()) {
        None => None,
        Some(secret) => match secret_text(secrets, ns, secret, "ca.crt") {
            Some(pem) => Some(pem),
            None => {
                let problem = format!("spec.tls.caSecret: Secret {ns}/{secret} with key ca.crt not found");
                return out.problems.push(TriggerProblem { trigger: label, reason: Reason::SecretNotFound, problem });
            }
        },
    };
    let subject = &trigger.spec.topic;
    for function in matched {
        let fname = function.metadata.name.as_deref().unwrap_or_default();
        let Some(url) = reach(function, &label, ctx, out) else { continue };
        let timeout = policy.timeout.unwrap_or_else(|| function.timeout());
        let spec = ConsumerSpec {
            kind: Kind::NATSTrigger,
            trigger: format!("{ns}/{name}"),
            function: fname.to_string(),
            event_namespace: NATS_EVENT_NAMESPACE,
            source: SourceSpec::Nats(NatsSourceConfig {
                url: trigger.spec.url.clone().unwrap_or_else(|| settings.nats_url.clone()),
                subject: subject.clone(),
                group: format!("{ns}_{name}_{fname}_{subject}"),
                owner: format!("{ns}/{name}"),
                jetstream_stream: trigger.spec.jetstream.as_ref().map(|j| j.stream.clone()),
                // Enough to keep every in-flight slot busy while the next batch arrives.
                max_ack_pending: i64::from(policy.max_in_flight) * 2,
                ack_wait: timeout + ACK_WAIT_MARGIN,
                auth: auth.clone(),
                tls: trigger.spec.tls.is_some(),
                ca_pem: ca_pem.clone(),
                drain_timeout: settings.drain_timeout,
            }),
            url,
            timeout,
            delivery: settings.with_defaults(policy),
        };
        out.consumers.insert(spec.key(), spec);
    }
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

fn kinesis_consumer(trigger: &KinesisTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
    let (secrets, settings, tenancy) = (ctx.secrets, ctx.settings, ctx.policy());
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let spec = &trigger.spec;
    let label = ObjectRef::new(Kind::KinesisTrigger, ns, name);
    let Some(function) = named_function(label.clone(), &spec.function_name, ctx, out) else {
        return;
    };
    if let Some(why) = over_limits(policy, tenancy) {
        return out.problems.push(problem(&label, Reason::LimitExceeded, why));
    }
    if let Some(endpoint) =
        spec.endpoint.as_deref().filter(|e| tenancy.enforced && !tenancy.kinesis_endpoints.allows_url(e))
    {
        let why = format!(
            "spec.endpoint {:?} is not among the Kinesis endpoints this cluster allows (--kinesis-endpoint-allow); leave it unset to use AWS's",
            kubeless_connector::redact_url(endpoint)
        );
        return out.problems.push(problem(&label, Reason::EndpointNotAllowed, why));
    }
    let credentials = match &spec.secret {
        None if tenancy.enforced && !tenancy.kinesis_ambient_identity => {
            let why = "spec.secret is required: name a Secret in this namespace with aws_access_key_id and aws_secret_access_key (this cluster does not lend the broker's own AWS identity; --kinesis-ambient-identity)".to_string();
            return out.problems.push(problem(&label, Reason::CredentialsRequired, why));
        }
        None => None,
        Some(secret) => {
            let get = |k: &str| secret_text(secrets, ns, secret, k);
            match (get("aws_access_key_id"), get("aws_secret_access_key")) {
                (Some(id), Some(key)) => Some((id.trim().to_string(), key.trim().to_string())),
                _ => {
                    let problem = format!(
                        "spec.secret: Secret {ns}/{secret} with keys aws_access_key_id and aws_secret_access_key not found"
                    );
                    return out.problems.push(TriggerProblem {
                        trigger: label,
                        reason: Reason::SecretNotFound,
                        problem,
                    });
                }
            }
        }
    };
    let Some(url) = reach(function, &label, ctx, out) else { return };
    let starting_position = match spec.starting_position.unwrap_or_default() {
        StartingPositionSpec::Latest => StartingPosition::Latest,
        StartingPositionSpec::TrimHorizon => StartingPosition::TrimHorizon,
        StartingPositionSpec::AtTimestamp => {
            StartingPosition::AtTimestamp(trigger.timestamp_secs().unwrap_or_default())
        }
    };
    let consumer = ConsumerSpec {
        kind: Kind::KinesisTrigger,
        trigger: format!("{ns}/{name}"),
        function: spec.function_name.clone(),
        event_namespace: KINESIS_EVENT_NAMESPACE,
        source: SourceSpec::Kinesis(KinesisSourceConfig {
            stream: spec.stream.clone(),
            region: spec.aws_region.clone(),
            endpoint: spec.endpoint.clone(),
            credentials,
            shard: spec.shard.clone(),
            starting_position,
            checkpoint_dir: settings.state_dir.clone(),
            // Not the function's name: editing `function-name` goes on from the same checkpoints.
            checkpoint_key: format!("{ns}_{name}_{}", spec.stream),
            legacy_checkpoint_key: Some(format!("{ns}_{name}_{}_{}", spec.function_name, spec.stream)),
            poll_interval: KINESIS_POLL_INTERVAL,
            drain_timeout: settings.drain_timeout,
            max_uncommitted: policy.max_uncommitted as usize,
        }),
        url,
        timeout: policy.timeout.unwrap_or_else(|| function.timeout()),
        delivery: settings.with_defaults(policy),
    };
    out.consumers.insert(consumer.key(), consumer);
}

fn cron_consumer(trigger: &CronJobTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
    let settings = ctx.settings;
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let fname = &trigger.spec.function_name;
    let label = ObjectRef::new(Kind::CronJobTrigger, ns, name);
    let Some(function) = named_function(label.clone(), fname, ctx, out) else {
        return;
    };
    if let Some(why) = over_limits(policy, ctx.policy()) {
        return out.problems.push(problem(&label, Reason::LimitExceeded, why));
    }
    if let Some(every) = ctx.policy().cron_too_frequent(&trigger.spec.schedule, trigger.spec.timezone.as_deref()) {
        let why = format!(
            "spec.schedule {:?} ticks every {}; this cluster's minimum is {} (--min-cron-interval)",
            trigger.spec.schedule,
            humantime::format_duration(every),
            humantime::format_duration(ctx.policy().limits.min_cron_interval)
        );
        return out.problems.push(problem(&label, Reason::LimitExceeded, why));
    }
    let Some(url) = reach(function, &label, ctx, out) else { return };
    let spec = ConsumerSpec {
        kind: Kind::CronJobTrigger,
        trigger: format!("{ns}/{name}"),
        function: fname.clone(),
        event_namespace: CRON_EVENT_NAMESPACE,
        source: SourceSpec::Cron(CronSource {
            schedule: trigger.spec.schedule.clone(),
            timezone: trigger.spec.timezone.clone(),
            payload: trigger.spec.payload.clone(),
            concurrency: trigger.spec.concurrency_policy.unwrap_or_default(),
            starting_deadline: trigger.spec.starting_deadline_seconds.map(Duration::from_secs),
            state_dir: settings.state_dir.clone(),
        }),
        url,
        timeout: policy.timeout.unwrap_or_else(|| function.timeout()),
        delivery: settings.with_defaults(policy),
    };
    out.consumers.insert(spec.key(), spec);
}

/// The `kubeless.io/url` annotation if set, else the template with `{name}`, `{namespace}` and
/// `{port}` filled in.
pub fn function_url(function: &Function, template: &str) -> String {
    if let Some(url) = function.metadata.annotations.as_ref().and_then(|a| a.get(URL_ANNOTATION)) {
        return url.clone();
    }
    template
        .replace("{name}", function.metadata.name.as_deref().unwrap_or_default())
        .replace("{namespace}", function.metadata.namespace.as_deref().unwrap_or_default())
        .replace("{port}", &function.port().to_string())
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
