//! Why a consumer is not consuming, as a type from the connector up to the trigger's `Ready`
//! condition: a small fixed [`Reason`] (what `kubectl get` shows, a metric label, what decides
//! whether trying again can help) and a detail a person reads.

use std::fmt;

/// What went wrong, in a word. The set is fixed and small: it becomes a condition reason and a
/// metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The broker, server or endpoint does not answer (refused, unresolvable, timed out).
    BrokerUnreachable,
    /// It answered, and refused these credentials or this identity.
    NotAuthorized,
    /// The TLS handshake failed (a certificate not trusted, no TLS where it was required).
    TlsFailed,
    /// The Kafka topic (or a NATS subject's server-side object) does not exist.
    TopicNotFound,
    /// The Kinesis or JetStream stream does not exist, or is not active yet.
    StreamNotFound,
    /// The consumer's configuration is refused by the client library: it cannot work until it
    /// changes.
    InvalidConfig,
    /// The function's URL cannot be called: it cannot work until it changes.
    InvalidFunctionUrl,
    /// The dead-letter destination cannot be reached.
    DeadLetterUnavailable,
    /// The consumer panicked (a bug); it is restarted like any other failure.
    Panicked,
    /// The source ended without being asked to.
    SourceStopped,
    /// Any other error of the bus or its client.
    SourceError,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::BrokerUnreachable,
        Reason::NotAuthorized,
        Reason::TlsFailed,
        Reason::TopicNotFound,
        Reason::StreamNotFound,
        Reason::InvalidConfig,
        Reason::InvalidFunctionUrl,
        Reason::DeadLetterUnavailable,
        Reason::Panicked,
        Reason::SourceStopped,
        Reason::SourceError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BrokerUnreachable => "BrokerUnreachable",
            Reason::NotAuthorized => "NotAuthorized",
            Reason::TlsFailed => "TlsFailed",
            Reason::TopicNotFound => "TopicNotFound",
            Reason::StreamNotFound => "StreamNotFound",
            Reason::InvalidConfig => "InvalidConfig",
            Reason::InvalidFunctionUrl => "InvalidFunctionUrl",
            Reason::DeadLetterUnavailable => "DeadLetterUnavailable",
            Reason::Panicked => "Panicked",
            Reason::SourceStopped => "SourceStopped",
            Reason::SourceError => "SourceError",
        }
    }

    /// Whether trying again, unchanged, may succeed. A configuration the client refuses or a
    /// function URL that cannot be called will not: those wait for the spec (or its Secret) to
    /// change. Credentials refused may be granted later, a topic created: those are retried.
    pub fn is_retriable(self) -> bool {
        !matches!(self, Reason::InvalidConfig | Reason::InvalidFunctionUrl)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A consumer's failure: why, in a word, and the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Failure {
    pub reason: Reason,
    /// What a person reads: which object, what the server or library said. Never a secret.
    pub detail: String,
}

impl Failure {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }

    pub fn is_retriable(&self) -> bool {
        self.reason.is_retriable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_distinct_names_and_only_config_errors_are_permanent() {
        let names: std::collections::BTreeSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        let permanent: Vec<Reason> = Reason::ALL.into_iter().filter(|r| !r.is_retriable()).collect();
        assert_eq!(permanent, vec![Reason::InvalidConfig, Reason::InvalidFunctionUrl]);
        assert_eq!(Failure::new(Reason::TopicNotFound, "topic t does not exist").to_string(), "topic t does not exist");
    }
}
