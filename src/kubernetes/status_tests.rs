use super::*;
use crate::control::index::Reason;

fn consumer(function: &str, state: &str, lag: i64) -> ConsumerStatus {
    let state = match state {
        "Starting" => SourceState::Starting,
        "Ready" => SourceState::Ready,
        failed => {
            let detail = failed.trim_start_matches("Failed: ");
            SourceState::Failed(Failure::new(kubeless_connector::Reason::BrokerUnreachable, detail))
        }
    };
    ConsumerStatus {
        kind: Kind::KafkaTrigger,
        trigger: "ns/t".into(),
        function: function.into(),
        group: format!("ns_t_{function}_orders"),
        topics: vec!["orders".into()],
        url: "http://f".into(),
        ready: state == SourceState::Ready,
        reason: match &state {
            SourceState::Failed(f) => Some(f.reason.as_str()),
            _ => None,
        },
        state,
        lag,
        checkpoint_error: None,
    }
}

fn facts<'a>(consumers: &'a [&'a ConsumerStatus]) -> Facts<'a> {
    Facts { generation: Some(3), invalid: None, problem: None, unserved: false, consumers }
}

fn ready(s: &TriggerStatus) -> (&str, &str, &str) {
    let c = &s.conditions[0];
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[test]
fn ready_when_every_consumer_has_its_partitions_with_lag_summed_over_functions() {
    let (a, b) = (consumer("fa", "Ready", 5), consumer("fb", "Ready", 7));
    let s = trigger_status(Kind::KafkaTrigger, facts(&[&b, &a]), None, "T0");
    assert_eq!(ready(&s), ("True", "Delivering", "delivering to fa, fb"));
    assert_eq!(s.observed_generation, Some(3));
    assert_eq!(s.lag, Some(12));
    let names: Vec<&str> = s.functions.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["fa", "fb"]);
    assert_eq!(s.functions[0].lag, Some(5));
}

#[test]
fn each_reason_a_trigger_is_not_ready_is_named() {
    let starting = consumer("fa", "Starting", 0);
    let s = trigger_status(Kind::KafkaTrigger, facts(&[&starting]), None, "T0");
    assert_eq!(ready(&s), ("False", "PartitionsNotAssigned", "partitions not assigned yet: fa"));

    let failed = consumer("fa", "Failed: broker 127.0.0.1:1 unreachable", 0);
    let s = trigger_status(Kind::KafkaTrigger, facts(&[&starting, &failed]), None, "T0");
    assert_eq!(ready(&s), ("False", "BrokerUnreachable", "fa: broker 127.0.0.1:1 unreachable"));
    assert_eq!(s.functions.iter().filter_map(|f| f.reason.as_deref()).collect::<Vec<_>>(), ["BrokerUnreachable"]);

    // A failure that needs a person names the condition before a retriable one.
    let mut refused = consumer("fb", "Failed: sasl.mechanism: invalid value", 0);
    let config =
        kubeless_connector::Failure::new(kubeless_connector::Reason::InvalidConfig, "sasl.mechanism: invalid value");
    refused.state = SourceState::Failed(config);
    let s = trigger_status(Kind::KafkaTrigger, facts(&[&failed, &refused]), None, "T0");
    assert_eq!(
        ready(&s),
        ("False", "InvalidConfig", "fa: broker 127.0.0.1:1 unreachable; fb: sasl.mechanism: invalid value")
    );

    let invalid = Facts { invalid: Some("spec.delivery.timeout: \"soon\" is not a duration"), ..facts(&[]) };
    let s = trigger_status(Kind::KafkaTrigger, invalid, None, "T0");
    assert_eq!(ready(&s), ("False", "InvalidSpec", "spec.delivery.timeout: \"soon\" is not a duration"));
    assert_eq!(s.lag, None, "no consumer, no lag");

    let problem = TriggerProblem {
        trigger: ObjectRef::new(Kind::NATSTrigger, "ns", "t"),
        reason: Reason::SecretNotFound,
        problem: "spec.auth.secret: Secret ns/creds not found".into(),
    };
    let s = trigger_status(Kind::NATSTrigger, Facts { problem: Some(&problem), ..facts(&[]) }, None, "T0");
    assert_eq!(ready(&s), ("False", "SecretNotFound", "spec.auth.secret: Secret ns/creds not found"));

    let s = trigger_status(Kind::HTTPTrigger, Facts { unserved: true, ..facts(&[]) }, None, "T0");
    assert_eq!(ready(&s).0, "Unknown");
}

#[test]
fn nats_and_cron_triggers_carry_no_lag() {
    let mut c = consumer("fa", "Ready", 9);
    c.kind = Kind::NATSTrigger;
    let s = trigger_status(Kind::NATSTrigger, facts(&[&c]), None, "T0");
    assert_eq!(s.lag, None);
    assert_eq!(s.functions[0].lag, None);
}

#[test]
fn the_transition_time_moves_only_when_the_condition_status_does() {
    let (starting, ready_c) = (consumer("fa", "Starting", 0), consumer("fa", "Ready", 0));
    let first = trigger_status(Kind::KafkaTrigger, facts(&[&starting]), None, "T0");
    let still = trigger_status(Kind::KafkaTrigger, facts(&[&starting]), Some(&first), "T1");
    assert_eq!(still.conditions[0].last_transition_time.as_deref(), Some("T0"));
    let now_ready = trigger_status(Kind::KafkaTrigger, facts(&[&ready_c]), Some(&still), "T2");
    assert_eq!(now_ready.conditions[0].last_transition_time.as_deref(), Some("T2"));
}

#[test]
fn a_lag_change_alone_is_not_urgent_but_a_state_change_is() {
    let (a, a_lagging, a_failed) =
        (consumer("fa", "Ready", 0), consumer("fa", "Ready", 500), consumer("fa", "Failed: x", 0));
    let base = trigger_status(Kind::KafkaTrigger, facts(&[&a]), None, "T0");
    let lagging = trigger_status(Kind::KafkaTrigger, facts(&[&a_lagging]), Some(&base), "T0");
    let failed = trigger_status(Kind::KafkaTrigger, facts(&[&a_failed]), Some(&base), "T1");
    assert_ne!(base, lagging);
    assert!(!differs_beyond_lag(&base, &lagging));
    assert!(differs_beyond_lag(&base, &failed));
}
