//! Cron triggers: one scheduled consumer for the Function the trigger names, if its schedule ticks
//! no more often than the admin allows.

use std::time::Duration;

use super::{named_function, over_limits, problem, reach, Ctx, Desired, Reason, CRON_EVENT_NAMESPACE};
use crate::control::spec::{ConsumerSpec, CronSource, SourceSpec};
use crate::resources::{CronJobTrigger, DeliveryPolicy, Kind, ObjectRef};

pub(super) fn cron_consumer(trigger: &CronJobTrigger, policy: &DeliveryPolicy, ctx: &Ctx<'_>, out: &mut Desired) {
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
