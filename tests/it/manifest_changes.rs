//! Standalone mode's directory: edits move consumers without a restart, and bad manifests are
//! reported while everything else keeps flowing.

use std::path::Path;
use std::time::Duration;

use crate::common::*;

async fn groups(daemon: &Daemon) -> Vec<String> {
    let status = daemon.status().await;
    let mut g: Vec<String> = status["consumers"]
        .as_array()
        .expect("consumers")
        .iter()
        .map(|c| c["group"].as_str().unwrap_or_default().to_string())
        .collect();
    g.sort();
    g
}

async fn wait_groups(daemon: &Daemon, want: &[&str]) {
    let start = std::time::Instant::now();
    loop {
        let got = groups(daemon).await;
        if got == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "consumers {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn bodies(f: &Function) -> Vec<String> {
    f.received().into_iter().map(|r| r.body).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_triggers_topic_or_selector_moves_its_consumers_and_stops_the_old_ones() {
    let kafka = Kafka::start().await;
    for t in ["old-topic", "new-topic"] {
        kafka.create_topic(t, 1).await;
    }
    let (f1, f2) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let functions =
        [function_yaml("f1", "{function: f1}", &f1.url), function_yaml("f2", "{function: f2}", &f2.url)].join("---\n");
    std::fs::write(dir.path().join("functions.yaml"), &functions).expect("write");
    let trigger = dir.path().join("trigger.yml");
    std::fs::write(&trigger, trigger_yaml("t", "old-topic", "{function: f1}", "")).expect("write");
    let mut daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;
    let pid = daemon.pid();
    let publisher = kafka.publisher();
    publisher.publish("old-topic", None, b"before", &[]).await.expect("publish");
    wait_for("delivery on the old topic", Duration::from_secs(30), || bodies(&f1) == ["before"]).await;

    // Move the trigger to another topic.
    std::fs::write(&trigger, trigger_yaml("t", "new-topic", "{function: f1}", "")).expect("write");
    wait_groups(&daemon, &["default_t_f1_new-topic"]).await;
    daemon.wait_ready().await;
    publisher.publish("old-topic", None, b"old-after-edit", &[]).await.expect("publish");
    publisher.publish("new-topic", None, b"new", &[]).await.expect("publish");
    wait_for("delivery on the new topic", Duration::from_secs(30), || bodies(&f1).contains(&"new".to_string())).await;

    // Move it to another function.
    std::fs::write(&trigger, trigger_yaml("t", "new-topic", "{function: f2}", "")).expect("write");
    wait_groups(&daemon, &["default_t_f2_new-topic"]).await;
    daemon.wait_ready().await;
    publisher.publish("new-topic", None, b"for-f2", &[]).await.expect("publish");
    wait_for("delivery to the newly selected function", Duration::from_secs(30), || {
        bodies(&f2).contains(&"for-f2".to_string())
    })
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        bodies(&f1),
        ["before", "new"],
        "the old consumers stopped: nothing from the old topic, nothing after deselection"
    );
    assert_eq!(daemon.pid(), pid);
    assert!(daemon.is_running(), "the daemon was not restarted");

    // Removing the file stops the consumer.
    std::fs::remove_file(&trigger).expect("remove");
    wait_groups(&daemon, &[]).await;
}

fn copy_dir(from: &Path, to: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_reported_by_file_and_other_triggers_keep_flowing() {
    let kafka = Kafka::start().await;
    kafka.create_topic("good", 1).await;
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let good =
        [function_yaml("f", "{function: f}", &f.url), trigger_yaml("good", "good", "{function: f}", "")].join("---\n");
    std::fs::write(dir.path().join("00-good.yaml"), good).expect("write");
    let mut daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;
    let publisher = kafka.publisher();
    publisher.publish("good", None, b"one", &[]).await.expect("publish");
    wait_for("first delivery", Duration::from_secs(30), || f.delivered() == 1).await;

    // Drop in a directory's worth of broken manifests while the good trigger runs.
    let bad_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad");
    let bad = copy_dir(&bad_dir, dir.path());
    assert!(bad >= 20);
    let start = std::time::Instant::now();
    let errors = loop {
        let status = daemon.status().await;
        let errors: Vec<String> = status["manifest_errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_string())
            .collect();
        if errors.len() >= bad {
            break errors;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "only {} errors reported: {errors:#?}", errors.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(errors.len(), bad, "one error per bad file: {errors:#?}");
    for entry in std::fs::read_dir(&bad_dir).expect("read_dir") {
        let name = entry.expect("entry").file_name().into_string().expect("utf-8");
        assert!(errors.iter().any(|e| e.contains(&name)), "no error names {name}: {errors:#?}");
    }

    publisher.publish("good", None, b"two", &[]).await.expect("publish");
    wait_for("delivery with bad manifests present", Duration::from_secs(30), || f.delivered() == 2).await;
    assert!(daemon.is_running());
    assert_eq!(daemon.metric("kubeless_consumer_restarts_total").await, 0.0, "the good consumer was not disturbed");
    assert_eq!(daemon.metric("kubeless_manifest_errors").await, bad as f64);
    let log = daemon.log_text();
    assert!(log.contains("Manifest rejected"), "errors are logged");
    assert!(!log.contains('\x1b'), "a log written to a file has no colour codes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_caught_half_written_keeps_its_objects_until_it_reads_again() {
    let kafka = Kafka::start().await;
    kafka.create_topic("steady", 1).await;
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("all.yaml");
    // Written out in flow style, as a person would: cut inside `{function: f}`, it is not YAML.
    let trigger = "apiVersion: kubeless.io/v1beta1\nkind: KafkaTrigger\nmetadata: {name: t, namespace: default}\nspec:\n  topic: steady\n  functionSelector:\n    matchLabels: {function: f}\n";
    let whole = [function_yaml("f", "{function: f}", &f.url), trigger.to_string()].join("---\n");
    std::fs::write(&file, &whole).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;

    // An editor or a copy caught mid-write: the file stops inside the trigger's selector.
    let cut = whole.find("matchLabels").expect("selector") + "matchLabels: {func".len();
    std::fs::write(&file, &whole[..cut]).expect("write half");
    let start = std::time::Instant::now();
    loop {
        let errors = daemon.status().await["manifest_errors"].to_string();
        if errors.contains("not valid YAML") {
            assert!(errors.contains("kept until it reads again"), "{errors}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no error reported: {errors}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(groups(&daemon).await, ["default_t_f_steady"], "the consumer keeps running");
    kafka.publisher().publish("steady", None, b"during", &[]).await.expect("publish");
    wait_for("delivery while the file is half written", Duration::from_secs(30), || bodies(&f) == ["during"]).await;

    // Written whole again: nothing restarts.
    std::fs::write(&file, &whole).expect("write whole");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!daemon.log_text().contains("Stopping consumer"), "{}", daemon.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_triggers_gauges_leave_metrics() {
    let kafka = Kafka::start().await;
    kafka.create_topic("gauged", 1).await;
    let f = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("f.yaml"), function_yaml("f", "{function: f}", &f.url)).expect("write");
    let trigger = dir.path().join("t.yaml");
    std::fs::write(&trigger, trigger_yaml("gone", "gauged", "{function: f}", "")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    daemon.wait_ready().await;
    let series = r#"kubeless_consumer_lag{trigger="default/gone""#;
    let start = std::time::Instant::now();
    while !daemon.metrics().await.contains(series) {
        assert!(start.elapsed() < Duration::from_secs(30), "no lag series for the trigger");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::remove_file(&trigger).expect("delete the trigger");
    wait_groups(&daemon, &[]).await;
    let start = std::time::Instant::now();
    loop {
        let text = daemon.metrics().await;
        if !text.contains(series) {
            break;
        }
        // Bounded by the gauges' idle timeout (15 s), plus the scrape that prunes them.
        assert!(start.elapsed() < Duration::from_secs(40), "the deleted trigger's lag is still exported");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(daemon.metrics().await.contains("kubeless_consumers 0"), "the daemon's own gauges stay");
}
