//! Bad manifests: each gives an error naming the file, the document, the resource (when it got that
//! far) and the field, and the valid documents around it still load.

use std::path::PathBuf;

use super::*;

const GOOD_TRIGGER: &str = "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {name: good}\nspec: {topic: t, functionSelector: {matchLabels: {function: f}}}\n";

fn kafka(spec: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: bad, namespace: ns}}\nspec: {spec}\n"
    )
}

fn function(meta: &str, spec: &str) -> String {
    format!("apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {meta}\nspec: {spec}\n")
}

/// (case name, document, words the error must contain).
fn cases() -> Vec<(&'static str, String, Vec<&'static str>)> {
    let sel = "functionSelector: {matchLabels: {function: f}}";
    vec![
        ("bad YAML", "kind: [KafkaTrigger\nspec: {".to_string(), vec!["not valid YAML"]),
        ("not a mapping", "- just\n- a list\n".to_string(), vec!["must be a mapping"]),
        ("missing kind", "apiVersion: kubeless.io/v1beta1\nmetadata: {name: x}\n".to_string(), vec!["kind", "required"]),
        ("unknown kind", "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigga\nmetadata: {name: x}\n".to_string(), vec!["KafkaTrigga", "not a Kubeless kind"]),
        ("wrong apiVersion", "apiVersion: kubeless.io/v1\nkind: KafkaTrigger\nmetadata: {name: x}\nspec: {}\n".to_string(), vec!["apiVersion", "kubeless.io/v1beta1"]),
        ("missing apiVersion", "kind: KafkaTrigger\nmetadata: {name: x}\nspec: {}\n".to_string(), vec!["apiVersion", "required"]),
        ("missing name", "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {}\nspec: {}\n".to_string(), vec!["metadata.name", "required"]),
        ("invalid name", "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {name: Bad_Name}\nspec: {topic: t, functionSelector: {}}\n".to_string(), vec!["metadata.name", "Bad_Name"]),
        ("missing topic", kafka(&format!("{{{sel}}}")), vec!["spec.topic", "required"]),
        ("empty topic (empty is unset, as Kubeless exported it)", kafka(&format!("{{topic: '', {sel}}}")), vec!["spec.topic", "required"]),
        ("invalid topic", kafka(&format!("{{topic: 'has space', {sel}}}")), vec!["spec.topic", "has space"]),
        ("invalid topic in list", kafka(&format!("{{topics: [ok, 'a/b'], {sel}}}")), vec!["spec.topics[1]"]),
        ("missing selector", kafka("{topic: t}"), vec!["spec.functionSelector", "required"]),
        ("bad selector label key", kafka("{topic: t, functionSelector: {matchLabels: {'bad key!': x}}}"), vec!["spec.functionSelector.matchLabels", "bad key!"]),
        ("bad selector label value", kafka("{topic: t, functionSelector: {matchLabels: {function: 'no spaces'}}}"), vec!["spec.functionSelector.matchLabels.function"]),
        ("bad selector operator", kafka("{topic: t, functionSelector: {matchExpressions: [{key: a, operator: Like, values: [x]}]}}"), vec!["matchExpressions[0].operator", "Like"]),
        ("In without values", kafka("{topic: t, functionSelector: {matchExpressions: [{key: a, operator: In}]}}"), vec!["matchExpressions[0].values", "at least one"]),
        ("selector of wrong type", kafka("{topic: t, functionSelector: 'function=f'}"), vec!["spec.functionSelector", "invalid type"]),
        ("topic of wrong type", kafka(&format!("{{topic: [a, b], {sel}}}")), vec!["spec.topic", "invalid type"]),
        ("unknown spec field (typo)", kafka(&format!("{{topci: t, {sel}}}")), vec!["topci", "unknown field"]),
        ("bad duration", kafka(&format!("{{topic: t, {sel}, delivery: {{timeout: ten seconds}}}}")), vec!["spec.delivery.timeout", "ten seconds"]),
        ("zero duration", kafka(&format!("{{topic: t, {sel}, delivery: {{retry: {{maxBackoff: 0s}}}}}}")), vec!["spec.delivery.retry.maxBackoff", "longer than zero"]),
        ("backoff bounds inverted", kafka(&format!("{{topic: t, {sel}, delivery: {{retry: {{initialBackoff: 1m, maxBackoff: 1s}}}}}}")), vec!["spec.delivery.retry.initialBackoff", "maxBackoff"]),
        ("bad ordering", kafka(&format!("{{topic: t, {sel}, delivery: {{ordering: random}}}}")), vec!["spec.delivery.ordering", "random"]),
        ("maxInFlight zero", kafka(&format!("{{topic: t, {sel}, delivery: {{maxInFlight: 0}}}}")), vec!["spec.delivery.maxInFlight"]),
        ("maxInFlight negative", kafka(&format!("{{topic: t, {sel}, delivery: {{maxInFlight: -4}}}}")), vec!["spec.delivery.maxInFlight", "invalid value"]),
        ("maxAttempts zero", kafka(&format!("{{topic: t, {sel}, delivery: {{retry: {{maxAttempts: 0}}}}}}")), vec!["spec.delivery.retry.maxAttempts"]),
        ("dead letter without topic", kafka(&format!("{{topic: t, {sel}, delivery: {{deadLetter: {{brokers: 'b:1'}}}}}}")), vec!["spec.delivery.deadLetter.topic", "required"]),
        ("bad brokers", kafka(&format!("{{topic: t, {sel}, brokers: 'localhost'}}")), vec!["spec.brokers", "host:port"]),
        ("rate limit zero", kafka(&format!("{{topic: t, {sel}, delivery: {{rateLimit: {{perSecond: 0}}}}}}")), vec!["spec.delivery.rateLimit.perSecond"]),
        ("function timeout not a number", function("{name: f}", "{timeout: soon}"), vec!["spec.timeout", "soon"]),
        ("function timeout negative", function("{name: f}", "{timeout: '-5'}"), vec!["spec.timeout", "positive"]),
        ("function url annotation not a URL", function("{name: f, annotations: {kubeless.io/url: 'not a url'}}", "{}"), vec!["kubeless.io/url", "not a URL"]),
        ("function url annotation wrong scheme", function("{name: f, annotations: {kubeless.io/url: 'ftp://x'}}", "{}"), vec!["kubeless.io/url", "ftp"]),
        ("function service port out of range", function("{name: f}", "{service: {ports: [{port: 70000}]}}"), vec!["spec.service.ports[0].port"]),
        ("kinesis without stream", "apiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {name: k}\nspec: {function-name: f, aws-region: us-west-2}\n".to_string(), vec!["spec.stream", "required"]),
        ("kinesis bad region", "apiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {name: k}\nspec: {function-name: f, aws-region: 'US West', stream: s}\n".to_string(), vec!["spec.aws-region", "US West"]),
        ("kinesis bad endpoint", "apiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {name: k}\nspec: {function-name: f, aws-region: us-west-2, stream: s, endpoint: 'localhost:4566'}\n".to_string(), vec!["spec.endpoint", "localhost:4566"]),
        ("kinesis AT_TIMESTAMP without timestamp", "apiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {name: k}\nspec: {function-name: f, aws-region: us-west-2, stream: s, startingPosition: AT_TIMESTAMP}\n".to_string(), vec!["spec.timestamp", "AT_TIMESTAMP"]),
        ("kinesis bad starting position", "apiVersion: kubeless.io/v1beta1\nkind: KinesisTrigger\nmetadata: {name: k}\nspec: {function-name: f, aws-region: us-west-2, stream: s, startingPosition: OLDEST}\n".to_string(), vec!["spec.startingPosition", "OLDEST"]),
        ("cron without schedule", "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: c}\nspec: {function-name: f}\n".to_string(), vec!["spec.schedule", "required"]),
        ("cron bad schedule", "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: c}\nspec: {function-name: f, schedule: 'every minute'}\n".to_string(), vec!["spec.schedule", "every minute", "not a cron schedule"]),
        ("cron unknown timezone", "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: c}\nspec: {function-name: f, schedule: '* * * * *', timezone: Mars/Base}\n".to_string(), vec!["spec.timezone", "Mars/Base"]),
        ("cron bad concurrency policy", "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: c}\nspec: {function-name: f, schedule: '* * * * *', concurrencyPolicy: Sometimes}\n".to_string(), vec!["spec.concurrencyPolicy", "Sometimes"]),
        ("nats bad subject", "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {name: n}\nspec: {topic: 'a..b', functionSelector: {matchLabels: {function: f}}}\n".to_string(), vec!["spec.topic", "a..b", "not a NATS subject"]),
        ("nats bad stream name", "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {name: n}\nspec: {topic: a, functionSelector: {matchLabels: {function: f}}, jetstream: {stream: 'a.b'}}\n".to_string(), vec!["spec.jetstream.stream", "a.b"]),
        ("nats dead letter to a topic", "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {name: n}\nspec: {topic: a, functionSelector: {matchLabels: {function: f}}, delivery: {deadLetter: {topic: dlq}}}\n".to_string(), vec!["spec.delivery.deadLetter.topic", "NATSTrigger"]),
        ("nats bad url", "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {name: n}\nspec: {topic: a, url: 'not a url', functionSelector: {matchLabels: {function: f}}}\n".to_string(), vec!["spec.url", "not a url"]),
        ("kafka dead letter to a subject", kafka(&format!("{{topic: t, {sel}, delivery: {{deadLetter: {{subject: dlq}}}}}}")), vec!["spec.delivery.deadLetter.subject", "KafkaTrigger"]),
        ("secret with bad base64", "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {token: 'not base64!'}\n".to_string(), vec!["Secret default/s", "data.token"]),
        ("secret with kubeless apiVersion", "apiVersion: kubeless.io/v1beta1\nkind: Secret\nmetadata: {name: s}\n".to_string(), vec!["apiVersion", "use v1"]),
        ("nats auth without secret name", "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata: {name: n}\nspec: {topic: a, auth: {}, functionSelector: {matchLabels: {function: f}}}\n".to_string(), vec!["spec.auth", "secret"]),
        ("http bad gateway", "apiVersion: kubeless.io/v1beta1\nkind: HTTPTrigger\nmetadata: {name: h}\nspec: {function-name: f, gateway: apache}\n".to_string(), vec!["spec.gateway", "apache"]),
    ]
}

#[test]
fn every_kind_of_bad_manifest_gets_an_error_naming_file_document_and_field() {
    let cases = cases();
    assert!(cases.len() >= 20);
    for (name, doc, words) in cases {
        // The bad document sits between two good ones; both of those must still load.
        let text = format!("{GOOD_TRIGGER}---\n{doc}");
        let path = PathBuf::from("/manifests/case.yaml");
        let set = parse_files(&[(path, text)]);
        assert_eq!(set.errors.len(), 1, "{name}: expected one error, got {:?}", set.errors);
        let msg = set.errors[0].to_string();
        assert!(
            msg.starts_with("/manifests/case.yaml (document 2)"),
            "{name}: error must name file and document: {msg}"
        );
        for w in words {
            assert!(msg.contains(w), "{name}: error must mention {w:?}: {msg}");
        }
        assert!(
            set.resources.iter().any(|r| r.object.id() == "default/good"),
            "{name}: the good trigger must still load"
        );
    }
}

#[test]
fn errors_name_the_resource_once_it_is_known() {
    let set = parse_files(&[(PathBuf::from("a.yaml"), kafka("{topic: t}"))]);
    assert!(set.errors[0].to_string().contains("KafkaTrigger ns/bad"), "{}", set.errors[0]);
}

#[test]
fn duplicate_names_keep_the_first_definition_and_report_the_second() {
    let files =
        vec![(PathBuf::from("a.yaml"), GOOD_TRIGGER.to_string()), (PathBuf::from("b.yaml"), GOOD_TRIGGER.to_string())];
    let set = parse_files(&files);
    assert_eq!(set.resources.len(), 1);
    assert_eq!(set.resources[0].file, PathBuf::from("a.yaml"));
    let msg = set.errors[0].to_string();
    assert!(msg.starts_with("b.yaml (document 1), KafkaTrigger default/good: duplicate"), "{msg}");
    assert!(msg.contains("a.yaml"), "{msg}");
}

#[test]
fn the_same_name_in_another_namespace_or_kind_is_not_a_duplicate() {
    let other_ns = GOOD_TRIGGER.replace("{name: good}", "{name: good, namespace: other}");
    let nats = GOOD_TRIGGER.replace("KafkaTrigger", "NATSTrigger");
    let set = parse_files(&[(PathBuf::from("a.yaml"), format!("{GOOD_TRIGGER}---\n{other_ns}---\n{nats}"))]);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert_eq!(set.resources.len(), 3);
}

#[test]
fn kubeless_manifests_load_unchanged() {
    // The examples from Kubeless's own docs and CLI.
    let text = r#"
apiVersion: kubeless.io/v1beta1
kind: Function
metadata: {name: get-python, labels: {created-by: kubeless, function: get-python}}
spec: {runtime: python2.7, timeout: "180", handler: helloget.foo, deps: "", checksum: "sha256:d251999dcbfdeccec385606fd0aec385b214cfc74ede8b6c9e47af71728f6e9a",
       function-content-type: text, function: "def foo(event, context):\n    return 'hello world'\n"}
---
apiVersion: kubeless.io/v1beta1
kind: KafkaTrigger
metadata: {name: python-demo-trigger, labels: {created-by: kubeless}}
spec: {functionSelector: {matchLabels: {created-by: kubeless, function: python-demo}}, topic: python-demo}
---
apiVersion: kubeless.io/v1beta1
kind: NATSTrigger
metadata: {name: nats-trigger, labels: {created-by: kubeless}}
spec: {functionSelector: {matchLabels: {function: f}}, topic: "orders.>"}
---
apiVersion: kubeless.io/v1beta1
kind: KinesisTrigger
metadata: {name: test, labels: {created-by: kubeless}}
spec: {aws-region: us-west-2, function-name: post-python, secret: ec2, shard: shardId-000000000000, stream: my-kinesis-stream}
---
apiVersion: kubeless.io/v1beta1
kind: CronJobTrigger
metadata: {name: cron-test, labels: {created-by: kubeless}}
spec: {function-name: cron-test, schedule: "*/1 * * * *", payload: {foo: bar}}
---
apiVersion: kubeless.io/v1beta1
kind: HTTPTrigger
metadata: {name: cors-trigger, annotations: {nginx.ingress.kubernetes.io/enable-cors: "true"}}
spec: {function-name: get-python, host-name: example.com, path: echo}
"#;
    let set = parse_files(&[(PathBuf::from("kubeless.yaml"), text.to_string())]);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    let kinds: Vec<&str> = set.resources.iter().map(|r| r.resource.kind().as_str()).collect();
    assert_eq!(kinds, ["Function", "KafkaTrigger", "NATSTrigger", "KinesisTrigger", "CronJobTrigger", "HTTPTrigger"]);
}

#[test]
fn objects_exported_from_a_kubeless_cluster_load_with_empty_strings_as_unset() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kubeless");
    let mut files = Vec::new();
    for name in ["exported.yaml", "legacy.yaml"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("test data");
        files.push((PathBuf::from(name), text));
    }
    let set = parse_files(&files);
    assert!(set.errors.is_empty(), "{:?}", set.errors);
    assert_eq!(set.resources.len(), 10);
    let kinesis = set
        .resources
        .iter()
        .find_map(|r| match &r.resource {
            Resource::Kinesis(t, _) => Some(t.clone()),
            _ => None,
        })
        .expect("the KinesisTrigger");
    // `endpoint: ""` is no endpoint override (not "not an http(s) URL"), `shard: ""` every shard (not
    // a shard named ""), `secret: ""` the default credential chain (not a missing Secret).
    assert_eq!((kinesis.spec.endpoint, kinesis.spec.shard, kinesis.spec.secret), (None, None, None));
}

#[test]
fn a_secret_that_does_not_parse_is_reported_without_its_values() {
    for (doc, secret) in [
        ("stringData: {password: 84629173}", "84629173"),
        ("stringData: {password: [s3cr3t-list]}", "s3cr3t-list"),
        ("data: {password: 'not base64 !! hunter2'}", "hunter2"),
    ] {
        let text = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\n{doc}\n");
        let set = parse_files(&[(PathBuf::from("s.yaml"), text)]);
        assert_eq!(set.errors.len(), 1, "{doc}: {:?}", set.errors);
        let error = set.errors[0].to_string();
        assert!(!error.contains(secret), "the value shows: {error}");
        assert!(error.contains("Secret default/creds") && error.contains("password"), "{error}");
    }
}
