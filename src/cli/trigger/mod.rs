//! `kubeless trigger`: a module per kind (`kafka`, `nats`, `kinesis`, `cronjob`, `http`), each with
//! its flags, the trigger it builds and its commands. Here what they share: `create`, `update`,
//! `delete` and `list`, and the topic and function selector of Kafka and NATS triggers.

pub mod cronjob;
mod http;
mod kafka;
mod kinesis;
mod nats;

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::SelectorExt as _;
use kube::ResourceExt;

use self::cronjob::CronJobFlags;
use self::http::HttpFlags;
use self::kinesis::KinesisCommand;
use self::nats::NatsCommand;
use crate::cli::common::{delete, list_or_print, open, required, save, FlagError};
use crate::cli::selector::{format_selector, parse_selector};
use crate::cli::store::{Object, Store};
use crate::cli::{Global, ListOutput, Output};
use crate::resources::{Function, KafkaTrigger};

#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Kafka triggers: a topic delivered to the functions a selector picks.
    #[command(subcommand)]
    Kafka(TriggerCrud<SelectorFlags>),
    /// NATS triggers, and publishing to NATS.
    #[command(subcommand)]
    Nats(NatsCommand),
    /// Kinesis triggers, streams and publishing.
    #[command(subcommand)]
    Kinesis(KinesisCommand),
    /// Cron triggers: a function called on a schedule.
    #[command(subcommand)]
    Cronjob(TriggerCrud<CronJobFlags>),
    /// HTTP triggers: an Ingress to a function.
    #[command(subcommand)]
    Http(TriggerCrud<HttpFlags>),
}

#[derive(Debug, Clone, Args)]
pub struct SelectorFlags {
    /// Topic (subject) to listen to.
    #[arg(long)]
    pub trigger_topic: Option<String>,
    /// Functions to deliver to: a label selector (k=v,k2=v2).
    #[arg(long)]
    pub function_selector: Option<String>,
    #[command(flatten)]
    pub out: Output,
}

/// The commands every trigger kind has; `F` is its flags (all optional on `update`).
#[derive(Debug, Subcommand)]
pub enum TriggerCrud<F: Args> {
    /// Create a trigger.
    Create {
        name: String,
        #[command(flatten)]
        flags: F,
    },
    /// Change a trigger: only the flags given change.
    Update {
        name: String,
        #[command(flatten)]
        flags: F,
    },
    /// Delete a trigger.
    Delete { name: String },
    /// List the triggers of the namespace.
    #[command(alias = "ls")]
    List {
        #[command(flatten)]
        out: ListOutput,
    },
}

pub async fn run(g: &Global, c: TriggerCommand) -> anyhow::Result<()> {
    match c {
        TriggerCommand::Kafka(c) => selector_trigger::<KafkaTrigger>(g, c).await,
        TriggerCommand::Nats(c) => nats::run(g, c).await,
        TriggerCommand::Kinesis(c) => kinesis::run(g, c).await,
        TriggerCommand::Cronjob(c) => cronjob::run(g, c).await,
        TriggerCommand::Http(c) => http::run(g, c).await,
    }
}

/// What Kafka and NATS triggers share: a topic and a function selector.
trait SelectorTrigger: Object {
    fn build(name: &str, ns: &str, topic: &str, selector: LabelSelector) -> Self;
    fn set(&mut self, topic: Option<&str>, selector: Option<LabelSelector>);
    fn topic(&self) -> String;
    fn selector(&self) -> Option<&LabelSelector>;
    fn ready(&self) -> String;
}

/// Warns (on stderr) when no function in the namespace carries the selected labels: the trigger
/// is kept (the function may come later), but a typo should not go unnoticed.
async fn warn_if_unmatched(store: &Store, selector: &LabelSelector) -> anyhow::Result<()> {
    let matcher = kube::core::Selector::try_from(selector.clone())
        .map_err(|e| FlagError::new("--function-selector", e.to_string()))?;
    let functions: Vec<Function> = store.list().await?;
    let empty = BTreeMap::new();
    if !functions.iter().any(|f| matcher.matches(f.metadata.labels.as_ref().unwrap_or(&empty))) {
        eprintln!(
            "warning: --function-selector {} matches no function in namespace {} yet",
            format_selector(Some(selector)),
            store.namespace()
        );
    }
    Ok(())
}

async fn selector_trigger<K: SelectorTrigger>(g: &Global, c: TriggerCrud<SelectorFlags>) -> anyhow::Result<()> {
    match c {
        TriggerCrud::Create { name, flags } => {
            let topic = required(&flags.trigger_topic, "--trigger-topic")?;
            let selector = parse_selector(&required(&flags.function_selector, "--function-selector")?)?;
            let store = open(g).await?;
            if !flags.out.dryrun {
                warn_if_unmatched(&store, &selector).await?;
            }
            save(&store, K::build(&name, store.namespace(), &topic, selector), &flags.out, true).await
        }
        TriggerCrud::Update { name, flags } => {
            let selector = flags.function_selector.as_deref().map(parse_selector).transpose()?;
            let store = open(g).await?;
            let mut t: K = store.need(&name).await?;
            if let Some(s) = &selector {
                warn_if_unmatched(&store, s).await?;
            }
            t.set(flags.trigger_topic.as_deref(), selector);
            save(&store, t, &flags.out, false).await
        }
        TriggerCrud::Delete { name } => delete::<K>(&open(g).await?, &name).await,
        TriggerCrud::List { out } => {
            let items: Vec<K> = open(g).await?.list().await?;
            list_or_print(&items, &out, &["NAME", "NAMESPACE", "TOPIC", "FUNCTION SELECTOR", "READY"], |t| {
                vec![
                    t.name_any(),
                    t.namespace().unwrap_or_default(),
                    t.topic(),
                    format_selector(t.selector()),
                    t.ready(),
                ]
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::kafka::kafka_trigger;
    use super::nats::nats_trigger;
    use crate::cli::selector::parse_selector;
    use crate::cli::test_support::as_json;

    /// `kubeless trigger kafka create orders --trigger-topic orders --function-selector
    /// created-by=kubeless,function=hello -n prod --dryrun -o json`, and the same for NATS.
    #[test]
    fn kafka_and_nats_triggers_match_kubeless() {
        let selector = parse_selector("created-by=kubeless,function=hello").expect("valid");
        let kubeless = |kind: &str| {
            json!({
                "kind": kind,
                "apiVersion": "kubeless.io/v1beta1",
                "metadata": {"name": "orders", "namespace": "prod", "labels": {"created-by": "kubeless"}},
                "spec": {
                    "functionSelector": {"matchLabels": {"created-by": "kubeless", "function": "hello"}},
                    "topic": "orders",
                },
            })
        };
        assert_eq!(as_json(&kafka_trigger("orders", "prod", "orders", selector.clone())), kubeless("KafkaTrigger"));
        assert_eq!(as_json(&nats_trigger("orders", "prod", "orders", selector)), kubeless("NATSTrigger"));
    }
}
