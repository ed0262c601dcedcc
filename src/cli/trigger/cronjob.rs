//! `kubeless trigger cronjob`: a function called on a schedule, with an optional JSON payload; and
//! the trigger `function deploy --schedule` makes.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use kube::ResourceExt;
use serde_json::Value;

use super::TriggerCrud;
use crate::cli::common::{
    check_schedule, created_by, delete, list_or_print, meta, need_function, open, required, save, FlagError,
};
use crate::cli::{table, Global, Output};
use crate::resources::{CronJobTrigger, CronJobTriggerSpec};

#[derive(Debug, Clone, Args)]
pub struct CronJobFlags {
    /// Function to call (must exist).
    #[arg(long)]
    pub function: Option<String>,
    /// Cron schedule (5 fields, or @hourly-style).
    #[arg(long)]
    pub schedule: Option<String>,
    /// JSON payload.
    #[arg(short = 'p', long, conflicts_with = "payload_from_file")]
    pub payload: Option<String>,
    /// A .json file holding the payload.
    #[arg(short = 'f', long)]
    pub payload_from_file: Option<PathBuf>,
    #[command(flatten)]
    pub out: Output,
}

/// `kubeless trigger cronjob create NAME --function F --schedule S [-p JSON]`.
pub fn cronjob_trigger(
    name: &str,
    namespace: &str,
    function: &str,
    schedule: &str,
    payload: Option<Value>,
) -> CronJobTrigger {
    let mut t = CronJobTrigger::new(
        name,
        CronJobTriggerSpec {
            function_name: function.to_string(),
            schedule: schedule.to_string(),
            payload,
            ..Default::default()
        },
    );
    t.metadata = meta(name, namespace, created_by());
    t
}

/// The CronJobTrigger `function deploy --schedule` makes beside the Function: named after it and
/// labelled `function: NAME` too.
pub fn function_schedule(name: &str, namespace: &str, schedule: &str) -> CronJobTrigger {
    let mut t = cronjob_trigger(name, namespace, name, schedule, None);
    if let Some(labels) = t.metadata.labels.as_mut() {
        labels.insert("function".to_string(), name.to_string());
    }
    t
}

/// A cron payload: JSON text (`--payload`, or a `.json` file's content).
pub fn parse_payload(flag: &str, text: &str) -> Result<Value, FlagError> {
    serde_json::from_str(text).map_err(|e| FlagError::new(flag, format!("is not JSON: {e}")))
}

async fn cron_payload(flags: &CronJobFlags) -> anyhow::Result<Option<serde_json::Value>> {
    if let Some(p) = &flags.payload {
        return Ok(Some(parse_payload("--payload", p)?));
    }
    let Some(path) = &flags.payload_from_file else { return Ok(None) };
    if path.extension().and_then(|e| e.to_str()) != Some("json") {
        bail!(FlagError::new("--payload-from-file", format!("{}: must be a .json file", path.display())));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| FlagError::new("--payload-from-file", format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(parse_payload("--payload-from-file", &text)?))
}

pub async fn run(g: &Global, c: TriggerCrud<CronJobFlags>) -> anyhow::Result<()> {
    match c {
        TriggerCrud::Create { name, flags } => {
            let function = required(&flags.function, "--function")?;
            let schedule = required(&flags.schedule, "--schedule")?;
            check_schedule("--schedule", &schedule)?;
            let payload = cron_payload(&flags).await?;
            let store = open(g).await?;
            need_function(&store, &function).await?;
            save(&store, cronjob_trigger(&name, store.namespace(), &function, &schedule, payload), &flags.out, true)
                .await
        }
        TriggerCrud::Update { name, flags } => {
            if let Some(s) = &flags.schedule {
                check_schedule("--schedule", s)?;
            }
            let payload = cron_payload(&flags).await?;
            let store = open(g).await?;
            let mut t: CronJobTrigger = store.need(&name).await?;
            if let Some(f) = &flags.function {
                need_function(&store, f).await?;
                t.spec.function_name.clone_from(f);
            }
            if let Some(s) = &flags.schedule {
                t.spec.schedule.clone_from(s);
            }
            if payload.is_some() {
                t.spec.payload = payload;
            }
            save(&store, t, &flags.out, false).await
        }
        TriggerCrud::Delete { name } => delete::<CronJobTrigger>(&open(g).await?, &name).await,
        TriggerCrud::List { out } => {
            let items: Vec<CronJobTrigger> = open(g).await?.list().await?;
            list_or_print(&items, &out, &["NAME", "NAMESPACE", "SCHEDULE", "FUNCTION NAME", "READY"], |t| {
                vec![
                    t.name_any(),
                    t.namespace().unwrap_or_default(),
                    t.spec.schedule.clone(),
                    t.spec.function_name.clone(),
                    table::trigger_ready(t.status.as_ref()),
                ]
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{cronjob_trigger, function_schedule, parse_payload};
    use crate::cli::test_support::as_json;

    /// `kubeless trigger cronjob create tick --function hello --schedule "*/5 * * * *" -p
    /// '{"a": 1}'`, and the trigger `function deploy --schedule` makes.
    #[test]
    fn cronjob_triggers_match_kubeless() {
        let payload = parse_payload("--payload", r#"{"a": 1}"#).expect("JSON");
        assert_eq!(
            as_json(&cronjob_trigger("tick", "default", "hello", "*/5 * * * *", Some(payload))),
            json!({
                "kind": "CronJobTrigger",
                "apiVersion": "kubeless.io/v1beta1",
                "metadata": {"name": "tick", "namespace": "default", "labels": {"created-by": "kubeless"}},
                "spec": {"function-name": "hello", "schedule": "*/5 * * * *", "payload": {"a": 1}},
            })
        );
        assert_eq!(
            as_json(&function_schedule("hello", "prod", "@hourly")),
            json!({
                "kind": "CronJobTrigger",
                "apiVersion": "kubeless.io/v1beta1",
                "metadata": {"name": "hello", "namespace": "prod", "labels": {"created-by": "kubeless", "function": "hello"}},
                "spec": {"function-name": "hello", "schedule": "@hourly"},
            })
        );
        assert_eq!(parse_payload("--payload", "{nope").expect_err("bad").flag, "--payload");
    }
}
