//! Local functions (standalone mode): Kubeless functions, with their dependencies, run by the
//! daemon itself and fed by triggers, with no `kubeless.io/url` anywhere; restarted when killed,
//! replaced without loss when their code changes, gone with the daemon, and reported in `/status`
//! when they cannot run.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// How long a local function may take to serve: a dependency install from the registry included.
const SERVING_WITHIN: Duration = Duration::from_secs(300);

/// A Kubeless Python function that imports its pip dependency and appends what it got to `$OUT`.
fn python_code(version: &str) -> String {
    format!(
        "import os\nimport six\n\n\ndef handler(event, context):\n    data = event['data']\n    data = data.decode() if isinstance(data, bytes) else data\n    with open(os.environ['OUT'], 'a') as f:\n        f.write('{version} %s %s\\n' % (six.__name__, data))\n    print('handled %s' % data, flush=True)\n    return 'ok ' + str(data)\n"
    )
}

/// The `/status` report of local function `default/<name>` (`null` until there is one).
async fn local(daemon: &Daemon, name: &str) -> Value {
    daemon.status().await["local_functions"][format!("default/{name}")].clone()
}

/// Waits until the local function serves (its version, if given); panics with `/status` and the log.
async fn wait_serving(daemon: &Daemon, name: &str, version: Option<&str>) -> Value {
    let start = Instant::now();
    loop {
        let report = local(daemon, name).await;
        if report["state"] == "Serving" && version.is_none_or(|v| report["version"] == v) && report["pid"].is_u64() {
            return report;
        }
        assert!(
            start.elapsed() < SERVING_WITHIN,
            "{name} not serving: {report}\nstatus: {}\nlog:\n{}",
            daemon.status().await,
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lines the handler wrote.
fn lines(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out).unwrap_or_default().lines().map(str::to_string).collect()
}

/// The messages (last word) of the lines the handler wrote.
fn messages(out: &Path) -> BTreeSet<String> {
    lines(out).iter().filter_map(|l| l.rsplit(' ').next()).map(str::to_string).collect()
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Live processes in process group `group`.
fn group_members(group: u64) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().is_some_and(|s| {
                let fields: Vec<&str> = s.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
                fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse::<u64>().ok()) == Some(group)
            })
        })
        .collect()
}

async fn kubeless(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    kubeless_in(&std::env::temp_dir(), args, env).await
}

/// `kubeless ARGS` run in `cwd` with `env` (and no manifest directory of the caller's).
async fn kubeless_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubeless"))
        .current_dir(cwd)
        .args(args)
        .env_remove("KUBELESS_MANIFESTS")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run kubeless");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_function_with_a_pip_dependency_runs_locally_behind_a_kafka_trigger() {
    let kafka = Kafka::start().await;
    kafka.create_topic("greetings", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("handled.txt");
    let out_text = out.display().to_string();
    let manifests = [
        local_function_yaml(
            "hello",
            "python3.7",
            "hello.handler",
            &python_code("v1"),
            "six==1.16.0\n",
            &[("OUT", &out_text)],
        ),
        trigger_yaml("greet", "greetings", "{function: hello}", ""),
    ];
    std::fs::write(dir.path().join("hello.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    let report = wait_serving(&daemon, "hello", None).await;
    assert!(report["url"].as_str().is_some_and(|u| u.starts_with("http://127.0.0.1:")), "{report}");
    daemon.wait_states(&["hello"], |s| s[0] == "Ready").await;

    const N: usize = 40;
    let records = (0..N).map(|i| (None, format!("m-{i}").into_bytes())).collect();
    kafka.publish_all("greetings", records).await;
    wait_for("every message handled", Duration::from_secs(60), || messages(&out).len() >= N).await;
    let expected: BTreeSet<String> = (0..N).map(|i| format!("m-{i}")).collect();
    assert_eq!(messages(&out), expected);
    assert!(
        lines(&out).iter().all(|l| l.starts_with("v1 six m-")),
        "the handler imported its dependency: {:?}",
        lines(&out)
    );

    // The function's own output, through the CLI, as `kubeless function logs` showed a pod's.
    let m = dir.path().display().to_string();
    let state = daemon.state_dir().display().to_string();
    let base = ["--manifests", m.as_str(), "--state-dir", state.as_str()];
    let logs_args: Vec<&str> = base.iter().copied().chain(["function", "logs", "hello"]).collect();
    let (ok, logs, err) = kubeless(&logs_args, &[]).await;
    assert!(ok, "{err}");
    assert!(logs.contains("handled m-0") && logs.contains(&format!("handled m-{}", N - 1)), "{logs}");
    let call_args: Vec<&str> = base.iter().copied().chain(["function", "call", "hello", "--data", "ping"]).collect();
    let (ok, answer, err) = kubeless(&call_args, &[]).await;
    assert!(ok, "{err}");
    assert_eq!(answer.trim(), "ok ping");
    assert!(daemon.log_text().contains("handled m-0"), "the daemon's log carries the function's output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_function_is_restarted_a_code_edit_switches_without_loss_and_the_daemon_takes_it_along() {
    let kafka = Kafka::start().await;
    kafka.create_topic("work", 2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("handled.txt");
    let out_text = out.display().to_string();
    let write = |version: &str| {
        let code = python_code(version).replace("return 'ok '", "import time\n    time.sleep(0.01)\n    return 'ok '");
        let manifests = [
            local_function_yaml("worker", "python3.9", "worker.handler", &code, "six==1.16.0\n", &[("OUT", &out_text)]),
            trigger_yaml(
                "work",
                "work",
                "{function: worker}",
                "  delivery: {retry: {initialBackoff: 100ms, maxBackoff: 500ms}}\n",
            ),
        ];
        std::fs::write(dir.path().join("worker.yaml"), manifests.join("---\n")).expect("write");
    };
    write("v1");
    let mut daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    let first = wait_serving(&daemon, "worker", None).await;
    daemon.wait_states(&["worker"], |s| s[0] == "Ready").await;
    let first_pid = first["pid"].as_u64().expect("pid");

    // kill -9 of the function mid-stream: restarted, nothing lost.
    const N: usize = 300;
    let records = (0..N).map(|i| (None, format!("a{i}").into_bytes())).collect();
    kafka.publish_all("work", records).await;
    wait_for("some handled", Duration::from_secs(60), || messages(&out).len() >= 30).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first_pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the function");
    wait_for("every a-message handled after the restart", Duration::from_secs(120), || {
        messages(&out).iter().filter(|m| m.starts_with('a')).count() >= N
    })
    .await;
    let restarted = wait_serving(&daemon, "worker", None).await;
    assert!(restarted["restarts"].as_u64() >= Some(1), "{restarted}");
    assert_ne!(restarted["pid"], first["pid"]);
    assert!(daemon.metric("kubeless_local_function_restarts_total").await >= 1.0);
    // A code edit while messages flow: every message is handled (by v1 or v2), none lost; once v2
    // serves, only v2 answers; the old process goes.
    let old_pid = restarted["pid"].as_u64().expect("pid");
    let old_version = restarted["version"].as_str().expect("version").to_string();
    const FLOWING: usize = 200;
    let publishing = async {
        for batch in 0..20 {
            let records = (0..10).map(|i| (None, format!("b{}", batch * 10 + i).into_bytes())).collect();
            kafka.publish_all("work", records).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let switching = async {
        write("v2");
        let start = Instant::now();
        loop {
            let r = local(&daemon, "worker").await;
            if r["state"] == "Serving" && r["version"] != old_version.as_str() && r["pid"].is_u64() {
                break r;
            }
            assert!(start.elapsed() < SERVING_WITHIN, "v2 never served: {r}\n{}", daemon.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let ((), replaced) = tokio::join!(publishing, switching);
    wait_for("every message published across the switch handled", Duration::from_secs(60), || {
        messages(&out).iter().filter(|m| m.starts_with('b')).count() >= FLOWING
    })
    .await;
    let flowing: BTreeSet<String> = messages(&out).into_iter().filter(|m| m.starts_with('b')).collect();
    assert_eq!(flowing, (0..FLOWING).map(|i| format!("b{i}")).collect::<BTreeSet<_>>(), "none lost across the switch");
    let records = (0..50).map(|i| (None, format!("c{i}").into_bytes())).collect();
    kafka.publish_all("work", records).await;
    wait_for("every c-message handled", Duration::from_secs(60), || {
        messages(&out).iter().filter(|m| m.starts_with('c')).count() >= 50
    })
    .await;
    let c_lines: Vec<String> =
        lines(&out).into_iter().filter(|l| l.rsplit(' ').next().is_some_and(|m| m.starts_with('c'))).collect();
    assert!(c_lines.iter().all(|l| l.starts_with("v2 ")), "after the switch only v2 answers: {c_lines:?}");
    wait_for("the old process stopped", Duration::from_secs(45), || !alive(old_pid)).await;
    assert_eq!(daemon.consumer_state("worker").await, "Ready", "the consumer kept running across the switch");

    // kill -9 of the daemon: its function goes with it.
    let pid = replaced["pid"].as_u64().expect("pid");
    assert!(alive(pid));
    daemon.kill9();
    wait_for("no process of the function left", Duration::from_secs(15), || {
        !alive(pid) && group_members(pid).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_runtime_or_a_failed_install_is_reported_and_other_functions_go_on() {
    let kafka = Kafka::start().await;
    kafka.create_topic("ok", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("handled.txt");
    let out_text = out.display().to_string();
    let node_code = "module.exports = { handler: (event) => 'hi' };\n";
    let manifests = [
        local_function_yaml(
            "good",
            "python3.9",
            "good.handler",
            &python_code("v1"),
            "six==1.16.0\n",
            &[("OUT", &out_text)],
        ),
        local_function_yaml("nonode", "nodejs20", "h.handler", node_code, "", &[]),
        local_function_yaml(
            "baddeps",
            "python3.9",
            "b.handler",
            &python_code("v1"),
            "this is not a requirement!!\n",
            &[],
        ),
        local_function_yaml("golang", "go1.14", "h.Handler", "package kubeless", "", &[]),
        trigger_yaml("good", "ok", "{function: good}", ""),
        trigger_yaml("nonode", "ok", "{function: nonode}", ""),
        trigger_yaml("baddeps", "ok", "{function: baddeps}", ""),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    // The daemon's PATH has what the Python runtime and pip need, and no node.
    let bin = tempfile::tempdir().expect("tempdir");
    for tool in ["bash", "sh", "dirname", "python3", "setpriv"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").expect("PATH"))
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} on PATH"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).expect("symlink");
    }
    let path = bin.path().display().to_string();
    let daemon = Daemon::start_with_env(dir.path(), &kafka.brokers, &[], &[("PATH", &path)]).await;
    wait_serving(&daemon, "good", None).await;

    let start = Instant::now();
    let (nonode, baddeps) = loop {
        let (n, b) = (local(&daemon, "nonode").await, local(&daemon, "baddeps").await);
        if n["state"] == "Failed" && b["state"] == "Failed" {
            break (n, b);
        }
        assert!(start.elapsed() < SERVING_WITHIN, "nonode: {n}\nbaddeps: {b}\n{}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(nonode["problem"].as_str().is_some_and(|p| p.contains("node is not on the daemon's PATH")), "{nonode}");
    let why = baddeps["problem"].as_str().unwrap_or_default();
    assert!(
        why.contains("installing the dependencies (requirements.txt) failed") && why.contains("install.log"),
        "{baddeps}"
    );
    let golang = local(&daemon, "golang").await;
    assert_eq!(golang["state"], "Unrunnable", "{golang}");
    assert!(golang["problem"].as_str().is_some_and(|p| p.contains("spec.runtime")), "{golang}");

    // The triggers say why in /status; the good one delivers.
    let status = daemon.status().await;
    let reason_of = |trigger: &str| {
        status["trigger_problems"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["object"] == format!("KafkaTrigger default/{trigger}")))
            .map(|p| {
                (
                    p["reason"].as_str().unwrap_or_default().to_string(),
                    p["problem"].as_str().unwrap_or_default().to_string(),
                )
            })
    };
    let (reason, problem) = reason_of("nonode").expect("nonode's trigger has a problem");
    assert_eq!(reason, "FunctionNotRunning");
    assert!(problem.contains("node is not on the daemon's PATH"), "{problem}");
    assert_eq!(reason_of("baddeps").map(|r| r.0).as_deref(), Some("FunctionNotRunning"));
    daemon.wait_states(&["good"], |s| s[0] == "Ready").await;
    kafka.publish_all("ok", (0..10).map(|i| (None, format!("g{i}").into_bytes())).collect()).await;
    wait_for("the good function handles every message", Duration::from_secs(60), || messages(&out).len() >= 10).await;
    assert!(daemon.get("/healthz").await.is_some_and(|(s, _)| s == 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_jetstream_and_ruby_behind_core_nats_run_locally_with_their_dependencies() {
    let nats = Nats::start().await;
    kubeless_nats::create_stream(&nats.client().await, "EVENTS", &["events.>"]).await.expect("stream");
    let dir = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let (node_out, ruby_out) = (work.path().join("node.txt"), work.path().join("ruby.txt"));
    // A gem of the test's own, found by path: the gem registry cannot be reached here.
    let gem = work.path().join("greeting");
    std::fs::create_dir_all(gem.join("lib")).expect("gem dir");
    std::fs::write(
        gem.join("greeting.gemspec"),
        "Gem::Specification.new do |s|\n  s.name = 'greeting'\n  s.version = '1.0.0'\n  s.summary = 'a test gem'\n  s.authors = ['tests']\n  s.files = ['lib/greeting.rb']\nend\n",
    )
    .expect("gemspec");
    std::fs::write(
        gem.join("lib/greeting.rb"),
        "module Greeting\n  def self.hi(name)\n    \"hi #{name}\"\n  end\nend\n",
    )
    .expect("gem code");
    let node_code = "const fs = require('fs');\nconst ms = require('ms');\n\nmodule.exports = {\n  handler: (event, context) => {\n    fs.appendFileSync(process.env.OUT, `node ${ms(60000)} ${event.data}\\n`);\n    console.log(`handled ${event.data}`);\n    return 'ok';\n  },\n};\n";
    let ruby_code = "require 'greeting'\n\ndef handler(event, context)\n  File.open(ENV['OUT'], 'a') { |f| f.puts(\"ruby #{Greeting.hi(event[:data])}\") }\n  puts \"handled #{event[:data]}\"\n  'ok'\nend\n";
    let gemfile = format!("gem 'greeting', path: '{}'\n", gem.display());
    let manifests = [
        local_function_yaml(
            "jsfn",
            "nodejs14",
            "handler.handler",
            node_code,
            r#"{"name": "jsfn", "version": "1.0.0", "dependencies": {"ms": "2.1.3"}}"#,
            &[("OUT", &node_out.display().to_string())],
        ),
        local_function_yaml(
            "rbfn",
            "ruby2.6",
            "handler.handler",
            ruby_code,
            &gemfile,
            &[("OUT", &ruby_out.display().to_string())],
        ),
        nats_trigger_yaml("js", "events.js", "{function: jsfn}", "  jetstream: {stream: EVENTS}\n"),
        nats_trigger_yaml("rb", "ruby.in", "{function: rbfn}", ""),
    ];
    std::fs::write(dir.path().join("m.yaml"), manifests.join("---\n")).expect("write");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &["--nats-url", &nats.url]).await;
    wait_serving(&daemon, "jsfn", None).await;
    wait_serving(&daemon, "rbfn", None).await;
    daemon.wait_states(&["jsfn", "rbfn"], |s| s.iter().all(|s| s == "Ready")).await;

    const N: usize = 30;
    nats.publish_all("events.js", (0..N).map(|i| format!("j{i}")), true).await;
    nats.publish_all("ruby.in", (0..N).map(|i| format!("r{i}")), false).await;
    wait_for("every message handled", Duration::from_secs(60), || {
        messages(&node_out).len() >= N && messages(&ruby_out).len() >= N
    })
    .await;
    assert_eq!(messages(&node_out), (0..N).map(|i| format!("j{i}")).collect::<BTreeSet<_>>());
    assert_eq!(messages(&ruby_out), (0..N).map(|i| format!("r{i}")).collect::<BTreeSet<_>>());
    assert!(lines(&node_out).iter().all(|l| l.starts_with("node 1m j")), "ms was installed: {:?}", lines(&node_out));
    assert!(
        lines(&ruby_out).iter().all(|l| l.starts_with("ruby hi r")),
        "the gem was installed: {:?}",
        lines(&ruby_out)
    );

    let m = dir.path().display().to_string();
    let state = daemon.state_dir().display().to_string();
    for (function, first) in [("jsfn", "handled j0"), ("rbfn", "handled r0")] {
        let args = ["--manifests", m.as_str(), "--state-dir", state.as_str(), "function", "logs", function];
        let (ok, logs, err) = kubeless(&args, &[]).await;
        assert!(ok && logs.contains(first), "{function}: {logs}{err}");
    }
}

/// Kubeless's getting started (its README and "PubSub functions" guide), typed unchanged: only the
/// environment says where the manifests, the broker's state and the Kafka brokers are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeless_getting_started_typed_unchanged_works_against_a_manifest_directory() {
    let kafka = Kafka::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), &kafka.brokers, &[]).await;
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("test.py"), "def hello(event, context):\n  print(event)\n  return event['data']\n")
        .expect("test.py");
    let (m, state) = (dir.path().display().to_string(), daemon.state_dir().display().to_string());
    let env = [
        ("KUBELESS_MANIFESTS", m.as_str()),
        ("KUBELESS_STATE_DIR", state.as_str()),
        ("KAFKA_BROKERS", kafka.brokers.as_str()),
    ];
    let typed = |line: &'static str| {
        let args = shell_words(line);
        let (cwd, env) = (work.path().to_path_buf(), env);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = kubeless_in(&cwd, &args[1..], &env).await;
            assert!(ok, "{line}: {err}");
            out
        }
    };

    typed("kubeless function deploy hello --runtime python3.7 --from-file test.py --handler test.hello").await;
    let start = Instant::now();
    while !typed("kubeless function ls")
        .await
        .lines()
        .any(|l| l.starts_with("hello") && l.trim_end().ends_with("READY") && !l.contains("NOT READY"))
    {
        assert!(
            start.elapsed() < SERVING_WITHIN,
            "hello never READY: {}\n{}",
            daemon.status().await,
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(typed("kubeless function call hello --data 'Hello world!'").await.trim(), "Hello world!");

    typed("kubeless topic create test-topic").await;
    typed("kubeless trigger kafka create test --function-selector created-by=kubeless,function=hello --trigger-topic test-topic").await;
    daemon.wait_states(&["hello"], |s| s[0] == "Ready").await;
    typed("kubeless topic publish --topic test-topic --data \"Hello World!\"").await;
    let start = Instant::now();
    while !typed("kubeless function logs hello").await.contains("Hello World!") {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the message never reached the function: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A command line split as a POSIX shell would (quotes only; enough for the lines above).
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => (quote, any) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            (_, c) => (word.push(c), any = true).0,
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// HTTPTriggers in standalone mode: the daemon's gateway routes host and path to the function as
/// Kubeless's Ingress did, follows the function across a code change, and refuses to serve a
/// trigger whose basic auth only a cluster enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_triggers_are_served_by_the_local_gateway_as_an_ingress_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let code = |greeting: &str| {
        format!(
            "def handler(event, context):\n    r = event['extensions']['request']\n    return '{greeting} %s %s %s' % (r.method, r.path, r.query_string)\n"
        )
    };
    std::fs::write(work.path().join("echo.py"), code("v1")).expect("code");
    let daemon = Daemon::start(dir.path(), "127.0.0.1:1", &[]).await;
    let (m, state) = (dir.path().display().to_string(), daemon.state_dir().display().to_string());
    let env = [("KUBELESS_MANIFESTS", m.as_str()), ("KUBELESS_STATE_DIR", state.as_str())];
    let k = |args: &'static str| {
        let (cwd, env) = (work.path().to_path_buf(), env);
        async move {
            let args = shell_words(args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out, err) = kubeless_in(&cwd, &args, &env).await;
            assert!(ok, "kubeless {args:?}: {err}");
            out
        }
    };
    k("function deploy echo --runtime python3.9 --from-file echo.py --handler echo.handler").await;
    k("trigger http create echo --function-name echo --hostname example.com --path echo").await;
    k("trigger http create fallback --function-name echo --hostname other.com --path /").await;
    k("trigger http create guarded --function-name echo --hostname secret.example.com --path / --basic-auth-secret users").await;
    wait_serving(&daemon, "echo", None).await;

    let client = reqwest::Client::new();
    let get = |host: &'static str, path: &'static str| {
        let request = client.get(format!("{}{path}", daemon.gateway_url)).header("host", host);
        async move {
            let answer = request.send().await.expect("gateway");
            (answer.status().as_u16(), answer.text().await.expect("body"))
        }
    };
    assert_eq!(get("example.com", "/echo/a/b?x=1").await, (200, "v1 GET /a/b x=1".to_string()));
    assert_eq!(get("example.com:9097", "/echo").await, (200, "v1 GET / ".to_string()));
    // A path beside the prefix is not under it; another host has its own routes.
    assert_eq!(get("example.com", "/echoes").await.0, 404);
    assert_eq!(get("other.com", "/echoes").await, (200, "v1 GET /echoes ".to_string()));
    // Basic auth is a cluster's: never served without it.
    let (status, body) = get("secret.example.com", "/").await;
    assert_eq!(status, 403, "{body}");
    let routes = daemon.status().await["gateway_routes"].clone();
    let guarded = routes.as_array().and_then(|r| r.iter().find(|r| r["trigger"] == "default/guarded")).cloned();
    assert!(
        guarded.as_ref().and_then(|g| g["problem"].as_str()).is_some_and(|p| p.contains("basic-auth-secret")),
        "{routes}"
    );

    // A code change: the gateway follows the function to its new process.
    std::fs::write(work.path().join("echo.py"), code("v2")).expect("code");
    k("function update echo --from-file echo.py").await;
    let start = Instant::now();
    while get("example.com", "/echo").await.1 != "v2 GET / " {
        assert!(start.elapsed() < SERVING_WITHIN, "v2 never answered: {}", daemon.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
