//! `kubeless autoscale`: a function's horizontal pod autoscaler, kept in the Function's spec.

use anyhow::bail;
use clap::Subcommand;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::common::{check_quantity, list_or_print, need_function, open, FlagError};
use super::{Global, ListOutput};
use crate::resources::Function;

#[derive(Debug, Subcommand)]
pub enum AutoscaleCommand {
    /// Autoscale a function.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        min: i32,
        #[arg(long, default_value_t = 1)]
        max: i32,
        /// cpu or qps.
        #[arg(long, default_value = "cpu")]
        metric: String,
        /// CPU percentage, or calls per second (a quantity).
        #[arg(long)]
        value: String,
    },
    /// Stop autoscaling a function.
    Delete { name: String },
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        out: ListOutput,
    },
}

/// `kubeless autoscale create NAME --min --max --metric cpu|qps --value` (Kubeless stored an
/// `autoscaling/v2beta1` spec; the reconciler reads both shapes).
pub fn autoscaler(function: &Function, min: i32, max: i32, metric: &str, value: &str) -> Result<Value, FlagError> {
    let name = function.metadata.name.clone().unwrap_or_default();
    let metric = match metric {
        "cpu" => {
            let v: i32 = value
                .parse()
                .map_err(|_| FlagError::new("--value", format!("{value:?} is not a whole CPU percentage")))?;
            json!({"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": v}})
        }
        "qps" => {
            check_quantity("--value", value)?;
            json!({"type": "Object", "object": {
                "metricName": "function_calls",
                "target": {"kind": "Service", "name": name},
                "targetValue": value,
            }})
        }
        other => return Err(FlagError::new("--metric", format!("{other:?} is not supported; use cpu or qps"))),
    };
    if min < 1 || max < min {
        return Err(FlagError::new("--max", format!("min {min} and max {max}: need 1 <= min <= max")));
    }
    Ok(json!({
        "apiVersion": "autoscaling/v2beta1",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": function.metadata.namespace, "labels": function.metadata.labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": min,
            "maxReplicas": max,
            "metrics": [metric],
        },
    }))
}

pub async fn run(g: &Global, c: AutoscaleCommand) -> anyhow::Result<()> {
    let store = open(g).await?;
    match c {
        AutoscaleCommand::Create { name, min, max, metric, value } => {
            let mut f = need_function(&store, &name).await?;
            f.spec.horizontal_pod_autoscaler = Some(autoscaler(&f, min, max, &metric, &value)?);
            store.update(&f).await?;
            eprintln!("Autoscaler of function {name} set: {min} to {max} replicas on {metric} {value}.");
        }
        AutoscaleCommand::Delete { name } => {
            let mut f = need_function(&store, &name).await?;
            if f.spec.horizontal_pod_autoscaler.take().is_none() {
                bail!("function {name} has no autoscaler");
            }
            store.update(&f).await?;
            eprintln!("Autoscaler of function {name} removed.");
        }
        AutoscaleCommand::List { out } => {
            let functions: Vec<Function> = store.list().await?;
            let scaled: Vec<Function> =
                functions.into_iter().filter(|f| f.spec.horizontal_pod_autoscaler.is_some()).collect();
            list_or_print(&scaled, &out, &["NAME", "NAMESPACE", "TARGET", "MIN", "MAX", "METRIC", "VALUE"], |f| {
                let hpa = f.spec.horizontal_pod_autoscaler.clone().unwrap_or_default();
                let metric = hpa.pointer("/spec/metrics/0").cloned().unwrap_or_default();
                let (kind, value) = match metric["type"].as_str() {
                    Some("Object") => {
                        ("qps", metric.pointer("/object/targetValue").or(metric.pointer("/object/target/value")))
                    }
                    _ => (
                        "cpu",
                        metric
                            .pointer("/resource/targetAverageUtilization")
                            .or(metric.pointer("/resource/target/averageUtilization")),
                    ),
                };
                let text = |v: Option<&serde_json::Value>| {
                    v.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).unwrap_or_default()
                };
                vec![
                    f.name_any(),
                    f.namespace().unwrap_or_default(),
                    text(hpa.pointer("/spec/scaleTargetRef/name")),
                    text(hpa.pointer("/spec/minReplicas")),
                    text(hpa.pointer("/spec/maxReplicas")),
                    kind.to_string(),
                    text(value),
                ]
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::autoscaler;
    use crate::cli::function::{new_function, FunctionChange};

    /// `kubeless autoscale create hello --min 1 --max 5 --metric qps --value 10` and `--metric cpu
    /// --value 70` (Kubeless's `getHorizontalAutoscaleDefinition`).
    #[test]
    fn autoscalers_match_kubeless() {
        let f = new_function("hello", "default", &FunctionChange::default().with_deploy_defaults());
        let qps = autoscaler(&f, 1, 5, "qps", "10").expect("valid");
        assert_eq!(
            qps["spec"]["metrics"],
            json!([{"type": "Object", "object": {"metricName": "function_calls", "target": {"kind": "Service", "name": "hello"}, "targetValue": "10"}}])
        );
        assert_eq!(qps["spec"]["maxReplicas"], 5);
        assert_eq!(qps["metadata"]["labels"]["function"], "hello");
        let cpu = autoscaler(&f, 2, 2, "cpu", "70").expect("valid");
        assert_eq!(
            cpu["spec"]["metrics"],
            json!([{"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 70}}])
        );
        assert_eq!(autoscaler(&f, 1, 2, "memory", "1").expect_err("metric").flag, "--metric");
        assert_eq!(autoscaler(&f, 3, 2, "cpu", "1").expect_err("range").flag, "--max");
        assert_eq!(autoscaler(&f, 1, 2, "cpu", "lots").expect_err("value").flag, "--value");
    }
}
