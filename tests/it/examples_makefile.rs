//! Kubeless's `examples/Makefile`, as its users ran it: the targets' `kubeless` command lines,
//! unchanged, against a manifest directory and a running daemon that runs the functions itself
//! (tests/data/examples/Makefile says what stands in for the cluster-only `kubectl` lines). Each
//! target is run with `make`, then its `-verify` target until it passes, as Kubeless's CI waited
//! for each function's rollout.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// How long a `-verify` target may keep failing: a first dependency install included.
const VERIFY_WITHIN: Duration = Duration::from_secs(240);

/// Copies `from` into `to`, recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

struct Examples {
    work: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Examples {
    /// `make TARGET` in the examples' copy; its output.
    async fn make(&self, target: &str) -> (bool, String) {
        let out = tokio::process::Command::new("make")
            .arg("-s")
            .arg(target)
            .current_dir(self.work.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run make");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// `make TARGET` (which must pass), then `make TARGET-verify` until it passes.
    async fn run(&self, daemon: &Daemon, target: &str) {
        let (ok, out) = self.make(target).await;
        assert!(ok, "make {target}:\n{out}");
        self.verify(daemon, &format!("{target}-verify")).await;
    }

    async fn verify(&self, daemon: &Daemon, target: &str) {
        let start = Instant::now();
        loop {
            let (ok, out) = self.make(target).await;
            if ok {
                return;
            }
            assert!(
                start.elapsed() < VERIFY_WITHIN,
                "make {target} kept failing:\n{out}\nstatus: {}\nlog:\n{}",
                daemon.status().await,
                daemon.log_text()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeless_examples_makefile_targets_pass_against_a_manifest_directory() {
    let kafka = Kafka::start().await;
    let nats = Nats::start().await;
    let kinesis = Kinesis::kinesalite().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &["--nats-url", &nats.url]).await;
    let work = tempfile::tempdir().expect("tempdir");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/examples"), work.path());
    // A path gem: the gem registry cannot be reached from here.
    let gem = work.path().join("ruby/greeting");
    std::fs::write(work.path().join("ruby/Gemfile"), format!("gem 'greeting', path: '{}'\n", gem.display()))
        .expect("Gemfile");
    let bin = Path::new(env!("CARGO_BIN_EXE_kubeless")).parent().expect("bin dir").display().to_string();
    let port = |url: &str| url.rsplit(':').next().unwrap_or_default().trim_end_matches('/').to_string();
    let env = vec![
        ("PATH".to_string(), format!("{bin}:{}", std::env::var("PATH").unwrap_or_default())),
        ("KUBELESS_MANIFESTS".to_string(), dir.path().display().to_string()),
        ("KUBELESS_STATE_DIR".to_string(), daemon.state_dir().display().to_string()),
        ("KAFKA_BROKERS".to_string(), kafka.brokers.clone()),
        ("MINIKUBE_IP".to_string(), "127.0.0.1".to_string()),
        ("NATS_NODEPORT".to_string(), port(&nats.url)),
        ("KINESIS_NODEPORT".to_string(), port(&kinesis.endpoint)),
        ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
    ];
    let examples = Examples { work, env };

    // Deployed together (each deploy returns at once), then verified one by one.
    let targets = [
        "get-python",
        "get-python-deps",
        "get-python-deps-tar-gz",
        "get-python-deps-tar-bz2",
        "get-python-deps-tar-xz",
        "get-python-custom-port",
        "get-python-metadata",
        "timeout-python",
        "post-python",
        "post-python-custom-port",
        "get-nodejs",
        "get-nodejs-custom-port",
        "get-nodejs-deps",
        "get-nodejs-stream",
        "get-nodejs-multi",
        "timeout-nodejs",
        "post-nodejs",
        "get-ruby",
        "get-ruby-deps",
        "get-ruby-custom-port",
        "timeout-ruby",
        "post-ruby",
        "pubsub-python",
        "pubsub-nodejs",
        "python-nats",
        "python-kinesis",
        "scheduled-get-python",
    ];
    for target in targets {
        let (ok, out) = examples.make(target).await;
        assert!(ok, "make {target}:\n{out}");
    }
    for target in targets {
        examples.verify(&daemon, &format!("{target}-verify")).await;
    }
    // Updates: new code, then new dependencies, each serving once it is up.
    examples.run(&daemon, "get-python-update").await;
    examples.run(&daemon, "get-python-deps-update").await;
}
