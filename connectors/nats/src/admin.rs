//! Connection and helpers for the CLI and the tests: connect with auth, publish, create a stream.

use async_nats::jetstream;
use async_nats::ConnectErrorKind;
use kubeless_connector::Reason;

use crate::config::NatsAuth;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `why`: the reason a consumer failing to connect shows.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String, why: Reason },
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
    let err =
        |why: Reason, reason: String| AdminError::Connect { url: kubeless_connector::redact_url(url), reason, why };
    let mut opts = async_nats::ConnectOptions::new().name("kubeless-broker");
    opts = match auth {
        NatsAuth::None => opts,
        NatsAuth::Token(t) => opts.token(t.clone()),
        NatsAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        NatsAuth::Credentials(creds) => {
            opts.credentials(creds).map_err(|e| err(Reason::InvalidConfig, format!("bad credentials: {e}")))?
        }
    };
    if tls {
        opts = opts.require_tls(true);
    }
    if let Some(pem) = ca_pem {
        // Trusted from memory, as the only root (as a CA file given to async-nats would be): no file
        // another local user could plant or swap under a predictable name.
        opts = opts.tls_client_config(client_config_trusting(pem).map_err(|e| err(Reason::InvalidConfig, e))?);
    }
    opts.connect(url).await.map_err(|e| {
        let why = match e.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => Reason::NotAuthorized,
            ConnectErrorKind::Tls => Reason::TlsFailed,
            ConnectErrorKind::Dns
            | ConnectErrorKind::Io
            | ConnectErrorKind::TimedOut
            | ConnectErrorKind::MaxReconnects => Reason::BrokerUnreachable,
            // Also raised for addresses the server advertises: not necessarily ours to fix.
            ConnectErrorKind::ServerParse => Reason::SourceError,
        };
        err(why, e.to_string())
    })
}

/// A TLS client configuration trusting exactly the certificates of `pem`.
fn client_config_trusting(pem: &str) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the CA is not PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA holds no certificate".to_string());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
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

/// The durables on `stream` this daemon created for triggers of `namespace` (their description
/// says so) and older than `min_age` (a replica may have just made a newer one for a trigger this
/// one does not know yet), by name.
pub async fn owned_durables(
    client: &async_nats::Client,
    stream: &str,
    namespace: &str,
    min_age: std::time::Duration,
) -> Result<Vec<String>, AdminError> {
    use futures::TryStreamExt;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.map_err(|e| AdminError::Request(e.to_string()))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let old_enough =
        |created: i64| now.as_secs() >= u64::try_from(created).unwrap_or(u64::MAX).saturating_add(min_age.as_secs());
    let infos: Vec<_> = stream.consumers().try_collect().await.map_err(|e| AdminError::Request(e.to_string()))?;
    Ok(infos
        .into_iter()
        .filter(|i| crate::config::owned_by_namespace(i.config.description.as_deref(), namespace))
        .filter(|i| old_enough(i.created.unix_timestamp()))
        .map(|i| i.name)
        .collect())
}

/// Deletes durable `name` from `stream`; `false` if it was not there.
pub async fn delete_durable(client: &async_nats::Client, stream: &str, name: &str) -> Result<bool, AdminError> {
    use jetstream::stream::ConsumerErrorKind;
    use jetstream::ErrorCode;
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream).await.map_err(|e| AdminError::Request(e.to_string()))?;
    match stream.delete_consumer(name).await {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.kind(), ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) => {
            Ok(false)
        }
        Err(e) => Err(AdminError::Request(e.to_string())),
    }
}
