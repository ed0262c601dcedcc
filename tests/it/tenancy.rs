//! One broker, many teams: against a real kube-apiserver, with application teams as namespaced
//! identities (their own tokens, RBAC in their namespace only) applying what they may, the daemon
//! lends them neither its credentials, nor its network position, nor its rights, nor other teams'
//! consumer groups, and one team's broken trigger does not make the daemon unready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::fake_kafka::FakeKafka;
use crate::common::kubeapi::{KubeApi, SPARE_TOKEN, SPARE_USER};
use crate::common::*;

async fn cluster() -> KubeApi {
    let api = KubeApi::start().await;
    api.install_crds().await;
    api
}

/// A Function in `ns` reached at `url` (the cluster's admin must allow it), labelled `function: name`.
fn function_in(ns: &str, name: &str, url: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{function: {name}}}\n  annotations: {{kubeless.io/url: \"{url}\"}}\nspec: {{runtime: python3.7, handler: h.f}}\n"
    )
}

fn kafka_trigger_in(ns: &str, name: &str, topic: &str, function: &str, extra: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  topic: {topic}\n  functionSelector: {{matchLabels: {{function: {function}}}}}\n{extra}"
    )
}

/// `status.conditions[0]` of `kind/name` in `ns` as `status/reason/message`, once it is written.
async fn condition(api: &KubeApi, ns: &str, kind: &str, name: &str, done: impl Fn(&str) -> bool) -> String {
    let path = "{.status.conditions[0].status}/{.status.conditions[0].reason}/{.status.conditions[0].message}";
    api.wait_jsonpath(&["get", kind, name, "-n", ns], path, |s| !s.is_empty() && done(s)).await
}

/// The Warning Events in `ns`, as `(object name, reason, message)`.
fn warnings(api: &KubeApi, ns: &str) -> Vec<(String, String, String)> {
    let events = api.get_json(&["events", "-n", ns]).expect("events");
    events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "Warning")
        .map(|e| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            let note = if e["message"].is_string() { text(&e["message"]) } else { text(&e["note"]) };
            (text(&e["involvedObject"]["name"]), text(&e["reason"]), note)
        })
        .collect()
}

async fn wait_warning(api: &KubeApi, ns: &str, object: &str, reason: &str) -> String {
    let start = Instant::now();
    loop {
        if let Some((_, _, note)) = warnings(api, ns).into_iter().find(|(o, r, _)| o == object && r == reason) {
            return note;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no {reason} Event on {object}: {:?}", warnings(api, ns));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_kafka_password_goes_only_to_the_platform_brokers() {
    const PLATFORM_PASSWORD: &str = "platform-pw-7f3a91";
    const TEAM_PASSWORD: &str = "team-a-pw-19c2e8";
    let api = cluster().await;
    let team_a = api.tenant("team-a");
    let platform = FakeKafka::start().await;
    let tenants_broker = FakeKafka::start().await;
    let f = Function::start(Behaviour::Ok).await;
    let env = |tenancy: &'static str| {
        vec![
            ("KAFKA_ENABLE_SASL", "true"),
            ("KAFKA_USERNAME", "platform"),
            ("KAFKA_PASSWORD", PLATFORM_PASSWORD),
            ("KUBELESS_FUNCTION_URL_ALLOW", "*"),
            ("KUBELESS_TENANCY", tenancy),
        ]
    };
    let allow = format!("--tenant-brokers={}", tenants_broker.address);
    let mut daemon = Daemon::start_kube_with_defaults(&api.kubeconfig, &platform.address, &[&allow], &env("shared"));

    // Team A, with its own rights only: a trigger on the cluster's Kafka, one on a broker of its
    // own with its own credentials, one on that broker without any, and one on a broker the admin
    // never allowed.
    let own_broker = format!("  brokers: '{}'\n", tenants_broker.address);
    for yaml in [
        function_in("team-a", "f", &f.url),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: kafka-creds, namespace: team-a}}\nstringData: {{username: team-a, password: {TEAM_PASSWORD}}}\n"),
        kafka_trigger_in("team-a", "on-platform", "orders", "f", ""),
        kafka_trigger_in("team-a", "own-creds", "orders", "f", &format!("{own_broker}  auth: {{secret: kafka-creds}}\n")),
        kafka_trigger_in("team-a", "borrowing", "orders", "f", &own_broker),
        kafka_trigger_in("team-a", "elsewhere", "orders", "f", "  brokers: '127.0.0.2:9092'\n"),
    ] {
        api.apply_as(&team_a, &yaml);
    }

    // Each broker is reached and asked to authenticate: the platform's with the platform's
    // password, the team's broker with the team's.
    wait_for("the platform broker to get the platform password", Duration::from_secs(60), || {
        platform.saw(PLATFORM_PASSWORD)
    })
    .await;
    wait_for("the team's broker to get the team's password", Duration::from_secs(60), || {
        tenants_broker.saw(TEAM_PASSWORD)
    })
    .await;
    // The trigger without credentials keeps connecting there too, in plaintext.
    let seen = tenants_broker.connections();
    wait_for("more connections to the team's broker", Duration::from_secs(30), || {
        tenants_broker.connections() > seen + 2
    })
    .await;
    assert!(!tenants_broker.saw(PLATFORM_PASSWORD), "the platform password reached a tenant's broker");
    let got = condition(&api, "team-a", "kafkatrigger", "elsewhere", |s| s.starts_with("False/")).await;
    assert!(got.starts_with("False/BrokersNotAllowed/spec.brokers \"127.0.0.2:9092\""), "{got}");
    let note = wait_warning(&api, "team-a", "elsewhere", "BrokersNotAllowed").await;
    assert!(note.contains("--tenant-brokers"), "{note}");
    // The password is in no status, Event, log line or admin page either.
    let everything = format!(
        "{}{}{:?}{}",
        daemon.log_text(),
        daemon.status().await,
        warnings(&api, "team-a"),
        api.kubectl_ok(&["get", "kafkatriggers", "-A", "-o", "json"])
    );
    assert!(!everything.contains(PLATFORM_PASSWORD) && !everything.contains(TEAM_PASSWORD));

    // The control: where the admin trusts whoever writes triggers, the same "borrowing" trigger
    // does get the platform's password, so the check above is one that can fail.
    daemon.terminate();
    let _trusted = Daemon::start_kube_with_defaults(&api.kubeconfig, &platform.address, &[&allow], &env("trusted"));
    wait_for("a trusted daemon to lend its password", Duration::from_secs(60), || {
        tenants_broker.saw(PLATFORM_PASSWORD)
    })
    .await;
}

/// An application outside the broker: a consumer of `topic` in `group`, collecting the payloads.
struct App {
    received: Arc<Mutex<Vec<String>>>,
    assigned: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl App {
    fn start(brokers: &str, group: &str, topic: &str) -> Self {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let app = Self { received: Arc::default(), assigned: Arc::default(), stop: Arc::default() };
        let (received, assigned, stop) = (app.received.clone(), app.assigned.clone(), app.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    received
                        .lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into());
                }
                if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    assigned.store(true, Ordering::SeqCst);
                }
            }
        });
        app
    }

    fn count_of(&self, prefix: &str) -> usize {
        self.received.lock().expect("lock").iter().filter(|b| b.starts_with(prefix)).count()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_cannot_join_another_teams_or_an_applications_consumer_group() {
    let api = cluster().await;
    let (team_a, team_b) = (api.tenant("team-a"), api.tenant("team-b"));
    let kafka = Kafka::start().await;
    kafka.create_topic("payments", 2).await;
    let app = App::start(&kafka.brokers, "billing-app", "payments");
    wait_for("the application's consumer to own the partitions", Duration::from_secs(60), || {
        app.assigned.load(Ordering::SeqCst)
    })
    .await;
    let (fa, fb, thief) =
        tokio::join!(Function::start(Behaviour::Ok), Function::start(Behaviour::Ok), Function::start(Behaviour::Ok));
    let daemon = Daemon::start_kube(&api.kubeconfig, &kafka.brokers, &[], &[]);
    api.apply_as(&team_a, &function_in("team-a", "fa", &fa.url));
    api.apply_as(&team_a, &kafka_trigger_in("team-a", "pay", "payments", "fa", "  consumerGroup: shared\n"));
    daemon.wait_ready().await;

    // Team B names the same group, and the application's.
    api.apply_as(&team_b, &function_in("team-b", "fb", &fb.url));
    api.apply_as(&team_b, &function_in("team-b", "thief", &thief.url));
    api.apply_as(&team_b, &kafka_trigger_in("team-b", "pay", "payments", "fb", "  consumerGroup: shared\n"));
    api.apply_as(&team_b, &kafka_trigger_in("team-b", "steal", "payments", "thief", "  consumerGroup: billing-app\n"));
    let start = Instant::now();
    loop {
        let status = daemon.status().await;
        let consumers = status["consumers"].as_array().cloned().unwrap_or_default();
        let mut groups: Vec<&str> = consumers.iter().filter_map(|c| c["group"].as_str()).collect();
        groups.sort();
        if groups == ["team-a_shared", "team-b_billing-app", "team-b_shared"]
            && consumers.iter().all(|c| c["ready"] == true)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "groups {groups:?}: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let total = 300;
    let records = (0..total).map(|i| (Some(format!("k{}", i % 7)), format!("pay-{i}").into_bytes())).collect();
    kafka.publish_all("payments", records).await;
    let count = |f: &Function| f.received().iter().filter(|r| r.body.starts_with("pay-")).count();
    wait_for("every payment at team A, at the application and at team B's own groups", Duration::from_secs(90), || {
        count(&fa) >= total && app.count_of("pay-") >= total && count(&fb) >= total && count(&thief) >= total
    })
    .await;
    assert_eq!(fa.counts().values().filter(|n| **n > 1).count(), 0, "no duplicates at team A");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_url_outside_the_allow_list_is_never_called_and_url_passwords_show_nowhere() {
    const PASSWORD: &str = "hunter2-pw-5d1c";
    let api = cluster().await;
    let team_a = api.tenant("team-a");
    let (internal, allowed) = tokio::join!(Function::start(Behaviour::Ok), Function::start(Behaviour::Ok));
    let allowed_prefix = format!("{}/", allowed.url);
    let env = [("KUBELESS_FUNCTION_URL_ALLOW", allowed_prefix.as_str()), ("KUBELESS_MIN_CRON_INTERVAL", "1s")];
    let daemon = Daemon::start_kube_with_defaults(&api.kubeconfig, "127.0.0.1:1", &[], &env);
    let with_password = allowed.url.replace("http://", &format!("http://svc-user:{PASSWORD}@"));
    for yaml in [
        function_in("team-a", "internal", &format!("{}/admin/purge", internal.url)),
        function_in("team-a", "ok", &with_password),
        "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: poke, namespace: team-a}\nspec: {function-name: internal, schedule: '@every 1s', payload: {purge: all}}\n".to_string(),
        "apiVersion: kubeless.io/v1beta1\nkind: CronJobTrigger\nmetadata: {name: tick, namespace: team-a}\nspec: {function-name: ok, schedule: '@every 1s', payload: {hello: team}}\n".to_string(),
    ] {
        api.apply_as(&team_a, &yaml);
    }

    // The allowed function is called, its credentials sent as Basic auth.
    wait_for("ticks at the allowed function", Duration::from_secs(60), || allowed.delivered() >= 3).await;
    use base64::Engine as _;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("svc-user:{PASSWORD}")));
    assert_eq!(allowed.received()[0].headers.get("authorization"), Some(&basic));

    // The other is refused, says why, and gets nothing.
    let got = condition(&api, "team-a", "cronjobtrigger", "poke", |s| s.starts_with("False/")).await;
    assert!(got.starts_with("False/FunctionUrlNotAllowed/Function team-a/internal"), "{got}");
    assert!(got.contains("--function-url-allow"), "{got}");
    wait_warning(&api, "team-a", "poke", "FunctionUrlNotAllowed").await;
    let got = condition(&api, "team-a", "function", "internal", |s| s.starts_with("False/")).await;
    assert!(got.starts_with("False/FunctionUrlNotAllowed/"), "{got}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(internal.received().is_empty(), "the internal address was called: {:?}", internal.received());

    // The password is nowhere the daemon writes: /status, its log, statuses, Events.
    let ok_status = api.get_json(&["function", "ok", "-n", "team-a"]).expect("function")["status"].clone();
    assert!(ok_status["url"].as_str().is_some_and(|u| u.contains("svc-user:***@")), "{ok_status}");
    let status = daemon.status().await;
    assert!(status["consumers"].to_string().contains("svc-user:***@"), "{status}");
    let triggers = api.kubectl_ok(&["get", "cronjobtriggers", "-n", "team-a", "-o", "jsonpath={.items[*].status}"]);
    for (place, text) in [
        ("/status", status.to_string()),
        ("the log", daemon.log_text()),
        ("the Function's status", ok_status.to_string()),
        ("the triggers' status", triggers),
        ("Events", format!("{:?}", warnings(&api, "team-a"))),
    ] {
        assert!(!text.contains(PASSWORD), "the URL's password shows in {place}: {text}");
    }
}

fn deployed_function(ns: &str, name: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  runtime: python3.9\n  handler: h.f\n  function: \"def f(event, context):\\n    return 1\\n\"\n{spec_extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_asking_for_more_than_the_policy_allows_creates_nothing_and_says_why() {
    let api = cluster().await;
    let team_a = api.tenant("team-a");
    let _daemon = Daemon::start_kube_with_defaults(&api.kubeconfig, "127.0.0.1:1", &[], &[]);
    let pod = |spec: &str| format!("  deployment:\n    spec:\n      template:\n        spec:\n{spec}");
    let cases = [
        (
            "privileged",
            pod("          containers: [{name: f, securityContext: {privileged: true}}]\n"),
            "securityContext.privileged",
        ),
        ("hostpath", pod("          volumes: [{name: root, hostPath: {path: /}}]\n"), "volumes[0].hostPath"),
        ("hostnet", pod("          hostNetwork: true\n"), "hostNetwork"),
        ("borrowed-sa", pod("          serviceAccountName: kubeless-broker\n"), "serviceAccountName"),
        (
            "external-ip",
            "  service:\n    ports: [{port: 8080, targetPort: 8080}]\n    externalIPs: [203.0.113.7]\n".to_string(),
            "spec.service.externalIPs",
        ),
    ];
    for (name, extra, _) in &cases {
        api.apply_as(&team_a, &deployed_function("team-a", name, extra));
    }
    api.apply_as(&team_a, &deployed_function("team-a", "plain", ""));
    api.apply_as(
        &team_a,
        "apiVersion: kubeless.io/v1beta1\nkind: HTTPTrigger\nmetadata:\n  name: snippet\n  namespace: team-a\n  annotations: {nginx.ingress.kubernetes.io/configuration-snippet: 'proxy_pass http://169.254.169.254;'}\nspec: {function-name: plain, host-name: plain.example.com, gateway: nginx}\n",
    );

    // A plain function is deployed, without its ServiceAccount token.
    api.wait_jsonpath(&["get", "deployment", "plain", "-n", "team-a"], "{.metadata.name}", |s| s == "plain").await;
    let automount = api.kubectl_ok(&[
        "get",
        "deployment",
        "plain",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.spec.template.spec.automountServiceAccountToken}",
    ]);
    assert_eq!(automount, "false");
    for (name, _, field) in &cases {
        let got = condition(&api, "team-a", "function", name, |s| s.starts_with("False/")).await;
        assert!(got.starts_with("False/PolicyRefused/refused by the cluster's function policy"), "{name}: {got}");
        assert!(got.contains(field), "{name}: {got}");
        for kind in ["deployment", "service", "configmap"] {
            assert!(!api.kubectl(&["get", kind, name, "-n", "team-a"]).status.success(), "{kind} {name} was created");
        }
    }
    let note = wait_warning(&api, "team-a", "privileged", "PolicyRefused").await;
    assert!(note.contains("privileged"), "{note}");
    let got = condition(&api, "team-a", "httptrigger", "snippet", |s| s.starts_with("False/")).await;
    assert!(got.starts_with("False/PolicyRefused/") && got.contains("configuration-snippet"), "{got}");
    assert!(!api.kubectl(&["get", "ingress.v1.networking.k8s.io", "snippet", "-n", "team-a"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_with_an_unreachable_broker_is_not_ready_and_the_daemon_is() {
    let api = cluster().await;
    let team_a = api.tenant("team-a");
    let f = Function::start(Behaviour::Ok).await;
    let daemon = Daemon::start_kube(&api.kubeconfig, "127.0.0.1:1", &[], &[]);
    api.apply_as(&team_a, &function_in("team-a", "f", &f.url));
    api.apply_as(&team_a, &kafka_trigger_in("team-a", "dead", "orders", "f", ""));
    let got = condition(&api, "team-a", "kafkatrigger", "dead", |s| s.starts_with("False/")).await;
    assert!(!got.is_empty(), "{got}");
    for _ in 0..10 {
        let (code, body) = daemon.get("/readyz").await.unwrap_or_default();
        assert_eq!(code, 200, "one team's broken trigger made the daemon unready: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = daemon.status().await;
    assert_eq!(status["consumers"][0]["trigger"], "team-a/dead", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_status_answers_only_its_bearer() {
    let api = cluster().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-for-status\n").expect("token");
    let flag = format!("--admin-token-file={}", token_file.display());
    let daemon = Daemon::start_kube(&api.kubeconfig, "127.0.0.1:1", &[&flag], &[]);
    let client = reqwest::Client::new();
    let status = |token: Option<&'static str>| {
        let mut request = client.get(format!("{}/status", daemon.admin));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or_default() }
    };
    let start = Instant::now();
    while status(Some("t0ken-for-status")).await != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "the admin server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(None).await, 403, "no token, even from loopback");
    assert_eq!(status(Some("wrong")).await, 403);
    let (code, _) = daemon.get("/metrics").await.unwrap_or_default();
    assert_eq!(code, 200, "metrics stay open to the scraper");
    // The loopback status address serves it as ever.
    assert_eq!(daemon.get("/status").await.map(|(c, _)| c), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_status_is_served_on_the_status_address_only() {
    let api = cluster().await;
    let daemon = Daemon::start_kube(&api.kubeconfig, "127.0.0.1:1", &[], &[]);
    daemon.wait_ready().await;
    let on_admin = reqwest::get(format!("{}/status", daemon.admin)).await.expect("admin address");
    assert_eq!(on_admin.status().as_u16(), 403);
    assert!(on_admin.text().await.unwrap_or_default().contains("--status-addr"));
    assert_eq!(daemon.get("/status").await.map(|(c, _)| c), Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_kubeless_config_changes_no_deployment_or_service() {
    let api = cluster().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    for file in ["01-namespace.yaml", "02-rbac.yaml"] {
        api.kubectl_ok(&["apply", "-f", &root.join(file).display().to_string()]);
    }
    // A daemon identity with the broker's rights in `default`, leases there, and kubeless-config
    // readable through its own binding, which the test takes away for a while.
    let config_reader = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: config-reader, namespace: kubeless}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: config-reader}}\nsubjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {SPARE_USER}}}]\n"
    );
    api.apply_ok(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: broker, namespace: default}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubeless-broker}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {SPARE_USER}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: leases, namespace: default}}
rules: [{{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, list, create, update]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: leases, namespace: default}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: leases}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {SPARE_USER}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: config-reader, namespace: kubeless}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, list, watch]}}]
---
{config_reader}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: kubeless-config, namespace: kubeless}}
data: {{service-type: NodePort}}
"#
    ));
    let kubeconfig = api.kubeconfig_for(SPARE_TOKEN, "default");
    let env = [("KUBELESS_NAMESPACE", "kubeless"), ("KUBELESS_CONFIG", "kubeless-config"), ("POD_NAME", "b-0")];
    let flags = ["--namespace", "default", "--leader-election-namespace", "default"];
    let daemon = Daemon::start_kube(&kubeconfig, "127.0.0.1:1", &flags, &env);
    api.apply_ok(&deployed_function("default", "fn", ""));
    api.wait_jsonpath(&["get", "service", "fn"], "{.spec.type}", |t| t == "NodePort").await;
    api.wait_jsonpath(&["get", "deployment", "fn"], "{.metadata.name}", |s| s == "fn").await;
    let versions = || {
        ["deployment", "service"]
            .map(|kind| api.kubectl_ok(&["get", kind, "fn", "-o", "jsonpath={.metadata.resourceVersion}"]))
    };
    let before = versions();
    let handler = api.kubectl_ok(&["get", "configmap", "fn", "-o", "jsonpath={.data.handler}"]);

    // kubeless-config becomes unreadable; a hand edit of the Function's ConfigMap makes the
    // reconciler run meanwhile.
    api.kubectl_ok(&["delete", "rolebinding", "config-reader", "-n", "kubeless"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.kubectl_ok(&["patch", "configmap", "fn", "--type", "merge", "-p", r#"{"data":{"handler":"edited.by_hand"}}"#]);
    wait_for("the reconciler to meet the unreadable kubeless-config", Duration::from_secs(30), || {
        daemon.log_text().contains("cannot read ConfigMap kubeless/kubeless-config")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(versions(), before, "a Deployment or Service changed while kubeless-config was unreadable");
    assert_eq!(api.kubectl_ok(&["get", "service", "fn", "-o", "jsonpath={.spec.type}"]), "NodePort");

    // Readable again: the reconciler catches up (the hand edit is repaired) with the admin's config.
    api.apply_ok(&config_reader);
    api.wait_jsonpath(&["get", "configmap", "fn"], "{.data.handler}", |h| h == handler).await;
    assert_eq!(api.kubectl_ok(&["get", "service", "fn", "-o", "jsonpath={.spec.type}"]), "NodePort");
}
