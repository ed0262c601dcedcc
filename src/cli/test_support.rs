//! Fixtures: the objects Kubeless's CLI printed with `--dryrun -o json` for the same flags
//! (`cmd/kubeless/function/function.go` `getFunctionDescription`, `trigger/*/create.go`), with
//! Go's zero values (`null`, `""`, `{}`, `[]`, `creationTimestamp: null`, the empty
//! `horizontalPodAutoscaler` and `status`) left out: they carry nothing and the API server's
//! pruning drops most of them. Where we differ on purpose the test says so.
//!
//! What the builders' tests (each beside its builder) share to compare an object with a fixture.

use serde_json::Value;

/// Drops Go's zero values, recursively.
fn pruned(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, pruned(v))).filter(|(_, v)| !is_empty(v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(pruned).collect()),
        other => other,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

pub fn as_json<T: serde::Serialize>(obj: &T) -> Value {
    pruned(serde_json::to_value(obj).expect("serializes"))
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub const CODE: &str = "def foo(event, context):\n    return event['data']\n";
