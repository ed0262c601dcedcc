//! A Function's HorizontalPodAutoscaler: `spec.horizontalPodAutoscaler`, which Kubeless stored as
//! `autoscaling/v2beta1`, converted to `autoscaling/v2`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{json, Value};

use super::{is_unset, meta, name_of, BuildError};
use crate::resources::Function;

/// `spec.horizontalPodAutoscaler` (Kubeless stored an `autoscaling/v2beta1` object) as an
/// `autoscaling/v2` HPA on the function's Deployment; `None` when unset or empty.
pub(super) fn build_autoscaler(function: &Function, owner: &OwnerReference) -> Result<Option<Value>, BuildError> {
    let Some(hpa) = function.spec.horizontal_pod_autoscaler.as_ref().filter(|v| !is_unset(v)) else {
        return Ok(None);
    };
    let Some(spec) = hpa.get("spec").filter(|s| !is_unset(s)) else {
        return Ok(None);
    };
    let bad = |m: String| BuildError::Autoscaler(m);
    let max = spec
        .get("maxReplicas")
        .and_then(Value::as_i64)
        .filter(|m| *m > 0)
        .ok_or_else(|| bad("spec.maxReplicas must be a positive number".to_string()))?;
    let mut out = serde_json::Map::new();
    out.insert(
        "scaleTargetRef".to_string(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": name_of(function)}),
    );
    if let Some(min) = spec.get("minReplicas").filter(|v| !v.is_null()) {
        out.insert("minReplicas".to_string(), min.clone());
    }
    out.insert("maxReplicas".to_string(), json!(max));
    let metrics = spec.get("metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let metrics: Vec<Value> = metrics
        .iter()
        .enumerate()
        .map(|(i, m)| metric_v2(m).map_err(|e| bad(format!("spec.metrics[{i}]: {e}"))))
        .collect::<Result<_, _>>()?;
    if !metrics.is_empty() {
        out.insert("metrics".to_string(), Value::Array(metrics));
    }
    if let Some(behavior) = spec.get("behavior").filter(|v| !v.is_null()) {
        out.insert("behavior".to_string(), behavior.clone());
    }
    let metadata = serde_json::to_value(meta(function, owner)).map_err(|e| bad(e.to_string()))?;
    Ok(Some(json!({"metadata": metadata, "spec": Value::Object(out)})))
}

/// The target of a `v2beta1` metric (`targetAverageUtilization`, `targetAverageValue`,
/// `targetValue`) as a `v2` `target`.
fn target_v2(old: &Value) -> Option<Value> {
    if let Some(u) = old.get("targetAverageUtilization").filter(|v| !v.is_null()) {
        return Some(json!({"type": "Utilization", "averageUtilization": u}));
    }
    if let Some(v) = old.get("targetAverageValue").or_else(|| old.get("averageValue")).filter(|v| !v.is_null()) {
        return Some(json!({"type": "AverageValue", "averageValue": v}));
    }
    old.get("targetValue").filter(|v| !v.is_null()).map(|v| json!({"type": "Value", "value": v}))
}

/// One metric in `v2` form; a metric already in `v2` form (it has a `target`) is kept.
fn metric_v2(metric: &Value) -> Result<Value, String> {
    let kind = metric.get("type").and_then(Value::as_str).ok_or("type is missing")?;
    let field = match kind {
        "Resource" => "resource",
        "Pods" => "pods",
        "Object" => "object",
        "External" => "external",
        "ContainerResource" => "containerResource",
        other => return Err(format!("type {other:?} is not Resource, Pods, Object or External")),
    };
    let source = metric.get(field).ok_or_else(|| format!("type {kind} needs {field}"))?;
    // A v2 target has a type; v2beta1's Object `target` is the object described.
    if source.get("target").and_then(|t| t.get("type")).is_some() {
        return Ok(metric.clone());
    }
    let target = target_v2(source).ok_or_else(|| format!("{field} has no target"))?;
    let converted = match kind {
        "Resource" | "ContainerResource" => {
            let mut m = json!({"name": source.get("name").cloned().unwrap_or(Value::Null), "target": target});
            if let Some(c) = source.get("container") {
                m["container"] = c.clone();
            }
            m
        }
        _ => {
            let mut id = json!({"name": source.get("metricName").cloned().unwrap_or(Value::Null)});
            let selector = source.get("selector").or_else(|| source.get("metricSelector"));
            if let Some(s) = selector.filter(|s| !s.is_null()) {
                id["selector"] = s.clone();
            }
            let mut m = json!({"metric": id, "target": target});
            if kind == "Object" {
                m["describedObject"] = source.get("target").cloned().unwrap_or(Value::Null);
            }
            m
        }
    };
    Ok(json!({"type": kind, field: converted}))
}
