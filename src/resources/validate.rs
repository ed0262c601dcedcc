//! Field-level validation helpers shared by every kind.

use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path, e.g. `spec.delivery.retry.maxAttempts`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects field errors while a resource is checked.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// A Kubernetes object name: a DNS-1123 subdomain (lowercase alphanumerics, `-` and `.`, starting
/// and ending alphanumeric, at most 253 characters).
pub fn check_object_name(errors: &mut Errors, field: &str, name: &str) {
    if name.is_empty() {
        errors.push(field, "must not be empty");
    } else if name.len() > 253 {
        errors.push(field, format!("{name:?} is longer than 253 characters"));
    } else if !name.split('.').all(is_dns1123_label) {
        errors.push(
            field,
            format!("{name:?} is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"),
        );
    }
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kafka topic name: 1–249 characters from `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn check_topic(errors: &mut Errors, field: &str, topic: &str) {
    if topic.is_empty() {
        errors.push(field, "must not be empty");
    } else if topic.len() > 249 {
        errors.push(field, format!("topic {topic:?} is longer than 249 characters"));
    } else if topic == "." || topic == ".." || !topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        errors
            .push(field, format!("{topic:?} is not a valid Kafka topic name (use letters, digits, '.', '_' and '-')"));
    }
}

/// A label selector: keys and values in label syntax, operators Kubernetes knows, values present
/// exactly where the operator needs them.
pub fn check_selector(errors: &mut Errors, field: &str, selector: &LabelSelector) {
    for (k, v) in selector.match_labels.iter().flatten() {
        check_label_key(errors, &format!("{field}.matchLabels"), k);
        check_label_value(errors, &format!("{field}.matchLabels.{k}"), v);
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        check_label_key(errors, &format!("{f}.key"), &req.key);
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errors.push(format!("{f}.values"), format!("operator {} needs at least one value", req.operator))
            }
            "In" | "NotIn" => values.iter().for_each(|v| check_label_value(errors, &format!("{f}.values"), v)),
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errors.push(format!("{f}.values"), format!("operator {} takes no values", req.operator))
            }
            "Exists" | "DoesNotExist" => {}
            other => errors.push(
                format!("{f}.operator"),
                format!("{other:?} is not a selector operator (use In, NotIn, Exists or DoesNotExist)"),
            ),
        }
    }
}

fn check_label_key(errors: &mut Errors, field: &str, key: &str) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns1123_label));
    if !name_ok || !prefix_ok {
        errors.push(field, format!("{key:?} is not a valid label key"));
    }
}

fn check_label_value(errors: &mut Errors, field: &str, value: &str) {
    let ok = value.is_empty()
        || (value.len() <= 63
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && value.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && value.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()));
    if !ok {
        errors
            .push(field, format!("{value:?} is not a valid label value (at most 63 letters, digits, '-', '_' or '.')"));
    }
}

/// A duration written as `250ms`, `30s`, `5m`, `1h 30m`…
pub fn parse_duration(errors: &mut Errors, field: &str, value: Option<&str>) -> Option<Duration> {
    let value = value?;
    match humantime::parse_duration(value.trim()) {
        Ok(d) if d.is_zero() => {
            errors.push(field, format!("{value:?} must be longer than zero"));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(field, format!("{value:?} is not a duration ({e}); write e.g. 500ms, 30s or 5m"));
            None
        }
    }
}

/// A comma-separated `host:port` list, as in `KAFKA_BROKERS`.
pub fn check_brokers(errors: &mut Errors, field: &str, brokers: &str) {
    let bad: Vec<&str> = brokers
        .split(',')
        .map(str::trim)
        .filter(|b| match b.rsplit_once(':') {
            Some((host, port)) => host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0),
            None => true,
        })
        .collect();
    if !bad.is_empty() {
        errors.push(field, format!("{bad:?} must be host:port (comma-separated for several brokers)"));
    }
}

/// A NATS subject: dot-separated tokens, no whitespace, no empty token; `*` and a final `>` allowed.
pub fn check_subject(errors: &mut Errors, field: &str, subject: &str) {
    let tokens: Vec<&str> = subject.split('.').collect();
    let ok = !subject.is_empty()
        && !subject.contains(char::is_whitespace)
        && tokens.iter().all(|t| !t.is_empty())
        && tokens.iter().enumerate().all(|(i, t)| *t != ">" || i == tokens.len() - 1)
        && tokens.iter().all(|t| t.len() == 1 || !t.contains(['*', '>']));
    if !ok {
        errors.push(
            field,
            format!("{subject:?} is not a NATS subject (dot-separated tokens; * for one token, > at the end)"),
        );
    }
}

/// A required string field of a Kubeless spec.
pub fn check_required(errors: &mut Errors, field: &str, value: &str) {
    if value.trim().is_empty() {
        errors.push(field, "is required");
    }
}
