//! `kubeless trigger kinesis`: Kinesis triggers, creating a stream, and publishing records to one
//! (PutRecords in batches).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use tokio::sync::Semaphore;

use super::TriggerCrud;
use crate::cli::common::{created_by, delete, list_or_print, meta, need_function, open, required, save, FlagError};
use crate::cli::publish::{self, Message, Outcome, Pending, Sink, Source};
use crate::cli::{table, Global, Output};
use crate::resources::{KinesisTrigger, KinesisTriggerSpec};

#[derive(Debug, Clone, Args)]
pub struct KinesisFlags {
    #[arg(long)]
    pub stream: Option<String>,
    #[arg(long)]
    pub aws_region: Option<String>,
    #[arg(long)]
    pub shard_id: Option<String>,
    #[arg(long)]
    pub function_name: Option<String>,
    /// Secret with aws_access_key_id and aws_secret_access_key.
    #[arg(long)]
    pub secret: Option<String>,
    /// Endpoint override (an emulator).
    #[arg(long)]
    pub endpoint: Option<String>,
    #[command(flatten)]
    pub out: Output,
}

/// Where Kinesis is and how to sign in.
#[derive(Debug, Clone, Args)]
pub struct AwsFlags {
    #[arg(long)]
    pub aws_region: String,
    /// Endpoint override (an emulator).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Kubernetes Secret with aws_access_key_id and aws_secret_access_key; without it, the AWS
    /// SDK's own chain (AWS_ACCESS_KEY_ID, profiles, …).
    #[arg(long)]
    pub secret: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KinesisCommand {
    #[command(flatten)]
    Trigger(TriggerCrud<KinesisFlags>),
    /// Create a stream (for trying things out).
    CreateStream {
        #[arg(long)]
        stream_name: String,
        #[arg(long, default_value_t = 1)]
        shard_count: i32,
        #[command(flatten)]
        aws: AwsFlags,
    },
    /// Put records on a stream.
    Publish {
        #[arg(long)]
        stream: String,
        /// Partition key of every record (unless --key-separator gives one per line).
        #[arg(long)]
        partition_key: Option<String>,
        /// Records (repeatable), as Kubeless's flag.
        #[arg(long)]
        records: Vec<String>,
        #[command(flatten)]
        aws: AwsFlags,
        #[command(flatten)]
        input: publish::Input,
    },
}

/// `kubeless trigger kinesis create` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KinesisChange {
    pub function_name: Option<String>,
    pub region: Option<String>,
    pub stream: Option<String>,
    pub shard: Option<String>,
    pub secret: Option<String>,
    pub endpoint: Option<String>,
}

/// Applies the given Kinesis flags (create starts from an empty spec).
pub fn update_kinesis(spec: &mut KinesisTriggerSpec, c: &KinesisChange) {
    let set = |field: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            field.clone_from(v);
        }
    };
    set(&mut spec.function_name, &c.function_name);
    set(&mut spec.aws_region, &c.region);
    set(&mut spec.stream, &c.stream);
    let set_opt = |field: &mut Option<String>, v: &Option<String>| {
        if let Some(v) = v {
            *field = (!v.is_empty()).then(|| v.clone());
        }
    };
    set_opt(&mut spec.shard, &c.shard);
    set_opt(&mut spec.secret, &c.secret);
    set_opt(&mut spec.endpoint, &c.endpoint);
}

pub fn kinesis_trigger(name: &str, namespace: &str, change: &KinesisChange) -> KinesisTrigger {
    let mut spec = KinesisTriggerSpec::default();
    update_kinesis(&mut spec, change);
    let mut t = KinesisTrigger::new(name, spec);
    t.metadata = meta(name, namespace, created_by());
    t
}

fn check_endpoint(endpoint: Option<&str>) -> Result<(), FlagError> {
    match endpoint.filter(|e| !e.is_empty()).map(url::Url::parse) {
        Some(Err(err)) => {
            Err(FlagError::new("--endpoint", format!("{:?} is not a URL: {err}", endpoint.unwrap_or_default())))
        }
        _ => Ok(()),
    }
}

fn kinesis_change(f: &KinesisFlags) -> anyhow::Result<KinesisChange> {
    check_endpoint(f.endpoint.as_deref())?;
    Ok(KinesisChange {
        function_name: f.function_name.clone(),
        region: f.aws_region.clone(),
        stream: f.stream.clone(),
        shard: f.shard_id.clone(),
        secret: f.secret.clone(),
        endpoint: f.endpoint.clone(),
    })
}

pub async fn run(g: &Global, c: KinesisCommand) -> anyhow::Result<()> {
    match c {
        KinesisCommand::Trigger(TriggerCrud::Create { name, flags }) => {
            for (v, flag) in [
                (&flags.stream, "--stream"),
                (&flags.aws_region, "--aws-region"),
                (&flags.function_name, "--function-name"),
            ] {
                required(v, flag)?;
            }
            let change = kinesis_change(&flags)?;
            let store = open(g).await?;
            need_function(&store, flags.function_name.as_deref().unwrap_or_default()).await?;
            save(&store, kinesis_trigger(&name, store.namespace(), &change), &flags.out, true).await
        }
        KinesisCommand::Trigger(TriggerCrud::Update { name, flags }) => {
            let change = kinesis_change(&flags)?;
            let store = open(g).await?;
            let mut t: KinesisTrigger = store.need(&name).await?;
            if let Some(f) = &change.function_name {
                need_function(&store, f).await?;
            }
            update_kinesis(&mut t.spec, &change);
            save(&store, t, &flags.out, false).await
        }
        KinesisCommand::Trigger(TriggerCrud::Delete { name }) => delete::<KinesisTrigger>(&open(g).await?, &name).await,
        KinesisCommand::Trigger(TriggerCrud::List { out }) => {
            let items: Vec<KinesisTrigger> = open(g).await?.list().await?;
            list_or_print(
                &items,
                &out,
                &["NAME", "NAMESPACE", "REGION", "STREAM", "SHARD", "FUNCTION NAME", "READY"],
                |t| {
                    vec![
                        t.name_any(),
                        t.namespace().unwrap_or_default(),
                        t.spec.aws_region.clone(),
                        t.spec.stream.clone(),
                        t.spec.shard.clone().unwrap_or_else(|| "<all>".to_string()),
                        t.spec.function_name.clone(),
                        table::trigger_ready(t.status.as_ref()),
                    ]
                },
            )
        }
        KinesisCommand::CreateStream { stream_name, shard_count, aws } => {
            let client = kinesis_client(g, &aws).await?;
            client.create_stream().stream_name(&stream_name).shard_count(shard_count).send().await.map_err(|e| {
                anyhow!("creating Kinesis stream {stream_name}: {}", aws_sdk_kinesis::error::DisplayErrorContext(e))
            })?;
            eprintln!("Kinesis stream {stream_name} created with {shard_count} shard(s).");
            Ok(())
        }
        KinesisCommand::Publish { stream, partition_key, records, aws, input } => {
            if !input.headers.is_empty() {
                bail!(FlagError::new("--header", "Kinesis records have no headers"));
            }
            if partition_key.is_some() && input.key.is_some() {
                bail!(FlagError::new("--key", "give --partition-key or --key, not both"));
            }
            let source = Source::open(&input, records).await?;
            let client = kinesis_client(g, &aws).await?;
            let sink = KinesisSink::new(client, &stream, partition_key.or(input.key.clone()), input.timeout);
            let target = format!("Kinesis stream {stream}");
            publish::publish(sink, source, &input, &target).await
        }
    }
}

/// A Kinesis client: keys from `--secret` (read from the cluster, or the manifest directory), else
/// the AWS SDK's own chain.
async fn kinesis_client(g: &Global, aws: &AwsFlags) -> anyhow::Result<aws_sdk_kinesis::Client> {
    let keys = match &aws.secret {
        None => None,
        Some(name) => {
            let store = open(g).await?;
            let secret: Secret = store.need(name).await.map_err(|e| anyhow!("--secret {name}: {e}"))?;
            let data = crate::control::index::secret_data(&secret);
            let key = |k: &str| -> anyhow::Result<String> {
                let bytes = data.get(k).ok_or_else(|| anyhow!("--secret {name}: has no key {k}"))?;
                let text = std::str::from_utf8(bytes).map_err(|_| anyhow!("--secret {name}: {k} is not text"))?;
                Ok(text.trim().to_string())
            };
            Some((key("aws_access_key_id")?, key("aws_secret_access_key")?))
        }
    };
    check_endpoint(aws.endpoint.as_deref())?;
    Ok(kubeless_kinesis::client(
        &aws.aws_region,
        aws.endpoint.as_deref(),
        keys.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    )
    .await)
}

/// Kinesis: PutRecords of up to 500 records, eight calls at once, failed records retried until
/// the timeout.
pub struct KinesisSink {
    client: aws_sdk_kinesis::Client,
    stream: String,
    partition_key: Option<String>,
    timeout: Duration,
    batch: Vec<PutRecordsRequestEntry>,
    batch_bytes: usize,
    calls: Arc<Semaphore>,
}

const KINESIS_BATCH: usize = 500;
const KINESIS_BATCH_BYTES: usize = 4 << 20;

impl KinesisSink {
    pub fn new(
        client: aws_sdk_kinesis::Client,
        stream: &str,
        partition_key: Option<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            stream: stream.to_string(),
            partition_key,
            timeout,
            batch: Vec::new(),
            batch_bytes: 0,
            calls: Arc::new(Semaphore::new(8)),
        }
    }

    async fn put(&mut self) -> Option<Pending> {
        if self.batch.is_empty() {
            return None;
        }
        let entries = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let permit = self.calls.clone().acquire_owned().await.ok()?;
        let (client, stream, timeout) = (self.client.clone(), self.stream.clone(), self.timeout);
        let task = tokio::spawn(async move {
            let outcome = put_records(&client, &stream, entries, timeout).await;
            drop(permit);
            outcome
        });
        Some(Box::pin(async move { task.await.unwrap_or_else(|e| Outcome::failed(0, e.to_string())) }))
    }
}

async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    mut entries: Vec<PutRecordsRequestEntry>,
    timeout: Duration,
) -> Outcome {
    let n = entries.len() as u64;
    let deadline = Instant::now() + timeout;
    let mut backoff = Duration::from_millis(50);
    let mut acked = 0u64;
    loop {
        let call = client.put_records().stream_name(stream).set_records(Some(entries.clone())).send();
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(left, call).await {
            Err(_) => format!("no answer within {timeout:?}"),
            Ok(Err(e)) => aws_sdk_kinesis::error::DisplayErrorContext(e).to_string(),
            Ok(Ok(out)) => {
                let results = out.records();
                let retry: Vec<PutRecordsRequestEntry> = entries
                    .iter()
                    .zip(results)
                    .filter(|(_, r)| r.error_code().is_some())
                    .map(|(e, _)| e.clone())
                    .collect();
                acked += (entries.len() - retry.len()) as u64;
                if retry.is_empty() {
                    return Outcome::acked(acked);
                }
                let reason = results.iter().find_map(|r| r.error_message()).unwrap_or("throttled").to_string();
                entries = retry;
                reason
            }
        };
        if Instant::now() + backoff >= deadline {
            return Outcome { acked, failed: n - acked, error: Some(error) };
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

impl Sink for KinesisSink {
    async fn send(&mut self, msg: Message) -> Result<Option<Pending>, String> {
        let key = match (msg.key, &self.partition_key) {
            (Some(k), _) => String::from_utf8(k).map_err(|_| "a partition key must be UTF-8".to_string())?,
            (None, Some(k)) => k.clone(),
            (None, None) => return Err("no partition key: give --partition-key or --key-separator".to_string()),
        };
        let size = msg.value.len() + key.len();
        let entry = PutRecordsRequestEntry::builder()
            .partition_key(key)
            .data(Blob::new(msg.value))
            .build()
            .map_err(|e| e.to_string())?;
        let mut pending = None;
        if self.batch.len() >= KINESIS_BATCH || self.batch_bytes + size > KINESIS_BATCH_BYTES {
            pending = self.put().await;
        }
        self.batch.push(entry);
        self.batch_bytes += size;
        Ok(pending)
    }

    async fn finish(&mut self) -> Option<Pending> {
        self.put().await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{kinesis_trigger, KinesisChange};
    use crate::cli::test_support::as_json;

    /// `kubeless trigger kinesis create k --function-name hello --aws-region us-west-2 --stream s
    /// --shard-id shardId-000000000000 --secret ec2 --endpoint http://localhost:4567`.
    #[test]
    fn kinesis_trigger_matches_kubeless() {
        let change = KinesisChange {
            function_name: Some("hello".into()),
            region: Some("us-west-2".into()),
            stream: Some("s".into()),
            shard: Some("shardId-000000000000".into()),
            secret: Some("ec2".into()),
            endpoint: Some("http://localhost:4567".into()),
        };
        assert_eq!(
            as_json(&kinesis_trigger("k", "default", &change)),
            json!({
                "kind": "KinesisTrigger",
                "apiVersion": "kubeless.io/v1beta1",
                "metadata": {"name": "k", "namespace": "default", "labels": {"created-by": "kubeless"}},
                "spec": {
                    "function-name": "hello",
                    "aws-region": "us-west-2",
                    "stream": "s",
                    "shard": "shardId-000000000000",
                    "secret": "ec2",
                    "endpoint": "http://localhost:4567",
                },
            })
        );
    }
}
