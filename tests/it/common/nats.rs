//! The NATS fixture: a nats-server with JetStream on loopback.

use std::path::Path;

use super::server::{free_port, Server};

/// A nats-server with JetStream (file store in a temp dir), killed on drop.
pub struct Nats {
    server: Server,
    _store: tempfile::TempDir,
    pub url: String,
    auth: kubeless_nats::NatsAuth,
    /// CA the test's own client trusts, for a TLS server.
    client_ca: Option<String>,
}

impl Nats {
    pub async fn start() -> Self {
        Self::start_with(&[], kubeless_nats::NatsAuth::None).await
    }

    /// A server started with extra flags (e.g. `--user u --pass p`); `auth` is what the test's
    /// own client uses.
    pub async fn start_with(flags: &[&str], auth: kubeless_nats::NatsAuth) -> Self {
        let port = free_port();
        let store = tempfile::tempdir().expect("store");
        let bin = if Path::new("/usr/sbin/nats-server").exists() { "/usr/sbin/nats-server" } else { "nats-server" };
        let mut command = [bin, "-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"].map(String::from).to_vec();
        command.push(store.path().display().to_string());
        command.extend(flags.iter().map(|f| f.to_string()));
        let server = Server::start("nats", command, Vec::new(), port).await;
        Self { server, _store: store, url: format!("nats://127.0.0.1:{port}"), auth, client_ca: None }
    }

    /// Kills the server; JetStream's store stays on disk for [`Nats::restart`].
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) {
        self.server.restart().await;
    }

    pub async fn client(&self) -> async_nats::Client {
        kubeless_broker::app::install_crypto_provider();
        kubeless_nats::connect(&self.url, &self.auth, self.client_ca.is_some(), self.client_ca.as_deref())
            .await
            .expect("connect")
    }

    /// Publishes `bodies` to `subject`; through JetStream (each confirmed) when `jetstream`.
    pub async fn publish_all(&self, subject: &str, bodies: impl IntoIterator<Item = String>, jetstream: bool) {
        let client = self.client().await;
        if jetstream {
            let js = async_nats::jetstream::new(client.clone());
            let acks: Vec<_> = futures::future::join_all(bodies.into_iter().map(|b| {
                let js = js.clone();
                async move { js.publish(subject.to_string(), b.into()).await.expect("publish") }
            }))
            .await;
            for ack in acks {
                ack.await.expect("stored");
            }
        } else {
            for b in bodies {
                client.publish(subject.to_string(), b.into()).await.expect("publish");
            }
            client.flush().await.expect("flush");
        }
    }
}

impl Nats {
    /// Makes the test's own client use TLS, trusting `ca_pem`.
    pub fn with_client_tls(mut self, ca_pem: String) -> Self {
        self.client_ca = Some(ca_pem);
        self
    }
}
