//! `scripts/demo`, the README's first command, run as a user runs it (with the binaries this test
//! run built, and ports of its own): a Kubeless Python function with a pip dependency deployed with
//! the CLI shows its own output for the published messages, then answers with its edited code.

use std::path::Path;

use crate::common::*;

async fn demo(ports: &str) -> (bool, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = Path::new(env!("CARGO_BIN_EXE_kubeless")).parent().expect("bin dir").display().to_string();
    let tools = String::from_utf8_lossy(
        &std::process::Command::new(root.join("scripts/tools-bin")).output().expect("tools-bin").stdout,
    )
    .trim()
    .to_string();
    let out = tokio::process::Command::new("bash")
        .arg(root.join("scripts/demo"))
        .env("DEMO_PREBUILT", &bin)
        .env("DEMO_PORTS", ports)
        .env("PATH", format!("{tools}:{}", std::env::var("PATH").unwrap_or_default()))
        .env_remove("KUBELESS_MANIFESTS")
        .env_remove("KAFKA_BROKERS")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run scripts/demo");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_kubeless_function_answering_before_and_after_a_code_edit() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let ports = ports.map(|p| p.to_string()).join(" ");
    let (ok, out) = demo(&ports).await;
    assert!(ok, "scripts/demo failed:\n{out}");
    for line in [
        "hello got {'hello': 'world 1'} (20 Bytes)",
        "hello got {'hello': 'world 3'} (20 Bytes)",
        "ARE YOU NEW?",
        "HELLO GOT {'hello': 'world 4'} (20 Bytes)",
        "HELLO GOT {'hello': 'world 5'} (20 Bytes)",
        "kubeless_local_function_up{function=\"default/hello\"} 1",
    ] {
        assert!(out.contains(line), "the demo's output lacks {line:?}:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_says_which_port_is_taken_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let ports = format!("{} {} {port} {}", free_port(), free_port(), free_port());
    let (ok, out) = demo(&ports).await;
    assert!(!ok, "the demo ran with port {port} taken:\n{out}");
    assert!(out.contains(&format!("port {port} is in use")), "{out}");
    assert!(!out.contains("kubeless function deploy"), "nothing started:\n{out}");
}
