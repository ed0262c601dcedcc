use std::path::PathBuf;

use kubeless_kafka::KafkaSourceConfig;
use kubeless_nats::NatsAuth;

use super::*;
use crate::control::manifests::parse_file;
use crate::policy::TenancyPolicy;
use crate::resources::{ConcurrencyPolicy, DeadLetterTarget, Kind};

fn settings() -> IndexSettings {
    IndexSettings {
        kafka_brokers: "k:9092".to_string(),
        url_template: DEFAULT_URL_TEMPLATE.to_string(),
        kafka_properties: Properties::new(),
        drain_timeout: Duration::from_secs(5),
        state_dir: PathBuf::from("/state"),
        nats_url: "nats://n:4222".to_string(),
        default_max_backoff: None,
        policy: TenancyPolicy::trusted(),
        local_functions: false,
    }
}

fn mk(yaml: &str) -> Store {
    let objects = parse_file(&PathBuf::from("test.yaml"), yaml)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("fixture must be valid: {e}")))
        .map(|l| {
            let origin = crate::control::store::Origin::File { file: l.file, doc: l.doc };
            (l.object, crate::control::store::Stored { origin, resource: Ok(l.resource) })
        })
        .collect();
    let mut store = Store::default();
    store.change(crate::control::store::Change::Reset(crate::control::store::Scope::ALL, objects));
    store
}

const FUNCTIONS: &str = r#"
apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: fa, namespace: ns, labels: {app: demo, function: fa}}
spec: {runtime: python3.7, timeout: "30", service: {ports: [{port: 9000}]}}
---
apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: fb, namespace: ns, labels: {app: demo, function: fb}, annotations: {kubeless.io/url: "http://127.0.0.1:1234"}}
spec: {runtime: python3.7}
---
apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: fc, namespace: other, labels: {app: demo}}
spec: {}
"#;

#[test]
fn one_trigger_feeds_every_matching_function_in_its_namespace_with_kubeless_group_ids() {
    let yaml = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: ns}}\nspec: {{topic: orders, functionSelector: {{matchLabels: {{app: demo}}}}}}\n"
    );
    let d = desired(&mk(&yaml), &settings());
    let groups: Vec<&str> = d.consumers.values().map(|c| c.source.id()).collect();
    assert_eq!(groups, ["ns_t_fa_orders", "ns_t_fb_orders"]);
    let fa = d.consumers.values().find(|c| c.function == "fa").expect("fa consumer");
    assert_eq!(fa.url, "http://fa.ns.svc.cluster.local:9000");
    assert_eq!(fa.timeout, Duration::from_secs(30));
    let SourceSpec::Kafka(src) = &fa.source else { panic!("a Kafka consumer") };
    assert_eq!(src.brokers, "k:9092");
    let fb = d.consumers.values().find(|c| c.function == "fb").expect("fb consumer");
    assert_eq!(fb.url, "http://127.0.0.1:1234", "the annotation wins over the template");
    assert_eq!(fb.timeout, Duration::from_secs(180), "Kubeless's default timeout");
}

#[test]
fn a_local_function_is_reached_once_it_serves_and_until_then_its_triggers_say_why() {
    use crate::control::store::{Change, LocalState};
    let yaml = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: ns}}\nspec: {{topic: orders, functionSelector: {{matchLabels: {{app: demo}}}}}}\n"
    );
    let settings = IndexSettings { local_functions: true, ..settings() };
    let mut store = mk(&yaml);
    let fa = ObjectRef::new(Kind::Function, "ns", "fa");
    let reason_of_t = |store: &Store| {
        let d = desired(store, &settings);
        let urls: Vec<String> = d.consumers.values().map(|c| c.url.clone()).collect();
        let problem = d.problems.iter().find(|p| p.trigger.name == "t").map(|p| (p.reason, p.problem.clone()));
        (urls, problem)
    };
    // Not reported yet, or starting: fb (which has a URL) runs, fa waits.
    for state in [None, Some(LocalState::Starting)] {
        store.change(Change::Local(fa.clone(), state));
        let (urls, problem) = reason_of_t(&store);
        assert_eq!(urls, ["http://127.0.0.1:1234"], "the annotated function is reached at its URL");
        let (reason, why) = problem.expect("fa is waited for");
        assert_eq!(reason, Reason::FunctionStarting);
        assert!(reason.is_idle() && why.contains("ns/fa"), "{why}");
    }
    store.change(Change::Local(fa.clone(), Some(LocalState::Failed("node is not on the daemon's PATH".into()))));
    let (reason, why) = reason_of_t(&store).1.expect("a problem");
    assert_eq!(reason, Reason::FunctionNotRunning);
    assert!(why.contains("node is not on the daemon's PATH"), "{why}");
    store.change(Change::Local(fa.clone(), Some(LocalState::Unrunnable("spec.runtime: unknown".into()))));
    let (reason, why) = reason_of_t(&store).1.expect("a problem");
    assert_eq!(reason, Reason::FunctionNotRunnable);
    assert!(why.contains("spec.runtime: unknown") && why.contains("kubeless.io/url"), "{why}");
    assert!(store.change(Change::Local(fa.clone(), Some(LocalState::Serving))));
    assert!(!store.change(Change::Local(fa.clone(), Some(LocalState::Serving))), "the same state is no change");
    let (urls, problem) = reason_of_t(&store);
    assert_eq!(urls, ["local://ns/fa", "http://127.0.0.1:1234"]);
    assert_eq!(problem, None);
    // Without local functions the template reaches it, whatever the runner said.
    let off = desired(&store, &IndexSettings { local_functions: false, ..settings.clone() });
    assert!(off.consumers.values().any(|c| c.url == "http://fa.ns.svc.cluster.local:9000"));
}

#[test]
fn several_topics_get_one_group_each_unless_the_group_template_merges_them() {
    let base = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: ns}}\n"
    );
    let per_topic = desired(
        &mk(&format!("{base}spec: {{topics: [a, b], functionSelector: {{matchLabels: {{function: fa}}}}}}\n")),
        &settings(),
    );
    assert_eq!(per_topic.consumers.len(), 2);
    let merged = desired(
        &mk(&format!(
            "{base}spec: {{topics: [a, b], consumerGroup: mine, brokers: 'x:1', functionSelector: {{matchLabels: {{function: fa}}}}}}\n"
        )),
        &settings(),
    );
    let Some(SourceSpec::Kafka(only)) = merged.consumers.values().next().map(|c| &c.source) else {
        panic!("one Kafka consumer")
    };
    assert_eq!((only.group_id.as_str(), only.topics.clone()), ("mine", vec!["a".to_string(), "b".to_string()]));
    assert_eq!(only.brokers, "x:1");
}

#[test]
fn a_shared_consumer_group_over_several_functions_is_refused() {
    let yaml = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: ns}}\nspec: {{topic: a, consumerGroup: shared, functionSelector: {{matchLabels: {{app: demo}}}}}}\n"
    );
    let d = desired(&mk(&yaml), &settings());
    assert!(d.consumers.is_empty());
    assert!(d.problems[0].problem.contains("{function}"), "{:?}", d.problems);
}

#[test]
fn a_trigger_matching_nothing_is_idle_and_other_kinds_are_listed_as_unserved() {
    let yaml = r#"
apiVersion: kubeless.io/v1beta1
kind: KafkaTrigger
metadata: {name: t}
spec: {topic: a, functionSelector: {matchLabels: {function: nobody}}}
---
apiVersion: kubeless.io/v1beta1
kind: CronJobTrigger
metadata: {name: c}
spec: {function-name: missing, schedule: "* * * * *"}
---
apiVersion: kubeless.io/v1beta1
kind: HTTPTrigger
metadata: {name: h}
spec: {function-name: f}
"#;
    let d = desired(&mk(yaml), &settings());
    assert!(d.consumers.is_empty());
    let idle: Vec<(String, Reason, &str)> =
        d.problems.iter().map(|p| (p.trigger.to_string(), p.reason, p.problem.as_str())).collect();
    assert_eq!(
        idle,
        [
            (
                "KafkaTrigger default/t".to_string(),
                Reason::NoFunctionSelected,
                "spec.functionSelector matches no Function in namespace default"
            ),
            (
                "CronJobTrigger default/c".to_string(),
                Reason::FunctionNotFound,
                "spec.function-name: Function default/missing does not exist"
            ),
        ]
    );
    assert!(d.problems.iter().all(|p| p.reason.is_idle()));
    assert_eq!(d.unserved, [ObjectRef::new(Kind::HTTPTrigger, "default", "h")]);
}

#[test]
fn a_cron_trigger_runs_against_its_named_function() {
    let yaml = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {{name: c, namespace: ns}}\nspec: {{function-name: fa, schedule: '*/2 * * * * *', payload: {{a: 1}}, concurrencyPolicy: Forbid, startingDeadlineSeconds: 30}}\n"
    );
    let d = desired(&mk(&yaml), &settings());
    let c = d.consumers.values().next().expect("one consumer");
    assert_eq!((c.trigger.as_str(), c.function.as_str(), c.event_namespace), ("ns/c", "fa", CRON_EVENT_NAMESPACE));
    let SourceSpec::Cron(src) = &c.source else { panic!("a cron consumer") };
    assert_eq!(src.concurrency, ConcurrencyPolicy::Forbid);
    assert_eq!(src.starting_deadline, Some(Duration::from_secs(30)));
    assert_eq!(src.payload, Some(serde_json::json!({"a": 1})));
    assert_eq!(c.url, "http://fa.ns.svc.cluster.local:9000");
}

#[test]
fn dead_letter_brokers_default_to_the_triggers_brokers() {
    let yaml = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: ns}}\nspec: {{topic: a, functionSelector: {{matchLabels: {{function: fa}}}}, delivery: {{deadLetter: {{topic: dlq}}}}}}\n"
    );
    let d = desired(&mk(&yaml), &settings());
    let c = d.consumers.values().next().expect("one consumer");
    assert_eq!(
        c.delivery.dead_letter,
        Some(DeadLetterTarget::Kafka {
            topic: "dlq".to_string(),
            brokers: Some("k:9092".to_string()),
            secret: None,
            properties: Some(Properties::new()),
        })
    );
}

#[test]
fn nats_credentials_come_from_a_secret_in_the_triggers_namespace() {
    let base = format!("{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {{name: n, namespace: ns}}\nspec: {{topic: a, auth: {{secret: creds}}, functionSelector: {{matchLabels: {{function: fa}}}}}}\n");
    let auth_of = |secret: &str| {
        let d = desired(&mk(&format!("{base}---\n{secret}")), &settings());
        match d.consumers.values().next().map(|c| &c.source) {
            Some(SourceSpec::Nats(n)) => Ok(n.auth.clone()),
            _ => Err(d.problems.first().map(|p| p.problem.clone()).unwrap_or_default()),
        }
    };
    // base64("s3cret") = czNjcmV0
    let token = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: ns}\ndata: {token: czNjcmV0}\n";
    assert_eq!(auth_of(token), Ok(NatsAuth::Token("s3cret".into())));
    let userpass =
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: ns}\nstringData: {user: u, password: p}\n";
    assert_eq!(auth_of(userpass), Ok(NatsAuth::UserPassword("u".into(), "p".into())));
    let empty = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: ns}\nstringData: {other: x}\n";
    assert!(auth_of(empty).expect_err("no usable key").contains("none of the keys"));
    let elsewhere = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: other}\nstringData: {token: t}\n";
    assert!(auth_of(elsewhere).expect_err("wrong namespace").contains("Secret ns/creds not found"));
}

/// The defaults of a shared cluster, with the daemon's own Kafka credentials.
fn shared() -> IndexSettings {
    let mut props = Properties::new();
    props.insert("security.protocol".into(), "sasl_plaintext".into());
    props.insert("sasl.password".into(), "platform-secret".into());
    props.insert("session.timeout.ms".into(), "6000".into());
    IndexSettings { kafka_properties: props, policy: TenancyPolicy::shared_cluster(), ..settings() }
}

fn kafka_trigger(ns: &str, name: &str, spec: &str) -> String {
    format!("---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{topic: a, functionSelector: {{matchLabels: {{function: fa}}}}, {spec}}}\n")
}

fn kafka_sources(d: &Desired) -> Vec<&KafkaSourceConfig> {
    d.consumers
        .values()
        .filter_map(|c| match &c.source {
            SourceSpec::Kafka(k) => Some(k),
            _ => None,
        })
        .collect()
}

#[test]
fn the_daemons_kafka_credentials_go_only_to_its_own_brokers() {
    let own = desired(&mk(&format!("{FUNCTIONS}{}", kafka_trigger("ns", "t", "brokers: 'K:9092'"))), &shared());
    let src = kafka_sources(&own)[0];
    assert_eq!(src.properties["sasl.password"], "platform-secret", "the cluster's brokers, named explicitly");

    let elsewhere = format!("{FUNCTIONS}{}", kafka_trigger("ns", "t", "brokers: 'evil:9092'"));
    let refused = desired(&mk(&elsewhere), &shared());
    assert!(refused.consumers.is_empty());
    assert_eq!(refused.problems[0].reason, Reason::BrokersNotAllowed, "{:?}", refused.problems);
    assert!(refused.problems[0].problem.starts_with("spec.brokers \"evil:9092\""), "{:?}", refused.problems);

    // Allowed by the admin: only tuning properties, never the daemon's credentials.
    let mut allowing = shared();
    allowing.policy.tenant_brokers = crate::policy::AllowList::new(&["evil:9092".into()]);
    let allowed = desired(&mk(&elsewhere), &allowing);
    let src = kafka_sources(&allowed)[0];
    assert_eq!(src.properties.keys().collect::<Vec<_>>(), ["session.timeout.ms"]);

    // With the trigger's own Secret: its credentials.
    let secret = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: kc, namespace: ns}\nstringData: {username: team, password: team-pw}\n";
    let own_auth =
        format!("{FUNCTIONS}{}{secret}", kafka_trigger("ns", "t", "brokers: 'evil:9092', auth: {secret: kc}"));
    let d = desired(&mk(&own_auth), &allowing);
    let src = kafka_sources(&d)[0];
    assert_eq!(
        (src.properties["sasl.username"].as_str(), src.properties["sasl.password"].as_str()),
        ("team", "team-pw")
    );
    assert!(!format!("{d:?}").contains("team-pw") && !format!("{d:?}").contains("platform-secret"), "never printed");

    // Dead letters: the same rule for their brokers.
    let dl = format!(
        "{FUNCTIONS}{}",
        kafka_trigger("ns", "t", "delivery: {deadLetter: {topic: ns.dlq, brokers: 'evil:9092'}}")
    );
    let d = desired(&mk(&dl), &shared());
    assert_eq!(d.problems[0].reason, Reason::BrokersNotAllowed);
    assert!(d.problems[0].problem.starts_with("spec.delivery.deadLetter.brokers"), "{:?}", d.problems);
    let d = desired(&mk(&dl), &allowing);
    let Some(DeadLetterTarget::Kafka { properties: Some(p), .. }) =
        &d.consumers.values().next().expect("one").delivery.dead_letter
    else {
        panic!("a Kafka dead letter")
    };
    assert!(!p.contains_key("sasl.password"), "{p:?}");
}

#[test]
fn consumer_groups_stay_in_their_namespace_and_the_first_trigger_keeps_a_shared_one() {
    let other_ns = FUNCTIONS.replace("namespace: ns", "namespace: team-b");
    let yaml = format!(
        "{FUNCTIONS}---\n{other_ns}{}{}{}",
        kafka_trigger("ns", "a", "consumerGroup: shared"),
        kafka_trigger("team-b", "b", "consumerGroup: shared"),
        kafka_trigger("team-b", "thief", "consumerGroup: 'ns_shared'"),
    );
    let d = desired(&mk(&yaml), &shared());
    let groups: BTreeSet<&str> = kafka_sources(&d).iter().map(|k| k.group_id.as_str()).collect();
    assert_eq!(groups, BTreeSet::from(["ns_shared", "team-b_shared", "team-b_ns_shared"]));

    // Two triggers of one namespace rendering one group: the first created keeps it.
    let first = "creationTimestamp: '2026-01-01T00:00:00Z'";
    let later = "creationTimestamp: '2026-06-01T00:00:00Z'";
    let yaml = format!(
        "{FUNCTIONS}{}{}",
        kafka_trigger("ns", "z-first", "consumerGroup: g")
            .replace("namespace: ns}", &format!("namespace: ns, {first}}}")),
        kafka_trigger("ns", "a-later", "consumerGroup: g")
            .replace("namespace: ns}", &format!("namespace: ns, {later}}}")),
    );
    let d = desired(&mk(&yaml), &shared());
    let running: Vec<&str> = d.consumers.values().map(|c| c.trigger.as_str()).collect();
    assert_eq!(running, ["ns/z-first"]);
    assert_eq!(d.problems.len(), 1);
    assert_eq!((d.problems[0].trigger.name.as_str(), d.problems[0].reason), ("a-later", Reason::ConsumerGroupTaken));
    assert!(d.problems[0].problem.contains("KafkaTrigger ns/z-first"), "{:?}", d.problems);
    assert!(d.problems[0].reason.is_policy());
}

#[test]
fn function_urls_dead_letter_topics_kinesis_identity_and_limits_follow_the_policy() {
    // fb carries kubeless.io/url http://127.0.0.1:1234: not allowed by default.
    let yaml = format!(
        "{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: t, namespace: ns}}\nspec: {{topic: a, functionSelector: {{matchLabels: {{app: demo}}}}}}\n"
    );
    let d = desired(&mk(&yaml), &shared());
    let functions: Vec<&str> = d.consumers.values().map(|c| c.function.as_str()).collect();
    assert_eq!(functions, ["fa"], "fa at its Service still runs");
    assert_eq!(d.problems[0].reason, Reason::FunctionUrlNotAllowed);
    let mut allowing = shared();
    allowing.policy.function_urls = crate::policy::AllowList::new(&["http://127.0.0.1:1234/".into()]);
    assert_eq!(desired(&mk(&yaml), &allowing).consumers.len(), 2);

    let dl = |topic: &str| {
        desired(
            &mk(&format!(
                "{FUNCTIONS}{}",
                kafka_trigger("ns", "t", &format!("delivery: {{deadLetter: {{topic: {topic}}}}}"))
            )),
            &shared(),
        )
    };
    assert_eq!(dl("payments").problems[0].reason, Reason::DeadLetterNotAllowed);
    assert!(dl("ns.dlq").problems.is_empty());

    let kinesis = |extra: &str| {
        desired(&mk(&format!("{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {{name: k, namespace: ns}}\nspec: {{function-name: fa, stream: s, aws-region: us-east-1{extra}}}\n")), &shared())
    };
    assert_eq!(kinesis("").problems[0].reason, Reason::CredentialsRequired);
    assert_eq!(
        kinesis(", secret: aws, endpoint: 'http://10.0.0.1:4567'").problems[0].reason,
        Reason::EndpointNotAllowed
    );

    let limited = |spec: &str| desired(&mk(&format!("{FUNCTIONS}{}", kafka_trigger("ns", "t", spec))), &shared());
    assert_eq!(limited("delivery: {maxInFlight: 5000}").problems[0].reason, Reason::LimitExceeded);
    assert_eq!(limited("delivery: {maxUncommitted: 1000000}").problems[0].reason, Reason::LimitExceeded);
    assert!(limited("delivery: {maxInFlight: 500}").problems.is_empty());

    let cron = |schedule: &str| {
        desired(&mk(&format!("{FUNCTIONS}---\napiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {{name: c, namespace: ns}}\nspec: {{function-name: fa, schedule: '{schedule}'}}\n")), &shared())
    };
    let every_second = cron("@every 1s");
    assert_eq!(every_second.problems[0].reason, Reason::LimitExceeded);
    assert!(every_second.problems[0].problem.contains("--min-cron-interval"), "{:?}", every_second.problems);
    assert!(cron("*/5 * * * *").problems.is_empty());
}

#[test]
fn a_namespace_past_its_trigger_ceiling_runs_its_first_triggers_only() {
    let mut settings = shared();
    settings.policy.limits.max_triggers_per_namespace = 2;
    let at = |month: u32| format!("creationTimestamp: '2026-{month:02}-01T00:00:00Z'");
    let yaml = format!(
        "{FUNCTIONS}{}{}{}",
        kafka_trigger("ns", "c", "initialOffset: earliest")
            .replace("namespace: ns}", &format!("namespace: ns, {}}}", at(3))),
        kafka_trigger("ns", "a", "initialOffset: earliest")
            .replace("namespace: ns}", &format!("namespace: ns, {}}}", at(1))),
        kafka_trigger("ns", "b", "initialOffset: earliest")
            .replace("namespace: ns}", &format!("namespace: ns, {}}}", at(2))),
    );
    let d = desired(&mk(&yaml), &settings);
    let running: BTreeSet<&str> = d.consumers.values().map(|c| c.trigger.as_str()).collect();
    assert_eq!(running, BTreeSet::from(["ns/a", "ns/b"]));
    assert_eq!((d.problems[0].trigger.name.as_str(), d.problems[0].reason), ("c", Reason::LimitExceeded));
    assert!(d.problems[0].problem.contains("--max-triggers-per-namespace"), "{:?}", d.problems);
}
