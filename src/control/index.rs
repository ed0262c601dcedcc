//! The desired state: from the valid resources, every consumer that should run. Pure and
//! synchronous, so boot and every change go through the same diff (see `supervisor`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use kube::core::{Selector, SelectorExt};
use kubeless_kafka::{InitialOffset, KafkaSourceConfig};
use kubeless_kinesis::{KinesisSourceConfig, StartingPosition};
use kubeless_nats::{NatsAuth, NatsSourceConfig};

pub use crate::dispatch::consumer::{ConsumerSpec, CronSource, SourceSpec};

use super::manifests::Resource;
use super::store::{Kind, ObjectRef, Store};
use crate::resources::{
    CronJobTrigger, DeadLetterTarget, DeliveryPolicy, Function, InitialOffsetSpec, KafkaTrigger, KinesisTrigger,
    NATSTrigger, StartingPositionSpec, URL_ANNOTATION,
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
    /// librdkafka properties for every client (security, session timeout…).
    pub kafka_properties: BTreeMap<String, String>,
    pub drain_timeout: Duration,
    /// Where the scheduler remembers fired ticks.
    pub state_dir: PathBuf,
    /// NATS server for triggers without `spec.url` (env `NATS_URL`).
    pub nats_url: String,
    /// Kubeless's `BACKOFF_INTERVAL`: the longest wait between retries of a trigger that sets no
    /// `delivery.retry.maxBackoff`.
    pub default_max_backoff: Option<Duration>,
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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadSelector => "BadSelector",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SharedConsumerGroup => "SharedConsumerGroup",
            Reason::NoFunctionSelected => "NoFunctionSelected",
            Reason::FunctionNotFound => "FunctionNotFound",
        }
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
    for (object, resource) in store.resources() {
        match resource {
            Resource::Function(_) | Resource::Secret(_) => {}
            Resource::Kafka(trigger, policy) => kafka_consumers(trigger, policy, &functions, settings, &mut out),
            Resource::CronJob(trigger, policy) => cron_consumer(trigger, policy, &functions, settings, &mut out),
            Resource::Nats(trigger, policy) => {
                nats_consumers(trigger, policy, &functions, &secrets, settings, &mut out)
            }
            Resource::Kinesis(trigger, policy) => {
                kinesis_consumer(trigger, policy, &functions, &secrets, settings, &mut out)
            }
            Resource::Http(_) => out.unserved.push(object.clone()),
        }
    }
    out
}

fn kafka_consumers(
    trigger: &KafkaTrigger,
    policy: &DeliveryPolicy,
    functions: &[&Function],
    settings: &IndexSettings,
    out: &mut Desired,
) {
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let label = ObjectRef::new(Kind::KafkaTrigger, ns, name);
    let Some(matched) = selected(label.clone(), trigger.spec.function_selector.as_ref(), ns, functions, out) else {
        return;
    };
    let template = trigger.spec.consumer_group.clone().unwrap_or_else(|| DEFAULT_GROUP_TEMPLATE.to_string());
    if matched.len() > 1 && !template.contains("{function}") {
        let problem = format!(
            "spec.consumerGroup {template:?} is shared by the {} functions the selector matches, so each would get only part of the messages; add {{function}} to it",
            matched.len()
        );
        return out.problems.push(TriggerProblem { trigger: label, reason: Reason::SharedConsumerGroup, problem });
    }
    let brokers = trigger.spec.brokers.clone().unwrap_or_else(|| settings.kafka_brokers.clone());
    let topics = trigger.topics();
    for function in matched {
        let fname = function.metadata.name.as_deref().unwrap_or_default();
        let url = function_url(function, &settings.url_template);
        // Topics that render to the same group share one consumer.
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for topic in &topics {
            let group = template
                .replace("{namespace}", ns)
                .replace("{trigger}", name)
                .replace("{function}", fname)
                .replace("{topic}", topic);
            groups.entry(group).or_default().insert(topic.clone());
        }
        let mut delivery = policy.clone();
        if let Some(DeadLetterTarget::Kafka { brokers: dl_brokers @ None, .. }) = &mut delivery.dead_letter {
            *dl_brokers = Some(brokers.clone());
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
                    properties: settings.kafka_properties.clone(),
                    drain_timeout: settings.drain_timeout,
                    max_uncommitted: delivery.max_uncommitted as usize,
                }),
                url: url.clone(),
                timeout: policy.timeout.unwrap_or_else(|| function.timeout()),
                delivery: settings.with_defaults(&delivery),
            };
            out.consumers.insert(spec.key(), spec);
        }
    }
}

/// The functions in the trigger's namespace that its selector matches. A bad selector is reported
/// as a problem and a selector matching nothing as an idle trigger; both give `None`.
fn selected<'a>(
    label: ObjectRef,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    ns: &str,
    functions: &[&'a Function],
    out: &mut Desired,
) -> Option<Vec<&'a Function>> {
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
    Some(matched)
}

fn nats_consumers(
    trigger: &NATSTrigger,
    policy: &DeliveryPolicy,
    functions: &[&Function],
    secrets: &Secrets,
    settings: &IndexSettings,
    out: &mut Desired,
) {
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let label = ObjectRef::new(Kind::NATSTrigger, ns, name);
    let Some(matched) = selected(label.clone(), trigger.spec.function_selector.as_ref(), ns, functions, out) else {
        return;
    };
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
                jetstream_stream: trigger.spec.jetstream.as_ref().map(|j| j.stream.clone()),
                // Enough to keep every in-flight slot busy while the next batch arrives.
                max_ack_pending: i64::from(policy.max_in_flight) * 2,
                ack_wait: timeout + ACK_WAIT_MARGIN,
                auth: auth.clone(),
                tls: trigger.spec.tls.is_some(),
                ca_pem: ca_pem.clone(),
                drain_timeout: settings.drain_timeout,
            }),
            url: function_url(function, &settings.url_template),
            timeout,
            delivery: settings.with_defaults(policy),
        };
        out.consumers.insert(spec.key(), spec);
    }
}

/// The Function a 1:1 trigger (Kinesis, cron) names, in the trigger's namespace; `None` (reported
/// as idle) if it does not exist.
fn named_function<'a>(
    trigger: ObjectRef,
    fname: &str,
    functions: &[&'a Function],
    out: &mut Desired,
) -> Option<&'a Function> {
    let ns = trigger.namespace.as_str();
    let found = functions
        .iter()
        .copied()
        .find(|f| f.metadata.namespace.as_deref() == Some(ns) && f.metadata.name.as_deref() == Some(fname));
    if found.is_none() {
        let problem = format!("spec.function-name: Function {ns}/{fname} does not exist");
        out.problems.push(TriggerProblem { trigger, reason: Reason::FunctionNotFound, problem });
    }
    found
}

fn kinesis_consumer(
    trigger: &KinesisTrigger,
    policy: &DeliveryPolicy,
    functions: &[&Function],
    secrets: &Secrets,
    settings: &IndexSettings,
    out: &mut Desired,
) {
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let spec = &trigger.spec;
    let label = ObjectRef::new(Kind::KinesisTrigger, ns, name);
    let Some(function) = named_function(label.clone(), &spec.function_name, functions, out) else {
        return;
    };
    let credentials = match &spec.secret {
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
            checkpoint_key: format!("{ns}_{name}_{}_{}", spec.function_name, spec.stream),
            poll_interval: KINESIS_POLL_INTERVAL,
            drain_timeout: settings.drain_timeout,
            max_uncommitted: policy.max_uncommitted as usize,
        }),
        url: function_url(function, &settings.url_template),
        timeout: policy.timeout.unwrap_or_else(|| function.timeout()),
        delivery: settings.with_defaults(policy),
    };
    out.consumers.insert(consumer.key(), consumer);
}

fn cron_consumer(
    trigger: &CronJobTrigger,
    policy: &DeliveryPolicy,
    functions: &[&Function],
    settings: &IndexSettings,
    out: &mut Desired,
) {
    let ns = trigger.metadata.namespace.as_deref().unwrap_or_default();
    let name = trigger.metadata.name.as_deref().unwrap_or_default();
    let fname = &trigger.spec.function_name;
    let Some(function) = named_function(ObjectRef::new(Kind::CronJobTrigger, ns, name), fname, functions, out) else {
        return;
    };
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
        url: function_url(function, &settings.url_template),
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
