//! Kafka triggers: a consumer per selected function and consumer group, on brokers and with
//! credentials as the admin's policy allows; a group shared by several triggers stays with the first.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kubeless_kafka::{InitialOffset, KafkaSourceConfig, Properties};

use super::{
    not_allowed, over_limits, problem, reach, selected, Ctx, Desired, Reason, DEFAULT_GROUP_TEMPLATE,
    KAFKA_EVENT_NAMESPACE,
};
use crate::control::spec::{ConsumerSpec, SourceSpec};
use crate::policy::{broker_list, same_brokers};
use crate::resources::{DeadLetterTarget, DeliveryPolicy, InitialOffsetSpec, KafkaTrigger, Kind, ObjectRef};

/// A Kafka consumer group belongs to the trigger created first among those that would join it
/// on the same brokers; the others are refused whole, and the first keeps running untouched.
pub(super) fn refuse_taken_groups(created: &BTreeMap<ObjectRef, Option<Time>>, out: &mut Desired) {
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

pub(super) fn kafka_consumers(trigger: &KafkaTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
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
