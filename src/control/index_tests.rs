use std::path::PathBuf;

use super::*;
use crate::control::manifests::parse_file;
use crate::resources::ConcurrencyPolicy;

fn settings() -> IndexSettings {
    IndexSettings {
        kafka_brokers: "k:9092".to_string(),
        url_template: DEFAULT_URL_TEMPLATE.to_string(),
        kafka_properties: BTreeMap::new(),
        drain_timeout: Duration::from_secs(5),
        state_dir: PathBuf::from("/state"),
        nats_url: "nats://n:4222".to_string(),
        default_max_backoff: None,
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
        Some(DeadLetterTarget::Kafka { topic: "dlq".to_string(), brokers: Some("k:9092".to_string()) })
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
