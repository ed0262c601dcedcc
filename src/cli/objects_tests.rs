//! Fixtures: the objects Kubeless's CLI printed with `--dryrun -o json` for the same flags
//! (`cmd/kubeless/function/function.go` `getFunctionDescription`, `trigger/*/create.go`), with
//! Go's zero values (`null`, `""`, `{}`, `[]`, `creationTimestamp: null`, the empty
//! `horizontalPodAutoscaler` and `status`) left out: they carry nothing and the API server's
//! pruning drops most of them. Where we differ on purpose the test says so.

use serde_json::{json, Value};

use super::*;

/// Drops Go's zero values, recursively.
fn pruned(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, pruned(v))).filter(|(_, v)| !is_empty(v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(pruned).collect()),
        other => other,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn as_json<T: serde::Serialize>(obj: &T) -> Value {
    pruned(serde_json::to_value(obj).expect("serializes"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

const CODE: &str = "def foo(event, context):\n    return event['data']\n";

#[test]
fn content_is_typed_and_summed_as_kubeless_did() {
    let text = content("hello.py", CODE.as_bytes());
    assert_eq!(text.content_type, "text");
    assert_eq!(text.function, CODE);
    assert_eq!(text.checksum, format!("sha256:{}", hex::encode(Sha256::digest(CODE.as_bytes()))));

    let binary = content("func.zip", &[0x50, 0x4b, 0x03, 0x04, 0xff, 0x00]);
    assert_eq!(binary.content_type, "base64+zip");
    assert_eq!(binary.function, "UEsDBP8A");
    let tar = content("/tmp/code.tar.gz", &[0x1f, 0x8b, 0x08, 0xff]);
    assert_eq!(tar.content_type, "base64+compressedtar");
    // A zip that happens to be valid UTF-8 is still sent as base64 (the runtime unzips it).
    assert_eq!(content("a.zip", b"PK").content_type, "text+zip");
    assert_eq!(content("a.zip", b"PK").function, "UEs=");

    let url = content("https://example.com/code/func.tgz?token=1", b"bytes");
    assert_eq!(url.content_type, "url+compressedtar");
    assert_eq!(url.function, "https://example.com/code/func.tgz?token=1");
    assert_eq!(url.checksum, format!("sha256:{}", hex::encode(Sha256::digest(b"bytes"))));
}

#[test]
fn key_values_split_at_the_first_equals_or_colon() {
    assert_eq!(key_value("a=b"), ("a".into(), "b".into()));
    assert_eq!(key_value("a:b=c"), ("a".into(), "b=c".into()));
    assert_eq!(key_value("url=http://x"), ("url".into(), "http://x".into()));
    assert_eq!(key_value("bare"), ("bare".into(), String::new()));
}

#[test]
fn selectors_parse_like_kubectl() {
    let s = parse_selector("created-by=kubeless,function==hello").expect("valid");
    assert_eq!(
        serde_json::to_value(&s).expect("json"),
        json!({"matchLabels": {"created-by": "kubeless", "function": "hello"}})
    );
    let s = parse_selector("tier in (a, b),env!=prod,app,!legacy,x notin (y)").expect("valid");
    assert_eq!(
        serde_json::to_value(&s).expect("json"),
        json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "env", "operator": "NotIn", "values": ["prod"]},
            {"key": "app", "operator": "Exists"},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "x", "operator": "NotIn", "values": ["y"]},
        ]})
    );
    assert_eq!(format_selector(Some(&s)), "tier in (a,b),env notin (prod),app,!legacy,x notin (y)");
    for bad in ["", "a=b,,c=d", "a=b c", "a=(b)", "=b", "a=b/c", "tier in a"] {
        let e = parse_selector(bad).expect_err(bad);
        assert_eq!(e.flag, "--function-selector", "{bad}");
    }
}

#[test]
fn quantities_are_checked() {
    for ok in ["128Mi", "1", "0.5", "100m", "1e3", "2G", "+1.5Gi"] {
        assert!(check_quantity("--memory", ok).is_ok(), "{ok}");
    }
    for bad in ["", "128MB", "abc", "1.2.3", "Mi", "1e"] {
        assert!(check_quantity("--memory", bad).is_err(), "{bad}");
    }
}

/// `kubeless function deploy hello --runtime python3.7 --handler hello.foo --from-file hello.py
/// --dependencies requirements.txt -l team=a,tier:web -e K1=v1,K2:v2 --memory 128Mi --cpu 100m
/// --secrets creds --node-selectors disk=ssd --service-account fn-sa --runtime-image my/img:1
/// --timeout 60 --port 9090 --servicePort 80 --headless -n prod --dryrun -o json`.
#[test]
fn function_deploy_matches_kubeless_field_for_field() {
    let code = content("hello.py", CODE.as_bytes());
    let change = FunctionChange {
        runtime: Some("python3.7".into()),
        handler: Some("hello.foo".into()),
        code: Some(code.clone()),
        deps: Some("requests==2.31.0\n".into()),
        labels: strings(&["team=a", "tier:web"]),
        env: Some(strings(&["K1=v1", "K2:v2"])),
        secrets: strings(&["creds"]),
        node_selectors: Some(strings(&["disk=ssd"])),
        service_account: Some("fn-sa".into()),
        memory: Some("128Mi".into()),
        cpu: Some("100m".into()),
        runtime_image: Some("my/img:1".into()),
        timeout: Some("60".into()),
        port: Some(9090),
        service_port: Some(80),
        headless: Some(true),
        ..FunctionChange::default()
    }
    .with_deploy_defaults();
    change.validate().expect("valid flags");
    let labels = json!({"created-by": "kubeless", "function": "hello", "team": "a", "tier": "web"});
    let kubeless = json!({
        "kind": "Function",
        "apiVersion": "kubeless.io/v1beta1",
        "metadata": {"name": "hello", "namespace": "prod", "labels": labels},
        "spec": {
            "handler": "hello.foo",
            "function": CODE,
            "function-content-type": "text",
            "checksum": code.checksum,
            "runtime": "python3.7",
            "timeout": "60",
            "deps": "requests==2.31.0\n",
            "deployment": {"spec": {"template": {"spec": {
                "volumes": [{"name": "creds-vol", "secret": {"secretName": "creds"}}],
                "containers": [{
                    "image": "my/img:1",
                    "env": [{"name": "K1", "value": "v1"}, {"name": "K2", "value": "v2"}],
                    "resources": {
                        "limits": {"cpu": "100m", "memory": "128Mi"},
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                    },
                    "volumeMounts": [{"name": "creds-vol", "mountPath": "/creds"}],
                    "imagePullPolicy": "Always",
                }],
                "nodeSelector": {"disk": "ssd"},
                "serviceAccountName": "fn-sa",
            }}}},
            "service": {
                "ports": [{"name": "http-function-port", "protocol": "TCP", "port": 80, "targetPort": 9090}],
                "selector": labels,
                "clusterIP": "None",
                "type": "ClusterIP",
            },
        },
    });
    assert_eq!(as_json(&new_function("hello", "prod", &change)), kubeless);
}

/// `kubeless function deploy tiny --runtime nodejs14 --handler h.f --from-file URL.zip`.
#[test]
fn minimal_function_and_url_code_match_kubeless() {
    let code = content("https://example.com/f.zip", b"zip bytes");
    let change = FunctionChange {
        runtime: Some("nodejs14".into()),
        handler: Some("h.f".into()),
        code: Some(code.clone()),
        ..FunctionChange::default()
    }
    .with_deploy_defaults();
    let labels = json!({"created-by": "kubeless", "function": "tiny"});
    let kubeless = json!({
        "kind": "Function",
        "apiVersion": "kubeless.io/v1beta1",
        "metadata": {"name": "tiny", "namespace": "default", "labels": labels},
        "spec": {
            "handler": "h.f",
            "function": "https://example.com/f.zip",
            "function-content-type": "url+zip",
            "checksum": code.checksum,
            "runtime": "nodejs14",
            "timeout": "180",
            "deployment": {"spec": {"template": {"spec": {"containers": [{"imagePullPolicy": "Always"}]}}}},
            "service": {
                "ports": [{"name": "http-function-port", "protocol": "TCP", "port": 8080, "targetPort": 8080}],
                "selector": labels,
                "type": "ClusterIP",
            },
        },
    });
    assert_eq!(as_json(&new_function("tiny", "default", &change)), kubeless);
}

/// Kubeless wrote `cpu: "0"` into both limits and requests when only `--memory` was given; a
/// zero CPU limit is not what anyone asked for, so only the given resource is written.
#[test]
fn only_the_given_resource_is_limited() {
    let change = FunctionChange { memory: Some("64Mi".into()), ..FunctionChange::default() }.with_deploy_defaults();
    let f = as_json(&new_function("m", "default", &change));
    assert_eq!(
        f["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"],
        json!({"limits": {"memory": "64Mi"}, "requests": {"memory": "64Mi"}})
    );
}

#[test]
fn update_changes_only_what_was_given() {
    let deploy = FunctionChange {
        runtime: Some("python3.7".into()),
        handler: Some("hello.foo".into()),
        code: Some(content("hello.py", CODE.as_bytes())),
        env: Some(strings(&["A=1"])),
        memory: Some("128Mi".into()),
        secrets: strings(&["creds"]),
        port: Some(9090),
        service_port: Some(80),
        ..FunctionChange::default()
    }
    .with_deploy_defaults();
    let before = new_function("hello", "default", &deploy);
    let mut after = before.clone();
    // A user's own field under spec.deployment survives.
    after.spec.deployment.as_mut().expect("deployment")["spec"]["replicas"] = json!(3);
    let marked = as_json(&after);

    update_function(&mut after, &FunctionChange { cpu: Some("250m".into()), ..FunctionChange::default() });
    let mut expected = marked.clone();
    let container = &mut expected["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0];
    container["resources"]["limits"]["cpu"] = json!("250m");
    container["resources"]["requests"]["cpu"] = json!("250m");
    assert_eq!(as_json(&after), expected, "--cpu changes the CPU only");

    update_function(
        &mut after,
        &FunctionChange {
            handler: Some("hello.bar".into()),
            labels: strings(&["team=b"]),
            secrets: strings(&["creds"]),
            ..FunctionChange::default()
        },
    );
    let json = as_json(&after);
    assert_eq!(json["spec"]["handler"], "hello.bar");
    assert_eq!(json["spec"]["function"], CODE, "the code is kept");
    assert_eq!(json["spec"]["runtime"], "python3.7");
    assert_eq!(json["metadata"]["labels"]["team"], "b");
    assert_eq!(json["spec"]["service"]["selector"]["team"], "b", "the Service selector follows the labels");
    assert_eq!(
        json["spec"]["service"]["ports"][0],
        json!({"name": "http-function-port", "protocol": "TCP", "port": 80, "targetPort": 9090})
    );
    let pod = &json["spec"]["deployment"]["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"].as_array().map(Vec::len), Some(1), "a secret already mounted is not mounted twice");
    assert_eq!(pod["containers"][0]["env"], json!([{"name": "A", "value": "1"}]));
    assert_eq!(json["spec"]["deployment"]["spec"]["replicas"], 3);

    update_function(
        &mut after,
        &FunctionChange { port: Some(7070), headless: Some(true), ..FunctionChange::default() },
    );
    let json = as_json(&after);
    assert_eq!(json["spec"]["service"]["ports"][0]["port"], 80, "an explicit service port stays");
    assert_eq!(json["spec"]["service"]["ports"][0]["targetPort"], 7070);
    assert_eq!(json["spec"]["service"]["clusterIP"], "None");
}

#[test]
fn bad_function_flags_name_the_flag() {
    let cases = [
        (FunctionChange { image_pull_policy: Some("Sometimes".into()), ..Default::default() }, "--image-pull-policy"),
        (FunctionChange { port: Some(0), ..Default::default() }, "--port"),
        (FunctionChange { service_port: Some(70000), ..Default::default() }, "--servicePort"),
        (FunctionChange { timeout: Some("soon".into()), ..Default::default() }, "--timeout"),
        (FunctionChange { memory: Some("lots".into()), ..Default::default() }, "--memory"),
        (FunctionChange { cpu: Some("1 core".into()), ..Default::default() }, "--cpu"),
    ];
    for (change, flag) in cases {
        assert_eq!(change.validate().expect_err(flag).flag, flag);
    }
}

/// `kubeless trigger kafka create orders --trigger-topic orders --function-selector
/// created-by=kubeless,function=hello -n prod --dryrun -o json`, and the same for NATS.
#[test]
fn kafka_and_nats_triggers_match_kubeless() {
    let selector = parse_selector("created-by=kubeless,function=hello").expect("valid");
    let kubeless = |kind: &str| {
        json!({
            "kind": kind,
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "orders", "namespace": "prod", "labels": {"created-by": "kubeless"}},
            "spec": {
                "functionSelector": {"matchLabels": {"created-by": "kubeless", "function": "hello"}},
                "topic": "orders",
            },
        })
    };
    assert_eq!(as_json(&kafka_trigger("orders", "prod", "orders", selector.clone())), kubeless("KafkaTrigger"));
    assert_eq!(as_json(&nats_trigger("orders", "prod", "orders", selector)), kubeless("NATSTrigger"));
}

/// `kubeless trigger kinesis create k --function-name hello --aws-region us-west-2 --stream s
/// --shard-id shardId-000000000000 --secret ec2 --endpoint http://localhost:4567`.
#[test]
fn kinesis_trigger_matches_kubeless() {
    let change = KinesisChange {
        function_name: Some("hello".into()),
        region: Some("us-west-2".into()),
        stream: Some("s".into()),
        shard: Some("shardId-000000000000".into()),
        secret: Some("ec2".into()),
        endpoint: Some("http://localhost:4567".into()),
    };
    assert_eq!(
        as_json(&kinesis_trigger("k", "default", &change)),
        json!({
            "kind": "KinesisTrigger",
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "k", "namespace": "default", "labels": {"created-by": "kubeless"}},
            "spec": {
                "function-name": "hello",
                "aws-region": "us-west-2",
                "stream": "s",
                "shard": "shardId-000000000000",
                "secret": "ec2",
                "endpoint": "http://localhost:4567",
            },
        })
    );
}

/// `kubeless trigger cronjob create tick --function hello --schedule "*/5 * * * *" -p
/// '{"a": 1}'`, and the trigger `function deploy --schedule` makes.
#[test]
fn cronjob_triggers_match_kubeless() {
    let payload = parse_payload("--payload", r#"{"a": 1}"#).expect("JSON");
    assert_eq!(
        as_json(&cronjob_trigger("tick", "default", "hello", "*/5 * * * *", Some(payload))),
        json!({
            "kind": "CronJobTrigger",
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "tick", "namespace": "default", "labels": {"created-by": "kubeless"}},
            "spec": {"function-name": "hello", "schedule": "*/5 * * * *", "payload": {"a": 1}},
        })
    );
    assert_eq!(
        as_json(&function_schedule("hello", "prod", "@hourly")),
        json!({
            "kind": "CronJobTrigger",
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "hello", "namespace": "prod", "labels": {"created-by": "kubeless", "function": "hello"}},
            "spec": {"function-name": "hello", "schedule": "@hourly"},
        })
    );
    assert_eq!(parse_payload("--payload", "{nope").expect_err("bad").flag, "--payload");
}

/// `kubeless trigger http create web --function-name hello --hostname hello.example.com --path
/// api --gateway traefik --tls-secret tls --basic-auth-secret auth --cors-enable`.
#[test]
fn http_trigger_matches_kubeless() {
    let change = HttpChange {
        function_name: Some("hello".into()),
        hostname: Some("hello.example.com".into()),
        path: Some("api".into()),
        tls_acme: Some(false),
        tls_secret: Some("tls".into()),
        gateway: Some("traefik".into()),
        basic_auth_secret: Some("auth".into()),
        cors_enable: Some(true),
    };
    change.validate().expect("valid");
    assert_eq!(
        as_json(&http_trigger("web", "default", &change)),
        json!({
            "kind": "HTTPTrigger",
            "apiVersion": "kubeless.io/v1beta1",
            "metadata": {"name": "web", "namespace": "default", "labels": {"created-by": "kubeless"}},
            "spec": {
                "function-name": "hello",
                "host-name": "hello.example.com",
                "path": "api",
                "tls-secret": "tls",
                "gateway": "traefik",
                "basic-auth-secret": "auth",
                "cors-enable": true,
            },
        })
    );
    let server = url::Url::parse("https://192.168.99.100:8443").expect("url");
    assert_eq!(local_hostname("hello", &server).as_deref(), Some("hello.192.168.99.100.nip.io"));
    let bad = HttpChange { gateway: Some("envoy".into()), ..HttpChange::default() };
    assert_eq!(bad.validate().expect_err("envoy").flag, "--gateway");
    let both = HttpChange { tls_acme: Some(true), tls_secret: Some("t".into()), ..HttpChange::default() };
    assert_eq!(both.validate().expect_err("both").flag, "--enableTLSAcme");
}

/// `kubeless autoscale create hello --min 1 --max 5 --metric qps --value 10` and `--metric cpu
/// --value 70` (Kubeless's `getHorizontalAutoscaleDefinition`).
#[test]
fn autoscalers_match_kubeless() {
    let f = new_function("hello", "default", &FunctionChange::default().with_deploy_defaults());
    let qps = autoscaler(&f, 1, 5, "qps", "10").expect("valid");
    assert_eq!(
        qps["spec"]["metrics"],
        json!([{"type": "Object", "object": {"metricName": "function_calls", "target": {"kind": "Service", "name": "hello"}, "targetValue": "10"}}])
    );
    assert_eq!(qps["spec"]["maxReplicas"], 5);
    assert_eq!(qps["metadata"]["labels"]["function"], "hello");
    let cpu = autoscaler(&f, 2, 2, "cpu", "70").expect("valid");
    assert_eq!(
        cpu["spec"]["metrics"],
        json!([{"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 70}}])
    );
    assert_eq!(autoscaler(&f, 1, 2, "memory", "1").expect_err("metric").flag, "--metric");
    assert_eq!(autoscaler(&f, 3, 2, "cpu", "1").expect_err("range").flag, "--max");
    assert_eq!(autoscaler(&f, 1, 2, "cpu", "lots").expect_err("value").flag, "--value");
}
