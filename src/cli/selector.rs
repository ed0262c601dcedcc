//! Label selectors in kubectl's syntax: `--function-selector`, and the tables of triggers.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::common::FlagError;
use crate::resources::validate::{check_selector, Errors};

/// A label selector in kubectl's syntax: `a=b,c==d,e!=f,g in (h,i),j notin (k),l,!m`. Equalities
/// become `matchLabels` as in Kubeless; the rest become `matchExpressions` (Kubeless dropped them,
/// selecting every function).
pub fn parse_selector(text: &str) -> Result<LabelSelector, FlagError> {
    let err = |problem: String| FlagError::new("--function-selector", problem);
    let mut labels = BTreeMap::new();
    let mut expressions = Vec::new();
    let requirement = |key: &str, operator: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
        key: key.trim().to_string(),
        operator: operator.to_string(),
        values,
    };
    for term in split_terms(text) {
        let term = term.trim();
        if term.is_empty() {
            return Err(err(format!("{text:?} has an empty term; use key=value,key2=value2")));
        }
        if let Some(key) = term.strip_prefix('!') {
            expressions.push(requirement(key, "DoesNotExist", None));
        } else if let Some((key, value)) = term.split_once("!=") {
            expressions.push(requirement(key, "NotIn", Some(vec![value.trim().to_string()])));
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.insert(key.trim().to_string(), value.trim().to_string());
        } else if let Some((key, op, values)) = set_term(term) {
            expressions.push(requirement(key, op, Some(values.split(',').map(|v| v.trim().to_string()).collect())));
        } else if term.contains([' ', '(', ')']) {
            return Err(err(format!(
                "{term:?} is not key=value, key!=value, key in (a,b), key notin (a,b), key or !key"
            )));
        } else {
            expressions.push(requirement(term, "Exists", None));
        }
    }
    let selector = LabelSelector {
        match_labels: (!labels.is_empty()).then_some(labels),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    };
    // The keys and values are checked as the daemon checks a stored selector.
    let mut errors = Errors::default();
    check_selector(&mut errors, "functionSelector", &selector);
    if let Some(e) = errors.0.into_iter().next() {
        return Err(err(e.message));
    }
    Ok(selector)
}

/// Splits at commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

/// `key in (a,b)` / `key notin (a,b)`.
fn set_term(term: &str) -> Option<(&str, &'static str, &str)> {
    let (key, rest) = term.split_once(char::is_whitespace)?;
    let rest = rest.trim_start();
    let (op, rest) =
        if let Some(r) = rest.strip_prefix("notin") { ("NotIn", r) } else { ("In", rest.strip_prefix("in")?) };
    let values = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((key, op, values))
}

/// kubectl's rendering of a selector (`a=b,c notin (d)`), for tables.
pub fn format_selector(selector: Option<&LabelSelector>) -> String {
    let Some(s) = selector else { return "<none>".to_string() };
    let mut parts: Vec<String> = s.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            _ => format!("{} in ({values})", e.key),
        });
    }
    if parts.is_empty() {
        "<none>".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{format_selector, parse_selector};

    #[test]
    fn selectors_parse_like_kubectl() {
        let s = parse_selector("created-by=kubeless,function==hello").expect("valid");
        assert_eq!(
            serde_json::to_value(&s).expect("json"),
            json!({"matchLabels": {"created-by": "kubeless", "function": "hello"}})
        );
        let s = parse_selector("tier in (a, b),env!=prod,app,!legacy,x notin (y)").expect("valid");
        assert_eq!(
            serde_json::to_value(&s).expect("json"),
            json!({"matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "app", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "x", "operator": "NotIn", "values": ["y"]},
            ]})
        );
        assert_eq!(format_selector(Some(&s)), "tier in (a,b),env notin (prod),app,!legacy,x notin (y)");
        for bad in ["", "a=b,,c=d", "a=b c", "a=(b)", "=b", "a=b/c", "tier in a"] {
            let e = parse_selector(bad).expect_err(bad);
            assert_eq!(e.flag, "--function-selector", "{bad}");
        }
    }
}
