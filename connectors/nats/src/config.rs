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
    /// Who the JetStream durable belongs to (`<namespace>/<trigger>`), written into its description
    /// so that what the daemon created can be told apart and cleaned up.
    pub owner: String,
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

/// Marks, in a durable's description, the durables this daemon created: `kubeless-broker <owner>`.
pub const OWNER_MARK: &str = "kubeless-broker ";

/// The description of a durable owned by `owner` (`<namespace>/<trigger>`).
pub fn owned_description(owner: &str) -> String {
    format!("{OWNER_MARK}{owner}")
}

/// Whether a durable's description says `namespace` owns it.
pub fn owned_by_namespace(description: Option<&str>, namespace: &str) -> bool {
    description
        .and_then(|d| d.strip_prefix(OWNER_MARK))
        .and_then(|owner| owner.split_once('/'))
        .is_some_and(|(ns, _)| ns == namespace)
}

/// The durable name of a consumer group. A JetStream durable name may not contain `.`, `*`, `>` or
/// whitespace: a group without them is its own name; one with them is replaced by `_` **and** gets a
/// hash of the whole group, so two groups never share a durable (`ns_a.b_c_t` and `ns_a_b.c_t`
/// would both be `ns_a_b_c_t`).
pub fn durable_name(group: &str) -> String {
    let sanitized = legacy_durable_name(group);
    if sanitized == group {
        return sanitized;
    }
    format!("{sanitized}_{:08x}", xxhash_rust::xxh3::xxh3_64(group.as_bytes()) as u32)
}

/// What earlier versions named the durable (not injective): adopted once, then deleted.
pub fn legacy_durable_name(group: &str) -> String {
    group.chars().map(|c| if c == '.' || c == '*' || c == '>' || c.is_whitespace() { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_replace_what_jetstream_forbids_and_never_collide() {
        assert_eq!(durable_name("ns_t_f_orders"), "ns_t_f_orders", "a name JetStream takes is kept");
        for group in ["ns_t_f_orders.>", "ns_t_f_a.*.b", "ns_a.b_c_t", "ns_a_b.c_t", "ns_a b_c_t"] {
            let name = durable_name(group);
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
            assert!(name.starts_with(&legacy_durable_name(group)), "{name} reads as its group");
        }
        // Trigger `a.b` + function `c` and trigger `a` + function `b.c` shared one durable.
        assert_eq!(legacy_durable_name("ns_a.b_c_t"), legacy_durable_name("ns_a_b.c_t"));
        assert_ne!(durable_name("ns_a.b_c_t"), durable_name("ns_a_b.c_t"));
        assert_eq!(durable_name("ns_a.b_c_t"), durable_name("ns_a.b_c_t"), "stable");
    }

    #[test]
    fn a_durable_is_owned_by_the_namespace_its_description_names() {
        let d = owned_description("team-a/orders");
        assert!(owned_by_namespace(Some(&d), "team-a"));
        assert!(!owned_by_namespace(Some(&d), "team"));
        assert!(!owned_by_namespace(Some("team-a/orders"), "team-a"), "not marked as ours");
        assert!(!owned_by_namespace(None, "team-a"));
    }
}
