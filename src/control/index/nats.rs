//! NATS triggers: a consumer per selected function, with the credentials and CA of the trigger's
//! Secrets, on the cluster's server unless the admin allows another.

use std::time::Duration;

use kubeless_nats::{NatsAuth, NatsSourceConfig};

use super::{
    not_allowed, over_limits, problem, reach, secret_text, selected, Ctx, Desired, Reason, Secrets, TriggerProblem,
    NATS_EVENT_NAMESPACE,
};
use crate::control::spec::{ConsumerSpec, SourceSpec};
use crate::resources::{DeadLetterTarget, DeliveryPolicy, Kind, NATSTrigger, ObjectRef};

/// A JetStream message is redelivered if not acknowledged this long after a request would have
/// timed out.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(5);

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

pub(super) fn nats_consumers(trigger: &NATSTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
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
