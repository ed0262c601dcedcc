//! Connection and helpers for the CLI and the tests: connect with auth, publish, create a stream.

use async_nats::jetstream;

use crate::config::NatsAuth;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("NATS request failed: {0}")]
    Request(String),
}

/// Connects with the given auth and TLS settings.
pub async fn connect(
    url: &str,
    auth: &NatsAuth,
    tls: bool,
    ca_pem: Option<&str>,
) -> Result<async_nats::Client, AdminError> {
    // The URL may carry credentials (nats://user:password@host): never in an error.
    let err = |reason: String| AdminError::Connect { url: kubeless_connector::redact_url(url), reason };
    let mut opts = async_nats::ConnectOptions::new().name("kubeless-broker");
    opts = match auth {
        NatsAuth::None => opts,
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        NatsAuth::Credentials(creds) => opts.credentials(creds).map_err(|e| err(format!("bad credentials: {e}")))?,
    };
    if tls {
        opts = opts.require_tls(true);
    }
    if let Some(pem) = ca_pem {
        // async-nats reads root certificates from a file: write the PEM to one named by its hash.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        pem.hash(&mut h);
        let path = std::env::temp_dir().join(format!("kubeless-nats-ca-{:016x}.pem", h.finish()));
        std::fs::write(&path, pem).map_err(|e| err(format!("cannot write the CA file {}: {e}", path.display())))?;
        opts = opts.add_root_certificates(path);
    }
    opts.connect(url).await.map_err(|e| err(e.to_string()))
}

/// Publishes one message (core NATS) and flushes it to the server.
pub async fn publish(client: &async_nats::Client, subject: &str, payload: Vec<u8>) -> Result<(), AdminError> {
    client.publish(subject.to_string(), payload.into()).await.map_err(|e| AdminError::Request(e.to_string()))?;
    client.flush().await.map_err(|e| AdminError::Request(e.to_string()))
}

/// Creates (or keeps) a stream capturing `subjects`.
pub async fn create_stream(client: &async_nats::Client, name: &str, subjects: &[&str]) -> Result<(), AdminError> {
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| AdminError::Request(e.to_string()))
}
