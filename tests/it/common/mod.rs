//! Test harness: a real tansu broker on loopback, HTTP functions with scripted behaviour, and the
//! daemon binary run as a child process (so it can be killed with -9 or SIGTERM).

pub mod fake_kafka;
pub mod kubeapi;
pub mod proxy;

mod certs;
mod daemon;
mod function;
mod kafka;
mod kinesis;
mod manifests;
mod nats;
mod server;

use std::time::{Duration, Instant};

pub use certs::{make_test_certificates, tls_front};
pub use daemon::Daemon;
pub use function::{Behaviour, Function, Received};
pub use kafka::{Kafka, SESSION_TIMEOUT_MS};
pub use kinesis::Kinesis;
pub use manifests::{
    cron_yaml, function_with_timeout_yaml, function_yaml, kinesis_yaml, local_function_yaml, nats_trigger_yaml,
    trigger_yaml,
};
pub use nats::Nats;
pub use server::{free_port, Server};

/// Polls `f` every 100 ms until it returns true or `limit` passes; panics with `what` on timeout.
/// (A bound on how long to wait for an outcome, not a timing assertion.)
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for`] with a condition that must ask a server.
pub async fn wait_for_async<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
