//! Why a trigger is not delivering, as `kubectl get` shows it: each failure's reason (typed from
//! the connector up) becomes the `Ready` condition's reason, and a failure that cannot go away by
//! itself (a configuration the client refuses) is not retried until the trigger changes.

use std::time::Duration;

use crate::common::kubeapi::KubeApi;
use crate::common::*;

/// `status.conditions[0]` of the trigger as `status/reason/message`, once `done` holds.
async fn condition(api: &KubeApi, kind: &str, name: &str, done: impl Fn(&str) -> bool) -> String {
    let path = "{.status.conditions[0].status}/{.status.conditions[0].reason}/{.status.conditions[0].message}";
    api.wait_jsonpath(&["get", kind, name], path, |s| !s.is_empty() && done(s)).await
}

fn secret(name: &str, data: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\nstringData: {data}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_show_five_ready_reasons_and_a_permanent_one_waits_for_its_trigger_to_change() {
    let api = KubeApi::start().await;
    api.install_crds().await;
    let kafka = Kafka::start().await;
    kafka.create_topic("orders", 1).await;
    let nats = Nats::start_with(
        &["--user", "broker", "--pass", "s3cret"],
        kubeless_nats::NatsAuth::UserPassword("broker".into(), "s3cret".into()),
    )
    .await;
    let f = Function::start(Behaviour::Ok).await;
    for yaml in [
        function_yaml("f", "{function: f}", &f.url),
        secret("nats-good", "{user: broker, password: s3cret}"),
        secret("nats-wrong", "{user: broker, password: wr0ng-pa55-5521}"),
        secret("nats-garbled", "{creds: not-a-creds-file}"),
        // A closed port on loopback: nothing answers there.
        trigger_yaml("unreachable", "orders", "{function: f}", "  brokers: '127.0.0.1:1'\n"),
        trigger_yaml("missing-topic", "no-such-topic", "{function: f}", ""),
        nats_trigger_yaml("wrong-password", "events", "{function: f}", "  auth: {secret: nats-wrong}\n"),
        nats_trigger_yaml(
            "missing-stream",
            "js.events",
            "{function: f}",
            "  auth: {secret: nats-good}\n  jetstream: {stream: NOSUCHSTREAM}\n",
        ),
        nats_trigger_yaml("garbled-creds", "events", "{function: f}", "  auth: {secret: nats-garbled}\n"),
        nats_trigger_yaml("fine", "events", "{function: f}", "  auth: {secret: nats-good}\n"),
    ] {
        api.apply_ok(&yaml);
    }
    let daemon = Daemon::start_kube(
        &api.kubeconfig,
        &kafka.brokers,
        &["--nats-url", &nats.url, "--tenant-brokers=127.0.0.1:1"],
        &[],
    );
    wait_for_async("the daemon's own readiness", Duration::from_secs(60), || async {
        matches!(daemon.get("/readyz").await, Some((200, _)))
    })
    .await;

    let expected = [
        ("kafkatrigger", "unreachable", "BrokerUnreachable"),
        ("kafkatrigger", "missing-topic", "TopicNotFound"),
        ("natstrigger", "wrong-password", "NotAuthorized"),
        ("natstrigger", "missing-stream", "StreamNotFound"),
        ("natstrigger", "garbled-creds", "InvalidConfig"),
    ];
    for (kind, name, reason) in expected {
        let got = condition(&api, kind, name, |s| s.starts_with(&format!("False/{reason}/"))).await;
        assert!(got.starts_with(&format!("False/{reason}/f: ")), "{kind} {name}: {got}");
        let per_function = api.kubectl_ok(&["get", kind, name, "-o", "jsonpath={.status.functions[0].reason}"]);
        assert_eq!(per_function, reason, "{kind} {name}");
    }
    let fine = condition(&api, "natstrigger", "fine", |s| s.starts_with("True/")).await;
    assert!(fine.starts_with("True/Delivering/"), "{fine}");
    // What `kubectl get` prints: five different reasons.
    let table = api.kubectl_ok(&[
        "get",
        "kafkatriggers,natstriggers",
        "-o",
        "custom-columns=NAME:.metadata.name,REASON:.status.conditions[0].reason",
    ]);
    for (_, name, reason) in expected {
        assert!(table.lines().any(|l| l.contains(name) && l.contains(reason)), "{name} {reason} in\n{table}");
    }

    // Retriable failures are restarted with backoff; the permanent one is not restarted at all.
    let restarts = |trigger: &'static str| {
        let daemon = &daemon;
        async move { daemon.metric(&format!("kubeless_consumer_restarts_total{{trigger=\"default/{trigger}\"")).await }
    };
    wait_for_async("a retriable failure to be restarted", Duration::from_secs(30), || async {
        restarts("wrong-password").await >= 2.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(restarts("garbled-creds").await, 0.0, "a consumer whose config is refused was restarted");
    let failed = daemon.metric("kubeless_consumer_failed{trigger=\"default/garbled-creds\"").await;
    assert_eq!(failed, 1.0, "a permanent failure shows on /metrics");
    let waiting = daemon.log_text().matches("it waits for its trigger or function to change").count();
    assert_eq!(waiting, 1, "the permanent failure is reported once");
    let restarted = daemon.metric("kubeless_consumer_restarts_total{trigger=\"default/wrong-password\"").await;
    assert!(restarted >= 2.0);
    let text = daemon.metrics().await;
    assert!(
        text.lines().any(|l| l.starts_with("kubeless_consumer_restarts_total{")
            && l.contains("default/wrong-password")
            && l.contains("reason=\"NotAuthorized\"")),
        "restarts by reason:\n{text}"
    );

    // Its trigger changes (a Secret it can use): it runs at once.
    api.apply_ok(&nats_trigger_yaml("garbled-creds", "events", "{function: f}", "  auth: {secret: nats-good}\n"));
    let fixed = condition(&api, "natstrigger", "garbled-creds", |s| s.starts_with("True/")).await;
    assert!(fixed.starts_with("True/Delivering/"), "{fixed}");
    nats.publish_all("events", ["hello".to_string()], false).await;
    wait_for("the fixed trigger and the fine one to deliver", Duration::from_secs(30), || f.delivered() >= 2).await;
}
