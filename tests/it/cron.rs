//! CronJobTrigger through the built-in scheduler, end to end (seconds-field schedules).

use std::time::Duration;

use crate::common::*;
use chrono::NaiveDateTime;

fn tick_time(r: &Received) -> i64 {
    let t = &r.headers["event-time"];
    NaiveDateTime::parse_from_str(t.trim_end_matches("+00:00"), "%Y-%m-%d %H:%M:%S")
        .map(|n| n.and_utc().timestamp())
        .unwrap_or_else(|e| panic!("event-time {t:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_trigger_every_2s_fires_on_its_ticks_with_its_payload_and_retries_a_500() {
    // No broker needed: cron ticks do not come from an event bus.
    let f = Function::start(Behaviour::FailFirst(vec![500, 500])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        cron_yaml(
            "every2s",
            "f",
            "*/2 * * * * *",
            "  payload: {job: report}\n  delivery:\n    retry: {initialBackoff: 50ms, maxBackoff: 100ms}\n",
        ),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    wait_for("three successful ticks", Duration::from_secs(30), || f.delivered() >= 3).await;

    let got = f.received();
    // The first tick met two 500s and was retried to success, with the same event-id each time.
    assert_eq!(got[0].headers["event-id"], got[2].headers["event-id"]);
    assert_eq!(tick_time(&got[0]), tick_time(&got[2]), "retries carry the tick's time");
    let ticks: Vec<i64> = got.iter().map(tick_time).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    assert!(ticks.iter().all(|t| t % 2 == 0), "ticks on even seconds: {ticks:?}");
    assert!(ticks.windows(2).all(|w| w[1] - w[0] == 2), "one tick every 2 s, none skipped: {ticks:?}");
    for r in &got {
        assert_eq!(r.body, r#"{"job":"report"}"#);
        assert_eq!(r.headers["event-namespace"], "cronjobtrigger.kubeless.io");
        assert_eq!(r.headers["content-type"], "application/json");
    }
    assert!(
        daemon
            .metric("kubeless_cron_ticks_total{trigger=\"default/every2s\",function=\"f\",outcome=\"succeeded\"}")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_a_tick_while_the_previous_call_runs() {
    let f = Function::start(Behaviour::Slow(Duration::from_millis(2500))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        cron_yaml("forbid", "f", "* * * * * *", "  concurrencyPolicy: Forbid\n"),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    wait_for("two calls", Duration::from_secs(30), || f.delivered() >= 2).await;
    let skipped =
        daemon.metric("kubeless_cron_ticks_total{trigger=\"default/forbid\",function=\"f\",outcome=\"skipped\"}").await;
    assert!(skipped >= 2.0, "ticks during a 2.5 s call are skipped (skipped: {skipped})");
    // Every call that started ran alone: a GET (no payload), never two at once.
    let starts: Vec<i64> = f.received().iter().map(tick_time).collect();
    assert!(starts.windows(2).all(|w| w[1] - w[0] >= 2), "calls overlapped: {starts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_function_gets_one_calls_retries_per_tick_not_a_growing_storm() {
    // Always 500, fast retries, no limits of the trigger's own: each tick's retries end when the
    // next tick is due (Kubeless made one call per tick), under Allow and under Forbid alike.
    let f = Function::start(Behaviour::Status(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let retry = "  delivery:\n    retry: {initialBackoff: 50ms, maxBackoff: 100ms}\n";
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        cron_yaml("allow", "f", "* * * * * *", retry),
        cron_yaml("forbid", "f", "* * * * * *", &format!("  concurrencyPolicy: Forbid\n{retry}")),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    let outcome = |trigger: &str, outcome: &str| {
        format!("kubeless_cron_ticks_total{{trigger=\"default/{trigger}\",function=\"f\",outcome=\"{outcome}\"}}")
    };
    for trigger in ["allow", "forbid"] {
        let failed = outcome(trigger, "failed");
        let start = std::time::Instant::now();
        while daemon.metric(&failed).await < 3.0 {
            assert!(start.elapsed() < Duration::from_secs(30), "{trigger}: no tick ever stops retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Forbid is not blocked forever by one failing tick: later ticks fire.
        assert!(daemon.metric(&outcome(trigger, "fired")).await >= 3.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_replaced_or_stopped_mid_retry_is_handed_back_not_dropped() {
    // Always 500: every call is between retries when the next tick replaces it, or when its
    // trigger goes. Aborting those calls dropped their ticks without an outcome, which logs as a
    // lost message; they are cancelled and hand their ticks back instead.
    let f = Function::start(Behaviour::Status(500)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let function = function_yaml("f", "{function: f}", &f.url);
    let replace = cron_yaml(
        "replace",
        "f",
        "* * * * * *",
        "  concurrencyPolicy: Replace\n  delivery:\n    retry: {initialBackoff: 5s, maxBackoff: 5s}\n",
    );
    let retrying = cron_yaml("retrying", "f", "* * * * * *", "  delivery:\n    retry: {initialBackoff: 300ms}\n");
    std::fs::write(dir.path().join("m.yaml"), [function.clone(), replace.clone(), retrying].join("---\n"))
        .expect("write");
    let mut daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    let replaced = "kubeless_cron_ticks_total{trigger=\"default/replace\",function=\"f\",outcome=\"replaced\"}";
    wait_for_async("ticks replaced mid-retry", Duration::from_secs(30), || async {
        daemon.metric(replaced).await >= 3.0
    })
    .await;
    let retries = "kubeless_delivery_retries_total{trigger=\"default/retrying\"";
    wait_for_async("ticks retried", Duration::from_secs(30), || async { daemon.metric(retries).await >= 3.0 }).await;

    // The retrying trigger goes while one of its ticks waits for its next attempt.
    std::fs::write(dir.path().join("m.yaml"), [function, replace].join("---\n")).expect("write");
    wait_for_async("the trigger to stop", Duration::from_secs(30), || async {
        daemon.log_text().contains("Stopping consumer.") && daemon.log_text().contains("default/retrying")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = daemon.log_text();
    assert!(!log.contains("dropped without an outcome"), "a tick was dropped:\n{log}");
    assert!(daemon.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_runs_at_most_ten_calls_of_one_trigger_at_once_and_skips_ticks_beyond() {
    // Every second, each call taking 30 s: without a bound, calls would pile up without end.
    let f = Function::start(Behaviour::Slow(Duration::from_secs(30))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = [function_yaml("f", "{function: f}", &f.url), cron_yaml("pile", "f", "* * * * * *", "")];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    let skipped = "kubeless_cron_ticks_total{trigger=\"default/pile\",function=\"f\",outcome=\"skipped\"}";
    let start = std::time::Instant::now();
    while daemon.metric(skipped).await < 3.0 {
        assert!(f.in_flight() <= 10, "{} calls at once", f.in_flight());
        assert!(start.elapsed() < Duration::from_secs(40), "no tick was ever skipped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(f.in_flight(), 10, "ten calls run while the rest are skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_every_tick_claimed_on_the_api_cannot_be_claimed_again() {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kubeless_broker::cron::state::TickStore;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = crate::common::kubeapi::KubeApi::start().await;
    api.install_crds().await;
    api.apply_ok(&cron_yaml("frac", "f", "@every 1500ms", ""));
    let kubeconfig = Kubeconfig::read_from(&api.kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("config");
    let client = kube::Client::try_from(config).expect("client");
    let ticks = kubeless_broker::kubernetes::ticks::ApiTickStore::new(
        client,
        "test",
        kubeless_broker::kubernetes::api_writes(),
    );
    let tick = |ms: i64| chrono::DateTime::from_timestamp_millis(1_800_000_000_000 + ms).expect("time");
    assert!(ticks.claim("default/frac", tick(10_500)).await.expect("claim"), "the first claim");
    // A new leader reading the claim back must see this tick taken, not 10.000 s.
    assert_eq!(ticks.last_fired("default/frac").await.expect("read"), Some(tick(10_500)));
    assert!(!ticks.claim("default/frac", tick(10_500)).await.expect("claim"), "claimed twice");
    assert!(ticks.claim("default/frac", tick(12_000)).await.expect("claim"), "the next tick");
}
