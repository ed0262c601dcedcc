//! The `kubeless` CLI as a user runs it: against a real kube-apiserver, against a manifest
//! directory with a running daemon, publishing to real brokers, and refusing bad input with one
//! line and a non-zero exit.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::kubeapi::KubeApi;
use crate::common::*;

const CODE: &str = "def hello(event, context):\n    return event['data']\n";
const DEPS: &str = "requests==2.31.0\n";

/// What one `kubeless` run did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn expect_ok(self) -> Self {
        assert!(self.ok, "kubeless failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// Failed, with exactly one line on stderr that contains `needle`.
    #[track_caller]
    fn expect_one_line_error(self, needle: &str) {
        assert!(!self.ok, "kubeless should have failed; stdout: {}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line expected, got:\n{}", self.stderr);
        assert!(lines[0].contains(needle), "{:?} should mention {needle:?}", lines[0]);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
    }
}

async fn kubeless(args: &[&str], stdin: Option<&Path>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubeless"));
    cmd.args(args).env_remove("KUBELESS_MANIFESTS").env_remove("KAFKA_BROKERS").env_remove("NATS_URL");
    cmd.stdin(match stdin {
        Some(path) => std::fs::File::open(path).expect("stdin file").into(),
        None => std::process::Stdio::null(),
    });
    let out = cmd.output().await.expect("run kubeless");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sha256(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// The table row whose first cell is `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split("   ").map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

fn code_files(dir: &Path) -> (String, String) {
    std::fs::write(dir.join("hello.py"), CODE).expect("code");
    std::fs::write(dir.join("requirements.txt"), DEPS).expect("deps");
    (dir.join("hello.py").display().to_string(), dir.join("requirements.txt").display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_deploys_lists_updates_and_deletes_on_the_api_server() {
    let api = KubeApi::start().await;
    api.install_crds().await;
    let files = tempfile::tempdir().expect("tempdir");
    let (code, deps) = code_files(files.path());
    let kc = api.kubeconfig.display().to_string();
    let k = |args: &[&str]| {
        let all: Vec<String> = ["--kubeconfig", kc.as_str()].iter().chain(args).map(|s| s.to_string()).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            kubeless(&all, None).await
        }
    };

    let deploy = [
        "function",
        "deploy",
        "hello",
        "--runtime",
        "python3.9",
        "--handler",
        "hello.hello",
        "--from-file",
        &code,
        "--dependencies",
        &deps,
        "-e",
        "GREETING=hi",
        "--memory",
        "64Mi",
        "-l",
        "team=shop",
    ];
    k(&deploy).await.expect_ok();
    let f = api.get_json(&["function", "hello", "-n", "default", "--show-managed-fields"]).expect("function stored");
    assert_eq!(f["spec"]["function"], CODE);
    assert_eq!(f["spec"]["checksum"], sha256(CODE));
    assert_eq!(f["spec"]["function-content-type"], "text");
    assert_eq!(f["spec"]["deps"], DEPS);
    assert_eq!(f["spec"]["timeout"], "180");
    assert_eq!(f["metadata"]["labels"], json!({"created-by": "kubeless", "function": "hello", "team": "shop"}));
    let managers: Vec<&str> = f["metadata"]["managedFields"]
        .as_array()
        .expect("managed")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["kubeless-cli"], "written by server-side apply as kubeless-cli");
    k(&deploy).await.expect_one_line_error("Function hello already exists in namespace default");

    // Triggers: a selector that matches nothing is kept, with a warning.
    let kafka = k(&[
        "trigger",
        "kafka",
        "create",
        "orders",
        "--function-selector",
        "created-by=kubeless,function=hello",
        "--trigger-topic",
        "orders",
    ])
    .await
    .expect_ok();
    assert!(!kafka.stderr.contains("warning"), "{}", kafka.stderr);
    let typo =
        k(&["trigger", "kafka", "create", "typo", "--function-selector", "function=helo", "--trigger-topic", "t"])
            .await
            .expect_ok();
    assert!(typo.stderr.contains("warning: --function-selector function=helo matches no function"), "{}", typo.stderr);
    k(&[
        "trigger",
        "cronjob",
        "create",
        "tick",
        "--function",
        "hello",
        "--schedule",
        "*/5 * * * *",
        "-p",
        r#"{"a": 1}"#,
    ])
    .await
    .expect_ok();
    k(&["trigger", "cronjob", "create", "lost", "--function", "missing", "--schedule", "@hourly"])
        .await
        .expect_one_line_error("function missing not found in namespace default");
    k(&["trigger", "http", "create", "web", "--function-name", "hello", "--hostname", "hello.example.com"])
        .await
        .expect_ok();
    k(&["trigger", "http", "create", "auto", "--function-name", "hello"]).await.expect_ok();
    let auto = api.get_json(&["httptrigger", "auto"]).expect("auto");
    assert_eq!(auto["spec"]["host-name"], "hello.127.0.0.1.nip.io", "nginx's default host, as Kubeless made it");
    assert_eq!(auto["spec"]["gateway"], "nginx");

    // Lists.
    let functions = k(&["function", "ls"]).await.expect_ok().stdout;
    assert_eq!(row(&functions, "NAME"), ["NAME", "NAMESPACE", "HANDLER", "RUNTIME", "DEPENDENCIES", "STATUS"]);
    assert_eq!(row(&functions, "hello")[..5], ["hello", "default", "hello.hello", "python3.9", "requests==2.31.0"]);
    let kafka_list = k(&["trigger", "kafka", "list"]).await.expect_ok().stdout;
    assert_eq!(row(&kafka_list, "orders")[..4], ["orders", "default", "orders", "created-by=kubeless,function=hello"]);
    assert_eq!(row(&kafka_list, "typo")[..4], ["typo", "default", "t", "function=helo"]);
    let cron_list = k(&["trigger", "cronjob", "ls"]).await.expect_ok().stdout;
    assert_eq!(row(&cron_list, "tick")[..4], ["tick", "default", "*/5 * * * *", "hello"]);
    let http_list = k(&["trigger", "http", "ls"]).await.expect_ok().stdout;
    assert_eq!(row(&http_list, "web")[..4], ["web", "default", "hello", "hello.example.com"]);
    let as_json: Value =
        serde_json::from_str(&k(&["trigger", "kafka", "ls", "-o", "json"]).await.expect_ok().stdout).expect("json");
    assert_eq!(as_json["items"].as_array().map(Vec::len), Some(2));

    // --dryrun -o yaml writes nothing; the YAML applied with kubectl round-trips.
    let yaml = k(&[
        "trigger",
        "kafka",
        "create",
        "rt",
        "--function-selector",
        "function=hello",
        "--trigger-topic",
        "rt",
        "--dryrun",
        "-o",
        "yaml",
    ])
    .await
    .expect_ok()
    .stdout;
    assert!(api.get_json(&["kafkatrigger", "rt"]).is_none(), "--dryrun must not write");
    let (applied, out) = api.kubectl_stdin(&["apply", "-f", "-"], &yaml);
    assert!(applied, "kubectl apply of the --dryrun output: {out}");
    let rt = api.get_json(&["kafkatrigger", "rt"]).expect("applied");
    assert_eq!(rt["spec"], json!({"functionSelector": {"matchLabels": {"function": "hello"}}, "topic": "rt"}));
    assert_eq!(rt["metadata"]["labels"], json!({"created-by": "kubeless"}));
    let fn_yaml = k(&[
        "function",
        "deploy",
        "rtfn",
        "-r",
        "python3.9",
        "--handler",
        "hello.hello",
        "-f",
        &code,
        "--dryrun",
        "-o",
        "yaml",
    ])
    .await
    .expect_ok()
    .stdout;
    let (applied, out) = api.kubectl_stdin(&["apply", "-f", "-"], &fn_yaml);
    assert!(applied, "kubectl apply of the function: {out}");
    let rtfn = api.get_json(&["function", "rtfn"]).expect("applied");
    assert_eq!(rtfn["spec"]["function"], CODE);
    assert_eq!(rtfn["spec"]["service"]["ports"][0]["targetPort"], 8080);

    // Updates change only what was given.
    let before = api.get_json(&["function", "hello"]).expect("hello");
    k(&["function", "update", "hello", "--memory", "128Mi"]).await.expect_ok();
    let after = api.get_json(&["function", "hello"]).expect("hello");
    let mut expected = before["spec"].clone();
    let container = &mut expected["deployment"]["spec"]["template"]["spec"]["containers"][0];
    container["resources"] = json!({"limits": {"memory": "128Mi"}, "requests": {"memory": "128Mi"}});
    assert_eq!(after["spec"], expected, "--memory changes the memory and nothing else");
    assert_eq!(after["metadata"]["labels"], before["metadata"]["labels"]);
    k(&["trigger", "kafka", "update", "orders", "--trigger-topic", "orders-v2"]).await.expect_ok();
    let orders = api.get_json(&["kafkatrigger", "orders"]).expect("orders");
    assert_eq!(
        orders["spec"],
        json!({"functionSelector": {"matchLabels": {"created-by": "kubeless", "function": "hello"}}, "topic": "orders-v2"})
    );
    k(&["trigger", "cronjob", "update", "tick", "--schedule", "@daily"]).await.expect_ok();
    let tick = api.get_json(&["cronjobtrigger", "tick"]).expect("tick");
    assert_eq!(tick["spec"], json!({"function-name": "hello", "schedule": "@daily", "payload": {"a": 1}}));
    k(&["trigger", "http", "update", "web", "--path", "api"]).await.expect_ok();
    let web = api.get_json(&["httptrigger", "web"]).expect("web");
    assert_eq!(
        web["spec"],
        json!({"function-name": "hello", "host-name": "hello.example.com", "gateway": "nginx", "path": "api"})
    );
    k(&["function", "update", "nothere", "--memory", "1Gi"])
        .await
        .expect_one_line_error("Function nothere not found in namespace default");

    // An autoscaler goes into spec.horizontalPodAutoscaler.
    k(&["autoscale", "create", "hello", "--min", "1", "--max", "3", "--metric", "qps", "--value", "10"])
        .await
        .expect_ok();
    let scaled = api.get_json(&["function", "hello"]).expect("hello");
    assert_eq!(scaled["spec"]["horizontalPodAutoscaler"]["spec"]["maxReplicas"], 3);
    let autoscalers = k(&["autoscale", "ls"]).await.expect_ok().stdout;
    assert_eq!(row(&autoscalers, "hello"), ["hello", "default", "hello", "1", "3", "qps", "10"]);

    // Deletes.
    k(&["trigger", "kafka", "delete", "orders"]).await.expect_ok();
    k(&["trigger", "cronjob", "delete", "tick"]).await.expect_ok();
    k(&["trigger", "http", "delete", "web"]).await.expect_ok();
    k(&["function", "delete", "hello"]).await.expect_ok();
    for (kind, name) in
        [("kafkatrigger", "orders"), ("cronjobtrigger", "tick"), ("httptrigger", "web"), ("function", "hello")]
    {
        assert!(api.get_json(&[kind, name]).is_none(), "{kind} {name} should be gone");
    }
    k(&["trigger", "kafka", "delete", "orders"])
        .await
        .expect_one_line_error("KafkaTrigger orders not found in namespace default");
    let left = k(&["trigger", "kafka", "ls"]).await.expect_ok().stdout;
    assert!(!left.contains("orders"), "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_with_a_manifest_directory_reaches_the_function_without_a_cluster() {
    let kafka = Kafka::start().await;
    let function = Function::start(Behaviour::Ok).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let (code, _) = code_files(files.path());
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    let m = dir.path().display().to_string();
    let k = |args: &[&str]| {
        let all: Vec<String> = ["--manifests", m.as_str()].iter().chain(args).map(|s| s.to_string()).collect();
        async move {
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            kubeless(&all, None).await
        }
    };

    k(&[
        "function",
        "deploy",
        "hello",
        "-r",
        "python3.9",
        "--handler",
        "hello.hello",
        "-f",
        &code,
        "--url",
        &function.url,
    ])
    .await
    .expect_ok();
    k(&[
        "trigger",
        "kafka",
        "create",
        "orders",
        "--function-selector",
        "function=hello",
        "--trigger-topic",
        "cli-orders",
    ])
    .await
    .expect_ok();
    kubeless(&["topic", "create", "cli-orders", "--brokers", &kafka.brokers], None).await.expect_ok();
    // Bare names, one per line, as Kubeless printed them: its tests `grep -qxF` them.
    let topics = kubeless(&["topic", "list", "--brokers", &kafka.brokers], None).await.expect_ok().stdout;
    assert!(topics.lines().any(|l| l == "cli-orders"), "{topics}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["function-default-hello.yaml", "kafkatrigger-default-orders.yaml"]);
    daemon.wait_states(&["hello"], |s| s[0] == "Ready").await;

    let published = kubeless(
        &["topic", "publish", "--topic", "cli-orders", "--data", r#"{"n": 1}"#, "--brokers", &kafka.brokers],
        None,
    )
    .await
    .expect_ok();
    assert!(published.stdout.contains("1 acknowledged, 0 failed"), "{}", published.stdout);
    wait_for("the message at the function", Duration::from_secs(30), || function.delivered() >= 1).await;
    assert_eq!(function.received()[0].body, r#"{"n": 1}"#);

    let list = k(&["function", "ls"]).await.expect_ok().stdout;
    assert_eq!(row(&list, "hello")[..4], ["hello", "default", "hello.hello", "python3.9"]);
    let called = k(&["function", "call", "hello", "--data", "ping"]).await.expect_ok();
    assert_eq!(function.received().last().map(|r| r.body.clone()).as_deref(), Some("ping"));
    assert_eq!(
        function.received().last().map(|r| r.headers["event-namespace"].clone()).as_deref(),
        Some("cli.kubeless.io")
    );
    assert!(called.ok);
    // Kubeless's flag and keys: its examples grep `function top --function F --out yaml`.
    let top = k(&["function", "top", "--function", "hello", "--out", "yaml"]).await.expect_ok().stdout;
    assert!(top.starts_with("- function: hello\n  namespace: default\n"), "{top}");

    k(&["trigger", "kafka", "update", "orders", "--trigger-topic", "cli-orders-2"]).await.expect_ok();
    let text = std::fs::read_to_string(dir.path().join("kafkatrigger-default-orders.yaml")).expect("file");
    assert!(text.contains("topic: cli-orders-2") && text.contains("function: hello"), "{text}");
    k(&["trigger", "kafka", "delete", "orders"]).await.expect_ok();
    assert!(!dir.path().join("kafkatrigger-default-orders.yaml").exists());
    daemon.wait_states(&["hello"], |s| s[0].is_empty()).await;
}

/// The bodies of every record of the topic's `partitions`, read until `expect` have come (or 60 s).
fn read_topic(brokers: &str, topic: &str, partitions: i32, expect: usize) -> Vec<Vec<u8>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "cli-count").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    while out.len() < expect && start.elapsed() < Duration::from_secs(60) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.payload().unwrap_or_default().to_vec());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publishes_a_file_to_kafka_and_says_when_the_broker_goes() {
    const LINES: usize = 100_000;
    let mut kafka = Kafka::start().await;
    kafka.create_topic("bulk", 4).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lines.txt");
    let text: String = (0..LINES).map(|i| format!("k{}|message {i}\n", i % 100)).collect();
    std::fs::write(&path, text).expect("lines");
    let file = path.display().to_string();

    let run = kubeless(
        &["topic", "publish", "--topic", "bulk", "--file", &file, "--key-separator", "|", "--brokers", &kafka.brokers],
        None,
    )
    .await
    .expect_ok();
    assert!(run.stdout.contains(&format!("Published {LINES} messages")), "{}", run.stdout);
    assert!(run.stdout.contains(&format!("{LINES} acknowledged, 0 failed")), "{}", run.stdout);
    // Counted by reading them back (tansu's high watermarks lag behind what it stores).
    let brokers = kafka.brokers.clone();
    let stored = tokio::task::spawn_blocking(move || read_topic(&brokers, "bulk", 4, LINES)).await.expect("reader");
    assert_eq!(stored.len(), LINES, "every line is on the broker");
    assert!(stored.iter().all(|b| b.starts_with(b"message ")), "the key is split off each line");

    // From stdin, twice over with --count capping.
    let piped =
        kubeless(&["topic", "publish", "--topic", "bulk", "--count", "10", "--brokers", &kafka.brokers], Some(&path))
            .await
            .expect_ok();
    assert!(piped.stdout.contains("10 acknowledged"), "{}", piped.stdout);

    // The broker dies mid-publish: a non-zero exit that says how many were acknowledged.
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "x".repeat(1000) + "\n").expect("big");
    let args = [
        "topic",
        "publish",
        "--topic",
        "bulk",
        "--file",
        &big.display().to_string(),
        "--repeat",
        "300000",
        "--rate",
        "20000",
        "--timeout",
        "3s",
        "--brokers",
        &kafka.brokers,
    ]
    .map(String::from);
    let publishing = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kubeless(&args, None).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka.kill();
    let run = publishing.await.expect("publisher");
    assert!(!run.ok, "publishing into a dead broker must fail; stdout: {}", run.stdout);
    let summary = run.stdout.lines().last().unwrap_or_default().to_string();
    let acked: u64 = summary
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summary {summary:?}"));
    assert!(acked > 0, "some were acknowledged before the kill: {summary}");
    assert!(run.stderr.contains("messages were not acknowledged by Kafka topic bulk"), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_publishes_to_jetstream_and_kinesis() {
    const LINES: usize = 5_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("lines.txt");
    std::fs::write(&path, (0..LINES).map(|i| format!("p{}:{i}\n", i % 7)).collect::<String>()).expect("lines");
    let file = path.display().to_string();

    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "ORDERS", &["orders.>"]).await.expect("stream");
    let run = kubeless(
        &[
            "trigger",
            "nats",
            "publish",
            "--url",
            &nats.url,
            "--topic",
            "orders.new",
            "--file",
            &file,
            "--header",
            "source=cli",
        ],
        None,
    )
    .await
    .expect_ok();
    assert!(
        run.stdout.contains("JetStream stream ORDERS") && run.stdout.contains(&format!("{LINES} acknowledged")),
        "{}",
        run.stdout
    );
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("ORDERS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, LINES as u64, "every line is in the stream");
    let first = stream.get_raw_message(1).await.expect("first");
    assert_eq!(first.headers.get("source").map(|v| v.to_string()).as_deref(), Some("cli"));
    // Kubeless's own flags: one message to a core subject.
    kubeless(&["trigger", "nats", "publish", "--url", &nats.url, "--topic", "plain", "--message", "hi"], None)
        .await
        .expect_ok();

    // Kinesis (kinesalite: moto's PutRecords is not safe for concurrent calls), signing in with
    // keys from a Secret in a manifest directory.
    let kinesis = Kinesis::kinesalite().await;
    kubeless_kinesis::create_stream(&kinesis.client().await, "events", 2).await.expect("stream");
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        secrets.path().join("aws.yaml"),
        "apiVersion: v1\nkind: Secret\nmetadata: {name: aws}\nstringData: {aws_access_key_id: testing, aws_secret_access_key: testing}\n",
    )
    .expect("secret");
    let m = secrets.path().display().to_string();
    let aws = [
        "--manifests",
        m.as_str(),
        "trigger",
        "kinesis",
        "publish",
        "--stream",
        "events",
        "--aws-region",
        "us-east-1",
        "--endpoint",
        &kinesis.endpoint,
        "--secret",
        "aws",
    ];
    let run = kubeless(&[&aws[..], &["--file", &file, "--key-separator", ":"]].concat(), None).await.expect_ok();
    assert!(run.stdout.contains(&format!("{LINES} acknowledged")), "{}", run.stdout);
    let client = kinesis.client().await;
    let mut total = 0;
    for shard in client.list_shards().stream_name("events").send().await.expect("shards").shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name("events")
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator()
            .map(str::to_string);
        while let Some(it) = iterator {
            let out = client.get_records().shard_iterator(it).limit(10_000).send().await.expect("records");
            total += out.records().len();
            iterator = if out.records().is_empty() { None } else { out.next_shard_iterator().map(str::to_string) };
        }
    }
    assert_eq!(total, LINES, "every line is on the stream");
    let records = kubeless(&[&aws[..], &["--partition-key", "k", "--records", "a", "--records", "b"]].concat(), None)
        .await
        .expect_ok();
    assert!(records.stdout.contains("2 acknowledged"), "{}", records.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_refuses_bad_input_with_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().display().to_string();
    let (code, _) = code_files(dir.path());
    let dead = format!("127.0.0.1:{}", free_port());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["function", "deploy", "f", "--nope"], "unexpected argument '--nope'"),
        (
            vec![
                "--manifests",
                &m,
                "trigger",
                "kafka",
                "create",
                "t",
                "--trigger-topic",
                "x",
                "--function-selector",
                "a=b c",
            ],
            "--function-selector",
        ),
        (
            vec![
                "--manifests",
                &m,
                "function",
                "deploy",
                "f",
                "-r",
                "python3.9",
                "--handler",
                "h.f",
                "-f",
                "/nonexistent/code.py",
            ],
            "cannot read /nonexistent/code.py",
        ),
        (vec!["topic", "publish", "--topic", "t", "--data", "x", "--brokers", &dead], &dead),
        (
            vec!["topic", "publish", "--topic", "t", "--file", "/nonexistent/lines.txt", "--brokers", &dead],
            "/nonexistent/lines.txt",
        ),
        (
            vec!["trigger", "nats", "publish", "--url", "nats://127.0.0.1:1", "--topic", "t", "--data", "x"],
            "nats://127.0.0.1:1",
        ),
        (
            vec!["--manifests", &m, "function", "deploy", "f", "-r", "cobol85", "--handler", "h.f", "-f", &code],
            "unknown runtime \"cobol85\"",
        ),
        (vec!["--manifests", &m, "function", "deploy", "f", "--handler", "h.f", "-f", &code], "--runtime: is required"),
        (
            vec!["--manifests", &m, "trigger", "cronjob", "create", "c", "--function", "f", "--schedule", "every day"],
            "--schedule",
        ),
        (vec!["--manifests", "/nonexistent/dir", "function", "ls"], "/nonexistent/dir"),
    ];
    for (args, needle) in cases {
        kubeless(&args, None).await.expect_one_line_error(needle);
    }
    let listed = std::fs::read_dir(dir.path()).expect("dir").count();
    assert_eq!(listed, 2, "nothing was written by the refused commands");
}
