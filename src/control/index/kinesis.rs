//! Kinesis triggers: one consumer for the Function the trigger names, with the AWS credentials of
//! its Secret and an endpoint the admin allows.

use std::time::Duration;

use kubeless_kinesis::{KinesisSourceConfig, StartingPosition};

use super::{
    named_function, over_limits, problem, reach, secret_text, Ctx, Desired, Reason, TriggerProblem,
    KINESIS_EVENT_NAMESPACE,
};
use crate::control::spec::{ConsumerSpec, SourceSpec};
use crate::resources::{DeliveryPolicy, Kind, KinesisTrigger, ObjectRef, StartingPositionSpec};

/// Pause between `GetRecords` calls on an idle shard (Kubeless polled every 250 ms).
const KINESIS_POLL_INTERVAL: Duration = Duration::from_millis(250);

pub(super) fn kinesis_consumer(trigger: &KinesisTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
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
