//! librdkafka properties: which of them are the client's identity (never lent to a broker the
//! admin did not trust), which must never be printed, and the ones a trigger's own Secret gives.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

/// librdkafka properties. Compared and cloned as the map they are; printed with every credential
/// (`sasl.password`, `ssl.key.pem`…) replaced by `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    pub fn new() -> Self {
        Self::default()
    }

    /// The properties that are not the client's identity (`security.protocol`, `sasl.*`, `ssl.*`…):
    /// what every client may get, whichever broker it talks to.
    pub fn without_security(&self) -> Self {
        self.0.iter().filter(|(k, _)| !is_security_property(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn into_inner(self) -> BTreeMap<String, String> {
        self.0
    }
}

impl Deref for Properties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<BTreeMap<String, String>> for Properties {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

impl FromIterator<(String, String)> for Properties {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Properties {
    fn from(pairs: [(String, String); N]) -> Self {
        Self(pairs.into_iter().collect())
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, if is_sensitive_property(k) { "[redacted]" } else { v.as_str() })))
            .finish()
    }
}

/// A property that makes up the client's identity or its trust: the protocol, SASL and TLS
/// settings. These go only to brokers the admin trusts with them.
pub fn is_security_property(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key == "security.protocol"
        || key.starts_with("sasl.")
        || key.starts_with("ssl.")
        || key.starts_with("ssl_")
        || key == "enable.ssl.certificate.verification"
        || key.starts_with("enable.sasl.")
        || key.starts_with("https.")
}

/// A property whose value is a credential and is never printed.
pub fn is_sensitive_property(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("key.pem")
        || key.ends_with(".key")
        || key == "sasl.oauthbearer.config"
        || key.contains("token")
}

/// Why a trigger's Kafka Secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretPropertiesError {
    #[error("has {present} but not {missing}")]
    Incomplete { present: &'static str, missing: &'static str },
    #[error("key mechanism: {0:?} is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")]
    Mechanism(String),
    #[error("key tls: {0:?} is not true or false")]
    Tls(String),
    #[error("has none of the keys username and password (SASL), ca.crt, tls.crt and tls.key, or tls: \"true\"")]
    Empty,
}

/// Client properties from the keys of a trigger's own Secret (`spec.auth.secret`):
/// `username` + `password` (SASL; `mechanism` PLAIN (default), SCRAM-SHA-256 or SCRAM-SHA-512),
/// `ca.crt` (PEM: the brokers' CA), `tls.crt` + `tls.key` (PEM: a client certificate), `tls`
/// (`"true"`: TLS with the system's CAs). Only these keys are read: a Secret cannot set any other
/// librdkafka property (e.g. a file location to read).
pub fn secret_properties(get: impl Fn(&str) -> Option<String>) -> Result<Properties, SecretPropertiesError> {
    let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    let mut props = Properties::new();
    let sasl = match (get("username"), get("password")) {
        (Some(user), Some(password)) => {
            let mechanism = get("mechanism").map(|m| m.trim().to_ascii_uppercase()).unwrap_or_else(|| "PLAIN".into());
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                return Err(SecretPropertiesError::Mechanism(mechanism));
            }
            props.insert("sasl.mechanism".into(), mechanism);
            props.insert("sasl.username".into(), user.trim().to_string());
            props.insert("sasl.password".into(), password.trim_end_matches(['\r', '\n']).to_string());
            true
        }
        (Some(_), None) => return Err(SecretPropertiesError::Incomplete { present: "username", missing: "password" }),
        (None, Some(_)) => return Err(SecretPropertiesError::Incomplete { present: "password", missing: "username" }),
        (None, None) => false,
    };
    let mut tls = match get("tls").map(|v| v.trim().to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" => true,
        Some(v) if v == "false" => false,
        Some(v) => return Err(SecretPropertiesError::Tls(v)),
    };
    if let Some(ca) = get("ca.crt") {
        props.insert("ssl.ca.pem".into(), ca);
        tls = true;
    }
    match (get("tls.crt"), get("tls.key")) {
        (Some(cert), Some(key)) => {
            props.insert("ssl.certificate.pem".into(), cert);
            props.insert("ssl.key.pem".into(), key);
            tls = true;
        }
        (Some(_), None) => return Err(SecretPropertiesError::Incomplete { present: "tls.crt", missing: "tls.key" }),
        (None, Some(_)) => return Err(SecretPropertiesError::Incomplete { present: "tls.key", missing: "tls.crt" }),
        (None, None) => {}
    }
    let protocol = match (tls, sasl) {
        (false, false) => return Err(SecretPropertiesError::Empty),
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    props.insert("security.protocol".into(), protocol.into());
    Ok(props)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn security_properties_are_told_apart_from_tuning() {
        for k in ["security.protocol", "sasl.password", "SASL.Username", "ssl.ca.location", "ssl_engine.location"] {
            assert!(is_security_property(k), "{k}");
        }
        for k in ["session.timeout.ms", "client.id", "fetch.max.bytes"] {
            assert!(!is_security_property(k), "{k}");
        }
        let props: Properties = [
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("session.timeout.ms".to_string(), "6000".to_string()),
        ]
        .into();
        assert_eq!(props.without_security().keys().collect::<Vec<_>>(), ["session.timeout.ms"]);
    }

    #[test]
    fn credentials_are_never_printed() {
        let props: Properties = [
            ("sasl.password".to_string(), "hunter2".to_string()),
            ("ssl.key.pem".to_string(), "-----BEGIN PRIVATE KEY-----".to_string()),
            ("sasl.oauthbearer.client.secret".to_string(), "s3cr3t".to_string()),
            ("sasl.username".to_string(), "platform".to_string()),
        ]
        .into();
        let printed = format!("{props:?}");
        for secret in ["hunter2", "PRIVATE KEY", "s3cr3t"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(printed.contains("platform") && printed.contains("[redacted]"), "{printed}");
    }

    #[test]
    fn a_secret_gives_sasl_and_tls_properties_and_nothing_else() {
        let p = secret_properties(keys(&[
            ("username", "team-a"),
            ("password", "pw\n"),
            ("mechanism", "scram-sha-512"),
            ("ca.crt", "PEM"),
            ("ssl.ca.location", "/etc/shadow"),
        ]))
        .expect("valid");
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.password"], "pw");
        assert_eq!(p["ssl.ca.pem"], "PEM");
        assert!(!p.contains_key("ssl.ca.location"), "only the documented keys are read");
        let plain = secret_properties(keys(&[("username", "u"), ("password", "p")])).expect("valid");
        assert_eq!(
            (plain["security.protocol"].as_str(), plain["sasl.mechanism"].as_str()),
            ("sasl_plaintext", "PLAIN")
        );
        let tls = secret_properties(keys(&[("tls", "true")])).expect("valid");
        assert_eq!(tls["security.protocol"], "ssl");
    }

    #[test]
    fn an_incomplete_or_empty_secret_is_refused_naming_the_key() {
        let err = |pairs: &[(&str, &str)]| secret_properties(keys(pairs)).expect_err("refused").to_string();
        assert!(err(&[("username", "u")]).contains("password"));
        assert!(err(&[("tls.crt", "c")]).contains("tls.key"));
        assert!(err(&[("username", "u"), ("password", "p"), ("mechanism", "GSSAPI")]).contains("GSSAPI"));
        assert!(err(&[]).contains("username"));
        assert!(!err(&[("username", "u"), ("password", "secret-pw"), ("mechanism", "X")]).contains("secret-pw"));
    }
}
