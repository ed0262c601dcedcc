//! NATS and JetStream → functions through a real nats-server on loopback.

use std::time::Duration;

use crate::common::kubeapi::KubeApi;
use crate::common::*;

/// A Function whose requests time out after 5 s, so JetStream redelivers unacknowledged messages
/// 10 s (timeout + margin) after a crash.
fn short_function(name: &str, url: &str) -> String {
    function_yaml(name, &format!("{{function: {name}}}"), url).replace("timeout: \"30\"", "timeout: \"5\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_and_jetstream_each_deliver_3000_messages() {
    const N: usize = 3000;
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "EVENTS", &["js.>"]).await.expect("stream");
    let (core_fn, js_fn) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("core", "{function: core}", &core_fn.url),
        function_yaml("js", "{function: js}", &js_fn.url),
        nats_trigger_yaml("core", "core.*", "{function: core}", ""),
        nats_trigger_yaml("js", "js.events", "{function: js}", "  jetstream: {stream: EVENTS}\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;

    nats.publish_all("core.events", (0..N).map(|i| format!("c{i}")), false).await;
    nats.publish_all("js.events", (0..N).map(|i| format!("j{i}")), true).await;
    for f in [&core_fn, &js_fn] {
        wait_for("every message", Duration::from_secs(120), || f.delivered() >= N).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (f, prefix) in [(&core_fn, "c"), (&js_fn, "j")] {
        let c = f.counts();
        assert_eq!(c.len(), N, "every {prefix} message arrived");
        assert!(c.values().all(|n| *n == 1), "each exactly once");
        let h = &f.received()[0].headers;
        assert_eq!(h["event-namespace"], "natstriggers.kubeless.io");
        assert!(h["event-topic"] == "core.events" || h["event-topic"] == "js.events");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_published_while_the_daemon_is_down_arrive_after_kill_9() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "ORDERS", &["orders"]).await.expect("stream");
    let f = Function::start(Behaviour::Slow(Duration::from_millis(2))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        short_function("f", &f.url),
        nats_trigger_yaml("t", "orders", "{function: f}", "  jetstream: {stream: ORDERS}\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let mut daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    nats.publish_all("orders", (0..1000).map(|i| format!("a{i}")), true).await;
    wait_for("some deliveries", Duration::from_secs(60), || f.delivered() >= 300).await;
    daemon.kill9();

    nats.publish_all("orders", (0..3000).map(|i| format!("b{i}")), true).await;
    daemon.restart().await;
    daemon.wait_ready().await;
    wait_for("every message, after the restart", Duration::from_secs(120), || f.counts().len() == 4000).await;
    let c = f.counts();
    assert!((0..3000).all(|i| c.contains_key(&format!("b{i}"))), "messages published while down arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_durable_jetstream_consumer_without_loss_or_duplicates() {
    const N: usize = 3000;
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "WORK", &["work"]).await.expect("stream");
    let f = Function::start(Behaviour::Slow(Duration::from_millis(2))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests =
        [short_function("f", &f.url), nats_trigger_yaml("t", "work", "{function: f}", "  jetstream: {stream: WORK}\n")];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let a = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    let b = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    a.wait_ready().await;
    b.wait_ready().await;
    nats.publish_all("work", (0..N).map(|i| format!("w{i}")), true).await;
    wait_for("every message", Duration::from_secs(120), || f.counts().len() == N).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = f.counts();
    assert!(c.values().all(|n| *n == 1), "no message delivered twice");
    let (da, db) =
        (a.metric("kubeless_messages_delivered_total").await, b.metric("kubeless_messages_delivered_total").await);
    assert!(da > 0.0 && db > 0.0, "both daemons took a share (a {da}, b {db})");
    assert_eq!((da + db) as usize, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_retries_are_redeliveries_after_a_nak_with_delay() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "FLAKY", &["flaky"]).await.expect("stream");
    let f = Function::start(Behaviour::FailFirst(vec![503, 503])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let retry = "  jetstream: {stream: FLAKY}\n  delivery:\n    retry: {initialBackoff: 100ms, maxBackoff: 200ms}\n";
    let manifests = [short_function("f", &f.url), nats_trigger_yaml("t", "flaky", "{function: f}", retry)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    nats.publish_all("flaky", ["once".to_string()], true).await;
    wait_for("success after two 503s", Duration::from_secs(60), || f.delivered() == 1).await;
    let got = f.received();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.headers["event-id"] == got[0].headers["event-id"]),
        "one event-id across redeliveries"
    );
    assert_eq!(daemon.metric("kubeless_delivery_retries_total").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_come_from_a_secret_and_wrong_ones_are_reported_without_stopping_others() {
    let nats = Nats::start_with(
        &["--user", "broker", "--pass", "s3cret"],
        kubeless_nats::NatsAuth::UserPassword("broker".into(), "s3cret".into()),
    )
    .await;
    let (good, bad) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        "apiVersion: v1\nkind: Secret\nmetadata: {name: nats-creds, namespace: default}\ndata: {user: YnJva2Vy, password: czNjcmV0}\n".to_string(),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: wrong-creds, namespace: default}\nstringData: {user: broker, password: wr0ng-pa55-91827}\n".to_string(),
        function_yaml("good", "{function: good}", &good.url),
        function_yaml("bad", "{function: bad}", &bad.url),
        nats_trigger_yaml("good", "events", "{function: good}", "  auth: {secret: nats-creds}\n"),
        nats_trigger_yaml("bad", "events", "{function: bad}", "  auth: {secret: wrong-creds}\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;

    // The good trigger subscribes; the bad one reports why it cannot.
    daemon.wait_states(&["good", "bad"], |s| s[0] == "Ready" && s[1].contains("uthorization")).await;
    nats.publish_all("events", ["hello".to_string()], false).await;
    wait_for("delivery with credentials from the Secret", Duration::from_secs(30), || good.delivered() == 1).await;
    assert_eq!(bad.delivered(), 0);
    // No secret value, plain or as the manifest's base64, in any admin endpoint or in the log.
    let mut seen = vec![("log".to_string(), daemon.log_text())];
    for path in ["/status", "/metrics", "/readyz", "/healthz"] {
        let (_, body) = daemon.get(path).await.unwrap_or_default();
        seen.push((path.to_string(), body));
    }
    assert!(
        seen[1].1.contains("nats-creds") || seen[1].1.contains("wrong-creds") || seen[1].1.contains("uthorization"),
        "{}",
        seen[1].1
    );
    for (where_, text) in &seen {
        for secret in ["s3cret", "czNjcmV0", "wr0ng-pa55-91827"] {
            assert!(!text.contains(secret), "{secret} shows in {where_}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_from_a_secret_connects_and_without_it_the_trigger_reports_why() {
    let (certs, ca) = make_test_certificates();
    let (cert, key) = (certs.path().join("server.crt"), certs.path().join("server.key"));
    let nats = Nats::start_with(
        &["--tls", "--tlscert", cert.to_str().expect("utf-8"), "--tlskey", key.to_str().expect("utf-8")],
        kubeless_nats::NatsAuth::None,
    )
    .await
    .with_client_tls(ca.clone());
    let (trusted, untrusted) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let indented: String = ca.lines().map(|l| format!("    {l}\n")).collect();
    let manifests = [
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: nats-ca, namespace: default}}\nstringData:\n  ca.crt: |\n{indented}"),
        function_yaml("trusted", "{function: trusted}", &trusted.url),
        function_yaml("untrusted", "{function: untrusted}", &untrusted.url),
        nats_trigger_yaml("trusted", "secure", "{function: trusted}", "  tls: {caSecret: nats-ca}\n"),
        nats_trigger_yaml("untrusted", "secure", "{function: untrusted}", ""),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    // The daemon's temporary directory, to see that no CA file lands there under a name another
    // local user could predict (and plant first).
    let tmp = tempfile::tempdir().expect("tmp");
    let env = [("TMPDIR", tmp.path().to_str().expect("utf-8"))];
    let daemon = Daemon::start_with_env(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url], &env).await;

    daemon.wait_states(&["trusted", "untrusted"], |s| s[0] == "Ready" && s[1].starts_with("Failed")).await;
    nats.publish_all("secure", ["over tls".to_string()], false).await;
    wait_for("delivery over TLS", Duration::from_secs(30), || trusted.delivered() == 1).await;
    assert_eq!(untrusted.delivered(), 0);
    let written: Vec<_> =
        std::fs::read_dir(tmp.path()).expect("tmp").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(written.is_empty(), "files in the daemon's TMPDIR: {written:?}");
}

/// Bodies in arrival order, with repeats of the same body in a row collapsed.
fn runs(f: &Function) -> Vec<String> {
    let mut bodies: Vec<String> = f.received().into_iter().map(|r| r.body).collect();
    bodies.dedup();
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_with_partition_ordering_keeps_order_across_retries() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "ORDERED", &["ordered"]).await.expect("stream");
    // Every message fails once: a NAK would let the next one overtake it.
    let f = Function::start(Behaviour::FailFirst(vec![503])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = "  jetstream: {stream: ORDERED}\n  delivery:\n    ordering: partition\n    retry: {initialBackoff: 20ms, maxBackoff: 50ms}\n";
    let manifests = [short_function("f", &f.url), nats_trigger_yaml("t", "ordered", "{function: f}", spec)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    let sent: Vec<String> = (0..40).map(|i| format!("m{i:03}")).collect();
    nats.publish_all("ordered", sent.clone(), true).await;
    wait_for("all 40 delivered", Duration::from_secs(60), || f.delivered() == 40).await;
    assert_eq!(runs(&f), sent, "each message retried in place before the next one started");
    assert_eq!(f.received().len(), 80, "one failure and one success each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_held_past_ack_wait_are_not_redelivered_behind_the_consumers_back() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "HELD", &["held"]).await.expect("stream");
    let f = Function::start(Behaviour::Poison("m000".into())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = "  jetstream: {stream: HELD}\n  delivery:\n    ordering: partition\n    retry: {initialBackoff: 200ms, maxBackoff: 500ms}\n";
    // ack_wait is the function's timeout (5 s) plus 5 s.
    let manifests = [short_function("f", &f.url), nats_trigger_yaml("t", "held", "{function: f}", spec)];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    let sent: Vec<String> = (0..10).map(|i| format!("m{i:03}")).collect();
    nats.publish_all("held", sent.clone(), true).await;
    // The first message fails for longer than ack_wait; the other nine wait behind it.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(f.delivered(), 0);
    f.heal();
    wait_for("all 10 delivered", Duration::from_secs(60), || f.delivered() == 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs(&f), sent, "in order");
    let c = f.counts();
    assert!(sent[1..].iter().all(|m| c[m] == 1), "a held message was redelivered: {c:?}");
}

/// The durable a NATSTrigger `trigger` in `default` feeding `function` from `subject` reads.
fn durable_of(trigger: &str, function: &str, subject: &str) -> String {
    kubeless_nats::durable_name(&format!("default_{trigger}_{function}_{subject}"))
}

async fn ack_wait(nats: &Nats, stream: &str, durable: &str) -> Option<Duration> {
    let js = async_nats::jetstream::new(nats.client().await);
    let info = js.get_stream(stream).await.expect("stream").consumer_info(durable).await.ok()?;
    Some(info.config.ack_wait)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_edit_reaches_the_jetstream_durable_and_messages_in_progress_are_not_redelivered() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "EDITED", &["edited"]).await.expect("stream");
    // Each call takes 10 s: longer than the first timeout's ack wait (1 s + 5 s), well inside the second's.
    let f = Function::start(Behaviour::Slow(Duration::from_secs(10))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |timeout: &str| {
        let function = function_with_timeout_yaml("f", "{function: f}", &f.url, timeout);
        let trigger = nats_trigger_yaml("t", "edited", "{function: f}", "  jetstream: {stream: EDITED}\n");
        std::fs::write(dir.path().join("m.yaml"), [function, trigger].join("---\n")).expect("write");
    };
    write("1");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    let durable = durable_of("t", "f", "edited");
    assert_eq!(ack_wait(&nats, "EDITED", &durable).await, Some(Duration::from_secs(6)));

    write("30");
    wait_for_async("the durable's new ack wait on the server", Duration::from_secs(60), || async {
        ack_wait(&nats, "EDITED", &durable).await == Some(Duration::from_secs(35))
    })
    .await;
    daemon.wait_ready().await;
    nats.publish_all("edited", (0..3).map(|i| format!("m{i}")), true).await;
    wait_for("every message", Duration::from_secs(60), || f.delivered() >= 3).await;
    // A redelivery behind the consumer's back would arrive by now (ack wait 6 s, progress every 11 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let c = f.counts();
    assert_eq!(c.len(), 3, "{c:?}");
    assert!(c.values().all(|n| *n == 1), "each message once, none redelivered while in progress: {c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_whose_durable_names_used_to_collide_get_a_durable_each() {
    const N: usize = 200;
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "SHARED", &["shared"]).await.expect("stream");
    let (c, bc) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    // Trigger `a.b` → function `c` and trigger `a` → function `b.c`: both `default_a_b_c_shared` before.
    let js = "  jetstream: {stream: SHARED}\n";
    let manifests = [
        function_yaml("c", "{function: c}", &c.url),
        function_yaml("b.c", "{function: b.c}", &bc.url),
        nats_trigger_yaml("a.b", "shared", "{function: c}", js),
        nats_trigger_yaml("a", "shared", "{function: b.c}", js),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    assert_ne!(durable_of("a.b", "c", "shared"), durable_of("a", "b.c", "shared"));
    nats.publish_all("shared", (0..N).map(|i| format!("s{i}")), true).await;
    for f in [&c, &bc] {
        wait_for("every message at each function", Duration::from_secs(60), || f.counts().len() == N).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_an_earlier_version_made_is_kept_and_goes_on_where_it_stopped() {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    let nats = Nats::start().await;
    let client = nats.client().await;
    kubeless_nats::create_stream(&client, "OLD", &["old.>"]).await.expect("stream");
    nats.publish_all("old.events", (0..10).map(|i| format!("o{i}")), true).await;
    // What an earlier version left: the `.`-mapped name, the first 4 messages acknowledged.
    let legacy = "default_t_f_old__";
    let stream = async_nats::jetstream::new(client.clone()).get_stream("OLD").await.expect("stream");
    let old = stream
        .create_consumer(pull::Config {
            durable_name: Some(legacy.to_string()),
            filter_subject: "old.>".to_string(),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("legacy durable");
    let mut batch = old.fetch().max_messages(4).messages().await.expect("fetch");
    while let Some(m) = futures::StreamExt::next(&mut batch).await {
        m.expect("message").double_ack().await.expect("ack");
    }

    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        nats_trigger_yaml("t", "old.>", "{function: f}", "  jetstream: {stream: OLD}\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    daemon.wait_ready().await;
    wait_for("the rest of the messages", Duration::from_secs(60), || f.counts().len() == 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got: Vec<String> = f.counts().into_keys().collect();
    got.sort();
    assert_eq!(got, (4..10).map(|i| format!("o{i}")).collect::<Vec<_>>(), "from where the old durable stopped");
    let kept = stream.consumer_info(legacy).await.expect("the old durable is kept");
    assert_eq!(kept.config.description.as_deref(), Some("kubeless-broker default/t"), "claimed by the trigger");
    assert!(stream.consumer_info(durable_of("t", "f", "old.>")).await.is_err(), "no second durable for the subject");
}

/// The durables on `stream`, by name.
async fn durables(nats: &Nats, stream: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream(stream).await.expect("stream");
    let mut names: Vec<String> = stream.consumer_names().try_collect().await.expect("consumer names");
    names.sort();
    names
}

async fn add_durable(nats: &Nats, stream: &str, name: &str, description: Option<&str>) {
    use async_nats::jetstream::consumer::pull;
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream(stream).await.expect("stream");
    let config = pull::Config {
        durable_name: Some(name.to_string()),
        description: description.map(str::to_string),
        ..Default::default()
    };
    stream.create_consumer(config).await.expect("durable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_deletes_the_durables_of_triggers_edited_away_or_deleted_and_only_its_own() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "OWNED", &["owned.>"]).await.expect("stream");
    // Left on the server before the daemon started: one it made for a trigger of `default` since
    // deleted, one of another namespace, and one somebody else made.
    add_durable(&nats, "OWNED", "default_gone_f_owned_x", Some("kubeless-broker default/gone")).await;
    add_durable(&nats, "OWNED", "other_t_f_owned_x", Some("kubeless-broker other/t")).await;
    add_durable(&nats, "OWNED", "someone_elses", None).await;
    // Left long enough ago: the sweep leaves durables younger than the drain timeout and a margin
    // (15 s), which another replica may have just made.
    let left_at = std::time::Instant::now();
    let api = KubeApi::start().await;
    api.install_crds().await;
    let f = Function::start(Behaviour::Ok).await;
    let trigger = |subject: &str| nats_trigger_yaml("t", subject, "{function: f}", "  jetstream: {stream: OWNED}\n");
    api.apply_ok(&function_yaml("f", "{function: f}", &f.url));
    api.apply_ok(&trigger("owned.a"));
    let flags = ["--nats-url", &nats.url, "--drain-timeout", "1s"];
    tokio::time::sleep(Duration::from_secs(17).saturating_sub(left_at.elapsed())).await;
    let daemon = Daemon::start_kube(&api.kubeconfig, "127.0.0.1:1", &flags, &[]);
    daemon.wait_ready().await;
    let (a, b) = (durable_of("t", "f", "owned.a"), durable_of("t", "f", "owned.b"));
    let mut expected = vec![a.clone(), "other_t_f_owned_x".to_string(), "someone_elses".to_string()];
    expected.sort();
    wait_for_async("the sweep of what was left while nobody led", Duration::from_secs(60), || async {
        durables(&nats, "OWNED").await == expected
    })
    .await;

    // Edited onto another subject (another durable): the old one goes once its grace has passed.
    api.apply_ok(&trigger("owned.b"));
    let mut expected = vec![b.clone(), "other_t_f_owned_x".to_string(), "someone_elses".to_string()];
    expected.sort();
    wait_for_async("the edited trigger's old durable to go", Duration::from_secs(60), || async {
        durables(&nats, "OWNED").await == expected
    })
    .await;
    nats.publish_all("owned.b", ["after the edit".to_string()], true).await;
    wait_for("a delivery through the new durable", Duration::from_secs(30), || f.delivered() == 1).await;

    // Deleted: its durable goes; what is not the daemon's stays.
    api.kubectl_ok(&["delete", "natstrigger", "t"]);
    wait_for_async("the deleted trigger's durable to go", Duration::from_secs(60), || async {
        durables(&nats, "OWNED").await == ["other_t_f_owned_x", "someone_elses"]
    })
    .await;
    assert!(daemon.log_text().contains("Deleted the JetStream durable of a trigger that is gone"));
}
