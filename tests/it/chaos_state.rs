//! The state directory fails under the daemon: made read-only, then full (a tmpfs of its own
//! mounted over it, so both are real: EROFS and ENOSPC from the kernel). Cron and Kinesis go on
//! delivering, say why in `/status` and count it, keep the last good checkpoint, and take up
//! saving again once the directory is writable.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// A tmpfs mounted over a directory for the test's life (mounting needs root, as this suite does).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        let size = format!("size={size}");
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &size, "tmpfs"]).arg(dir).status();
        assert!(ok.is_ok_and(|s| s.success()), "cannot mount a tmpfs on {} (the test runs as root)", dir.display());
        Self(dir.to_path_buf())
    }

    fn remount(&self, option: &str) {
        let options = format!("remount,{option}");
        let ok = Command::new("mount").args(["-o", &options]).arg(&self.0).status();
        assert!(ok.is_ok_and(|s| s.success()), "cannot remount {} {option}", self.0.display());
    }

    /// Writes a file until the filesystem has no room left.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The `checkpoint_error` of each consumer in `/status`, by function ("" where there is none).
async fn checkpoint_errors(daemon: &Daemon) -> Vec<(String, String)> {
    let status = daemon.status().await;
    let mut errors: Vec<(String, String)> = status["consumers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let function = c["function"].as_str().unwrap_or_default().to_string();
            (function, c["checkpoint_error"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    errors.sort();
    errors
}

/// Waits until both consumers report an error containing `why`, or (with "") none.
async fn wait_checkpoint_errors(daemon: &Daemon, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let errors = checkpoint_errors(daemon).await;
        let done = errors.len() == 2
            && errors.iter().all(|(_, e)| if why.is_empty() { e.is_empty() } else { e.contains(why) });
        if done {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "checkpoint errors {errors:?}, waiting for {why:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one Kinesis checkpoint file's text.
fn kinesis_checkpoint(state: &Path) -> String {
    let dir = state.join("kinesis");
    let files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    let files: Vec<_> = files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    match files.as_slice() {
        [one] => std::fs::read_to_string(one).unwrap_or_default(),
        _ => String::new(),
    }
}

async fn put(client: &aws_sdk_kinesis::Client, prefix: &str, n: usize) -> String {
    let mut last = String::new();
    for i in 0..n {
        let data = format!("{prefix}{i}");
        (_, last) = kubeless_kinesis::put_record(client, "clicks", "k", data.as_bytes()).await.expect("put");
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_then_full_state_directory_is_reported_and_keeps_the_last_good_checkpoint() {
    let moto = Kinesis::moto().await;
    let client = moto.client().await;
    kubeless_kinesis::create_stream(&client, "clicks", 1).await.expect("stream");
    let (f, tick) = (Function::start(Behaviour::Ok).await, Function::start(Behaviour::Ok).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    daemon.wait_ready().await;
    // Mounted before any trigger exists, so every state file lands on the tmpfs.
    let state = Tmpfs::mount(daemon.state_dir(), "1m");
    let manifests = [
        function_yaml("f", "{function: f}", &f.url),
        function_yaml("tick", "{function: tick}", &tick.url),
        kinesis_yaml("clicks", "f", "clicks", &moto.endpoint, "  startingPosition: TRIM_HORIZON\n"),
        cron_yaml("every1s", "tick", "* * * * * *", ""),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");

    // Healthy: every record delivered and checkpointed, ticks recorded.
    let last_a = put(&client, "a", 100).await;
    wait_for("100 records", Duration::from_secs(60), || f.counts().len() == 100).await;
    let cron_file = daemon.state_dir().join("cron_default_every1s");
    wait_for("the checkpoint of the last record", Duration::from_secs(30), || {
        kinesis_checkpoint(daemon.state_dir()).contains(&last_a) && cron_file.exists()
    })
    .await;
    wait_checkpoint_errors(&daemon, "").await;

    // Read-only: delivery and ticks go on, the failure is reported, the files stay as they were.
    state.remount("ro");
    let (good_checkpoint, good_tick) =
        (kinesis_checkpoint(daemon.state_dir()), std::fs::read_to_string(&cron_file).expect("tick file"));
    let ticks = tick.delivered();
    put(&client, "b", 100).await;
    wait_for("100 more records, read-only", Duration::from_secs(60), || f.counts().len() == 200).await;
    wait_checkpoint_errors(&daemon, "Read-only file system").await;
    wait_for("ticks while read-only", Duration::from_secs(30), || tick.delivered() >= ticks + 3).await;
    assert_eq!(kinesis_checkpoint(daemon.state_dir()), good_checkpoint);
    assert_eq!(std::fs::read_to_string(&cron_file).expect("tick file"), good_tick);

    // Full: the same, and a kill -9 meanwhile restarts from the last good checkpoint.
    state.remount("rw");
    let filler = state.fill();
    put(&client, "c", 100).await;
    wait_for("100 more records, disk full", Duration::from_secs(60), || f.counts().len() == 300).await;
    wait_checkpoint_errors(&daemon, "No space left on device").await;
    let failures = daemon.metric("kubeless_checkpoint_failures_total{trigger=\"default/clicks\"").await;
    assert!(failures >= 1.0, "failed saves are counted: {failures}");
    assert_eq!(kinesis_checkpoint(daemon.state_dir()), good_checkpoint, "the last good checkpoint stays whole");
    assert_eq!(std::fs::read_to_string(&cron_file).expect("tick file"), good_tick);
    let leftovers: HashSet<String> = std::fs::read_dir(daemon.state_dir().join("kinesis"))
        .expect("kinesis dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers.len(), 1, "no partial temporary file is left: {leftovers:?}");
    for trigger in ["default/clicks", "default/every1s"] {
        let restarts = daemon.metric(&format!("kubeless_consumer_restarts_total{{trigger=\"{trigger}\"")).await;
        assert_eq!(restarts, 0.0, "{trigger}: no consumer failed over its state");
    }
    daemon.kill9();
    daemon.restart().await;
    daemon.wait_ready().await;
    wait_for("b and c read again from the last good checkpoint", Duration::from_secs(60), || {
        f.counts().values().sum::<usize>() >= 500
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_checkpoint_errors(&daemon, "No space left on device").await;
    let counts = f.counts();
    for i in 0..100 {
        assert_eq!(counts[&format!("a{i}")], 1, "a{i} was checkpointed and not read again");
        assert_eq!(counts[&format!("b{i}")], 2, "b{i}: once before the kill, once after");
        assert_eq!(counts[&format!("c{i}")], 2, "c{i}: once before the kill, once after");
    }

    // Room again: the errors clear and the checkpoints move on.
    std::fs::remove_file(filler).expect("free the space");
    let last_d = put(&client, "d", 10).await;
    wait_checkpoint_errors(&daemon, "").await;
    wait_for("the checkpoint moves on", Duration::from_secs(30), || {
        kinesis_checkpoint(daemon.state_dir()).contains(&last_d)
            && std::fs::read_to_string(&cron_file).is_ok_and(|t| t != good_tick)
    })
    .await;
    assert!(daemon.is_running(), "the daemon never stopped");
    drop(state);
}
