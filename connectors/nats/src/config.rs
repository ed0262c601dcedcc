//! NATS source settings.

use std::time::Duration;

/// How to authenticate to the server.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum NatsAuth {
    #[default]
    None,
    Token(String),
    UserPassword(String, String),
    /// The contents of a `.creds` file (JWT + NKey seed).
    Credentials(String),
}

impl std::fmt::Debug for NatsAuth {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::Token(_) => "Token(***)",
            Self::UserPassword(..) => "UserPassword(***)",
            Self::Credentials(_) => "Credentials(***)",
        })
    }
}

/// One subscriber feeding one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSourceConfig {
    /// `nats://host:port[,nats://…]`.
    pub url: String,
    /// A subject; wildcards allowed.
    pub subject: String,
    /// Queue group (core NATS) and durable consumer name (JetStream): Kubeless's
    /// `<ns>_<trigger>_<function>_<topic>`, sanitised for JetStream.
    pub group: String,
    /// The existing stream to consume with a durable pull consumer; none means core NATS.
    pub jetstream_stream: Option<String>,
    /// Unacknowledged messages the server lets this consumer have (JetStream).
    pub max_ack_pending: i64,
    /// How long the server waits for an ack before redelivering (JetStream): longer than a request.
    pub ack_wait: Duration,
    pub auth: NatsAuth,
    /// Require TLS, optionally trusting this CA (PEM) besides the system roots.
    pub tls: bool,
    pub ca_pem: Option<String>,
    /// How long a stop waits for handed-out messages to be acknowledged.
    pub drain_timeout: Duration,
}

/// A JetStream durable name may not contain `.`, `*`, `>` or whitespace.
pub fn durable_name(group: &str) -> String {
    group.chars().map(|c| if c == '.' || c == '*' || c == '>' || c.is_whitespace() { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_replace_what_jetstream_forbids() {
        assert_eq!(durable_name("ns_t_f_orders.>"), "ns_t_f_orders__");
        assert_eq!(durable_name("ns_t_f_a.*.b"), "ns_t_f_a___b");
    }
}
