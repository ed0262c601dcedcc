//! Kafka source settings and the librdkafka properties they become.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::Properties;

/// Where a new consumer group starts when it has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialOffset {
    /// From the oldest retained record: nothing published after the trigger was written is lost.
    #[default]
    Earliest,
    /// From the end of the log, as Kubeless did (a new group skipped the backlog).
    Latest,
}

/// One consumer: a group subscribed to some topics, feeding one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub initial_offset: InitialOffset,
    /// Extra librdkafka properties (security, session timeout…), applied after ours.
    pub properties: Properties,
    /// How long revocation and shutdown wait for handed-out messages to finish before committing
    /// what did.
    pub drain_timeout: Duration,
    /// Offsets a partition may hold uncommitted (from its oldest unfinished message on) before it
    /// is paused: one message retried forever must not grow memory with the backlog.
    pub max_uncommitted: usize,
}

/// Records prefetched per consumer are capped in bytes: the memory bound of a consumer must not
/// depend on the backlog. 8 MiB holds ~8k 1 KiB records, enough to keep a fast function busy
/// between fetches.
const QUEUED_MAX_KBYTES: u64 = 8192;
/// The least prefetch a small share of the memory budget still gets.
const MIN_QUEUED_KBYTES: u64 = 64;
/// librdkafka's default (100k records per partition) would let a large backlog sit in memory.
const QUEUED_MIN_MESSAGES: &str = "2000";
/// Offsets are stored as deliveries finish and committed this often; on revocation and shutdown
/// they are committed synchronously.
const AUTO_COMMIT_INTERVAL_MS: &str = "1000";
/// Kubeless's Sarama consumer used a 10 s session; librdkafka's 45 s default makes joins slow.
const SESSION_TIMEOUT_MS: &str = "10000";
const STATISTICS_INTERVAL_MS: &str = "5000";
/// When a partition's prefetch queue is at the limits above, librdkafka waits this long before
/// fetching it again (its default, 1 s, idled a fast function between refills: the load tests
/// measured 6k msg/s with it and 26k with 10 ms). It only applies while the queue is full, so an idle
/// consumer does not fetch more often.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";
/// One fetch response lands in memory whole, whatever the queue limit says; cap it too.
const FETCH_MAX_BYTES: &str = "4194304";

impl KafkaSourceConfig {
    /// The client's properties, its prefetch kept to a quarter of `share` (the bytes of the memory
    /// budget this consumer may hold; between 64 KiB and our 8 MiB), unless the properties set it.
    pub(crate) fn client_config_within(&self, share: u64) -> ClientConfig {
        let mut cfg = self.client_config();
        if !self.properties.contains_key("queued.max.messages.kbytes") {
            let kib = (share / 4 / 1024).clamp(MIN_QUEUED_KBYTES, QUEUED_MAX_KBYTES);
            cfg.set("queued.max.messages.kbytes", kib.to_string());
        }
        cfg
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("client.id", "kubeless-broker")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", AUTO_COMMIT_INTERVAL_MS)
            .set(
                "auto.offset.reset",
                match self.initial_offset {
                    InitialOffset::Earliest => "earliest",
                    InitialOffset::Latest => "latest",
                },
            )
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", SESSION_TIMEOUT_MS)
            .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES.to_string())
            .set("queued.min.messages", QUEUED_MIN_MESSAGES)
            .set("fetch.max.bytes", FETCH_MAX_BYTES)
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        for (k, v) in self.properties.iter() {
            cfg.set(k, v);
        }
        cfg
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    #[error("{var} is set, so {needed} must be set too")]
    MissingVariable { var: &'static str, needed: &'static str },
    #[error("{var}={value:?} is not a boolean (use true or false)")]
    NotBoolean { var: &'static str, value: String },
}

/// librdkafka security properties from Kubeless's environment variables: `KAFKA_ENABLE_TLS` with
/// `KAFKA_CACERTS`, `KAFKA_CERT`, `KAFKA_KEY` (file paths) and `KAFKA_INSECURE`; `KAFKA_ENABLE_SASL`
/// with `KAFKA_USERNAME` and `KAFKA_PASSWORD` (SASL/PLAIN, as Kubeless; set `sasl.mechanism`
/// through `--kafka-property` for SCRAM).
pub fn security_properties(env: impl Fn(&str) -> Option<String>) -> Result<Properties, SecurityError> {
    let flag = |var: &'static str| -> Result<bool, SecurityError> {
        match env(var).as_deref().map(str::trim) {
            None | Some("") => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
            Some(v) => Err(SecurityError::NotBoolean { var, value: v.to_string() }),
        }
    };
    let tls = flag("KAFKA_ENABLE_TLS")?;
    let sasl = flag("KAFKA_ENABLE_SASL")?;
    let mut props = Properties::new();
    let protocol = match (tls, sasl) {
        (false, false) => return Ok(props),
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    props.insert("security.protocol".to_string(), protocol.to_string());
    if tls {
        for (var, key) in [
            ("KAFKA_CACERTS", "ssl.ca.location"),
            ("KAFKA_CERT", "ssl.certificate.location"),
            ("KAFKA_KEY", "ssl.key.location"),
        ] {
            if let Some(path) = env(var).filter(|p| !p.is_empty()) {
                props.insert(key.to_string(), path);
            }
        }
        if flag("KAFKA_INSECURE")? {
            props.insert("enable.ssl.certificate.verification".to_string(), "false".to_string());
        }
    }
    if sasl {
        let user = env("KAFKA_USERNAME")
            .ok_or(SecurityError::MissingVariable { var: "KAFKA_ENABLE_SASL", needed: "KAFKA_USERNAME" })?;
        let pass = env("KAFKA_PASSWORD")
            .ok_or(SecurityError::MissingVariable { var: "KAFKA_ENABLE_SASL", needed: "KAFKA_PASSWORD" })?;
        props.insert("sasl.mechanism".to_string(), "PLAIN".to_string());
        props.insert("sasl.username".to_string(), user);
        props.insert("sasl.password".to_string(), pass);
    }
    Ok(props)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_security_variables_means_plaintext() {
        assert_eq!(security_properties(env_of(&[])), Ok(Properties::new()));
    }

    #[test]
    fn kubeless_tls_and_sasl_variables_map_to_librdkafka_properties() {
        let props = security_properties(env_of(&[
            ("KAFKA_ENABLE_TLS", "true"),
            ("KAFKA_CACERTS", "/certs/ca.pem"),
            ("KAFKA_INSECURE", "true"),
            ("KAFKA_ENABLE_SASL", "true"),
            ("KAFKA_USERNAME", "u"),
            ("KAFKA_PASSWORD", "p"),
        ]))
        .expect("valid settings");
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["ssl.ca.location"], "/certs/ca.pem");
        assert_eq!(props["enable.ssl.certificate.verification"], "false");
        assert_eq!(props["sasl.mechanism"], "PLAIN");
        assert_eq!(props["sasl.username"], "u");
    }

    #[test]
    fn sasl_without_credentials_is_an_error_naming_the_variable() {
        let err = security_properties(env_of(&[("KAFKA_ENABLE_SASL", "true")])).expect_err("must fail");
        assert!(err.to_string().contains("KAFKA_USERNAME"), "{err}");
        let err = security_properties(env_of(&[("KAFKA_ENABLE_TLS", "yes please")])).expect_err("must fail");
        assert!(err.to_string().contains("KAFKA_ENABLE_TLS"), "{err}");
    }

    #[test]
    fn user_properties_override_ours() {
        let cfg = KafkaSourceConfig {
            brokers: "b:9092".into(),
            group_id: "g".into(),
            topics: vec!["t".into()],
            initial_offset: InitialOffset::Latest,
            properties: [("session.timeout.ms".to_string(), "6000".to_string())].into(),
            drain_timeout: Duration::from_secs(1),
            max_uncommitted: 100,
        };
        let c = cfg.client_config();
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        assert_eq!(cfg.client_config_within(u64::MAX).get("queued.max.messages.kbytes"), Some("8192"));
        assert_eq!(
            cfg.client_config_within(4 << 20).get("queued.max.messages.kbytes"),
            Some("1024"),
            "a quarter share"
        );
        assert_eq!(cfg.client_config_within(0).get("queued.max.messages.kbytes"), Some("64"));
        assert_eq!(c.get("auto.offset.reset"), Some("latest"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }
}
