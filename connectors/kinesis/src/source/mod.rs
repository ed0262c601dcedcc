//! The Kinesis source: waits for the stream to be active, discovers shards, and runs one reader per
//! shard whose parents are finished.

mod plan;
mod shard;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{StreamDescriptionSummary, StreamStatus};
use aws_sdk_kinesis::Client;
use kubeless_connector::{error_chain, Failure, Reason, SourceContext, SourceState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::plan::{list_shards, plan_readers};
use self::shard::{read_shard, Shard};
use crate::checkpoint::{FileCheckpointStore, ShardLeases};
use crate::config::KinesisSourceConfig;

#[derive(Debug, thiserror::Error)]
pub enum KinesisSourceError {
    #[error("stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] crate::CheckpointError),
}

impl KinesisSourceError {
    /// What the consumer's status shows: both are tried again (a recreated stream is read anew).
    pub fn failure(&self) -> Failure {
        Failure::new(Reason::SourceError, self.to_string())
    }
}

/// A failed AWS call: `what` names the call and its object.
fn sdk_failure<E, R>(what: &str, e: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let reason = match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Reason::BrokerUnreachable,
        _ => match e.code() {
            Some("ResourceNotFoundException") => Reason::StreamNotFound,
            Some(
                "UnrecognizedClientException"
                | "AccessDeniedException"
                | "InvalidSignatureException"
                | "IncompleteSignature"
                | "InvalidClientTokenId"
                | "MissingAuthenticationToken"
                | "ExpiredTokenException",
            ) => Reason::NotAuthorized,
            _ => Reason::SourceError,
        },
    };
    Failure::new(reason, format!("{what}: {}", error_chain(e)))
}

/// How often the shard list is read again (new shards after resharding, finished parents).
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(1);

/// A Kinesis client for the config's region, endpoint and credentials.
pub async fn client(region: &str, endpoint: Option<&str>, credentials: Option<(&str, &str)>) -> Client {
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).region(aws_config::Region::new(region.to_string()));
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((key, secret)) = credentials {
        loader = loader.credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            key,
            secret,
            None,
            None,
            "kubeless-trigger-secret",
        ));
    }
    Client::new(&loader.load().await)
}

/// Runs until `ctx.shutdown`, reading every shard with checkpoints in a file; then every reader
/// drains (bounded) and checkpoints.
pub async fn run_source(config: KinesisSourceConfig, ctx: SourceContext) -> Result<(), KinesisSourceError> {
    let store = FileCheckpointStore::new(&config.checkpoint_dir, &config.checkpoint_key);
    let leases = Arc::new(match &config.legacy_checkpoint_key {
        Some(legacy) => store.reading_first_from(&config.checkpoint_dir, legacy),
        None => store,
    });
    run_source_with(config, ctx, leases).await
}

/// Runs until `ctx.shutdown`, reading the shards `leases` assigns to this reader.
pub async fn run_source_with(
    config: KinesisSourceConfig,
    ctx: SourceContext,
    leases: Arc<dyn ShardLeases>,
) -> Result<(), KinesisSourceError> {
    let credentials = config.credentials.as_ref().map(|(key, secret)| (key.as_str(), secret.as_str()));
    let client = client(&config.region, config.endpoint.as_deref(), credentials).await;
    let Some(stream_id) = wait_active(&client, &config, &ctx).await else {
        return Ok(());
    };
    let mut warned_recreated = false;
    // Shards known to be finished, and shards read (by any reader: they have a checkpoint) whose
    // children therefore start at TRIM_HORIZON.
    let mut finished: HashSet<String> = HashSet::new();
    let mut read: HashSet<String> = HashSet::new();
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    let mut surrendering: HashSet<String> = HashSet::new();
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut readers: JoinSet<(String, Result<bool, Failure>)> = JoinSet::new();
    let stop = ctx.shutdown.child_token();
    let mut first = true;
    // Set by any failure: the stream may have been deleted (and created again) meanwhile.
    let mut suspect = false;
    // The shards last listed (renewed even when listing fails), and when the leases last renewed.
    let mut last_ids: Vec<String> = Vec::new();
    let mut renewed = Instant::now();
    loop {
        if suspect {
            match identity(&client, &config.stream).await {
                // Deleted and created again under the same name: its sequence numbers start over,
                // so start over too (the restart ignores the old stream's checkpoints).
                Some(now) if now != stream_id => {
                    stop.cancel();
                    while readers.join_next().await.is_some() {}
                    return Err(KinesisSourceError::Stream {
                        stream: config.stream.clone(),
                        reason: "the stream was deleted and created again; reading it anew".to_string(),
                    });
                }
                Some(_) => suspect = false,
                None => {}
            }
        }
        let round = match list_shards(&client, &config.stream).await {
            Ok(shards) => {
                let ids: Vec<String> = shards
                    .iter()
                    .filter(|s| config.shard.as_ref().is_none_or(|only| *only == s.id))
                    .map(|s| s.id.clone())
                    .collect();
                last_ids.clone_from(&ids);
                leases
                    .balance(&ids)
                    .await
                    .map(|a| (shards, a))
                    .map_err(|e| Failure::new(Reason::SourceError, e.to_string()))
            }
            Err(why) => {
                // The leases held are renewed anyway, so another replica does not take shards
                // this one is still reading.
                if !last_ids.is_empty() && leases.balance(&last_ids).await.is_ok() {
                    renewed = Instant::now();
                }
                Err(why)
            }
        };
        if round.is_ok() {
            renewed = Instant::now();
        }
        // Leases that could not be renewed for their duration may be another replica's now:
        // stop reading (each reader drains what it handed out).
        if let Some(duration) = leases.lease_duration() {
            if renewed.elapsed() >= duration && running.values().any(|t| !t.is_cancelled()) {
                warn!(stream = %config.stream, unrenewed = ?renewed.elapsed(), "The shard leases could not be renewed in time; stopping every reader.");
                for token in running.values() {
                    token.cancel();
                }
            }
        }
        match round {
            Ok((shards, mut assignment)) => {
                let before = assignment.checkpoints.len();
                assignment.checkpoints.retain(|_, c| c.stream.as_ref().is_none_or(|s| *s == stream_id));
                if assignment.checkpoints.len() < before && !warned_recreated {
                    warned_recreated = true;
                    warn!(stream = %config.stream, identity = %stream_id, ignored = before - assignment.checkpoints.len(), "The stream was deleted and created again: the old stream's checkpoints are ignored and its shards start per startingPosition.");
                }
                for (id, c) in &assignment.checkpoints {
                    read.insert(id.clone());
                    if c.finished {
                        finished.insert(id.clone());
                    }
                }
                for (id, token) in &running {
                    let surrender = assignment.surrender.contains(id);
                    if surrender || !assignment.held.contains(id) {
                        if surrender && surrendering.insert(id.clone()) {
                            info!(stream = %config.stream, shard = %id, "Giving the shard up to another replica.");
                        } else if !surrender {
                            warn!(stream = %config.stream, shard = %id, "The shard's lease was lost; stopping its reader.");
                        }
                        token.cancel();
                    }
                }
                held.clone_from(&assignment.held);
                let busy: HashSet<String> = running
                    .keys()
                    .cloned()
                    .chain(shards.iter().filter(|s| !assignment.held.contains(&s.id)).map(|s| s.id.clone()))
                    .chain(assignment.surrender.iter().cloned())
                    .collect();
                let plan = plan_readers(&shards, &config, &assignment.checkpoints, &busy, &mut finished, &read);
                for (id, start) in plan {
                    info!(stream = %config.stream, shard = %id, start = ?start, "Reading shard.");
                    let token = stop.child_token();
                    running.insert(id.clone(), token.clone());
                    read.insert(id.clone());
                    let (client, config, leases, ctx) = (client.clone(), config.clone(), leases.clone(), ctx.clone());
                    let stream_id = stream_id.clone();
                    readers.spawn(async move {
                        let shard = Shard { id: &id, stream_id: &stream_id };
                        let result = read_shard(&client, &config, shard, start, leases.as_ref(), &ctx, &token).await;
                        (id, result)
                    });
                }
                if first {
                    ctx.health.set(SourceState::Ready);
                    first = false;
                }
            }
            Err(why) => {
                warn!(stream = %config.stream, error = %why, "Listing or leasing shards failed; retrying.");
                if first {
                    let detail = format!("stream {}: {why}", config.stream);
                    ctx.health.set(SourceState::Failed(Failure::new(why.reason, detail)));
                }
                suspect = true;
            }
        }
        tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            Some(done) = readers.join_next(), if !readers.is_empty() => {
                if let Ok((id, result)) = done {
                    running.remove(&id);
                    match result {
                        Ok(true) => {
                            info!(stream = %config.stream, shard = %id, "Shard finished; its children may start.");
                            finished.insert(id.clone());
                        }
                        Ok(false) => {}
                        Err(why) => {
                            warn!(stream = %config.stream, shard = %id, error = %why, "Shard reader stopped; the shard is read again from its checkpoint.");
                            suspect = true;
                        }
                    }
                    if surrendering.remove(&id) {
                        leases.release(&id).await;
                    }
                }
            }
            () = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
        }
    }
    stop.cancel();
    while readers.join_next().await.is_some() {}
    // Stopped and saved: hand every shard over at once rather than after the leases expire.
    for id in &held {
        leases.release(id).await;
    }
    Ok(())
}

/// The stream's identity (ARN and creation time), if it exists and is readable.
async fn identity(client: &Client, stream: &str) -> Option<String> {
    let out = client.describe_stream_summary().stream_name(stream).send().await.ok()?;
    out.stream_description_summary().and_then(active_identity)
}

/// The identity of a described stream, if it is readable (ACTIVE or UPDATING).
fn active_identity(s: &StreamDescriptionSummary) -> Option<String> {
    matches!(s.stream_status(), StreamStatus::Active | StreamStatus::Updating)
        .then(|| format!("{}@{}", s.stream_arn(), s.stream_creation_timestamp().to_millis().unwrap_or(0)))
}

/// Waits for the stream to be ACTIVE, reporting why not; returns its identity (ARN and creation
/// time), or none if stopped meanwhile.
async fn wait_active(client: &Client, config: &KinesisSourceConfig, ctx: &SourceContext) -> Option<String> {
    let mut delay = Duration::from_millis(500);
    loop {
        let not_active = |detail: String| Failure::new(Reason::StreamNotFound, detail);
        let why = match client.describe_stream_summary().stream_name(&config.stream).send().await {
            Ok(out) => match out.stream_description_summary() {
                Some(s) => match active_identity(s) {
                    Some(identity) => return Some(identity),
                    None => not_active(format!("stream {} is {}, not ACTIVE yet", config.stream, s.stream_status())),
                },
                None => not_active(format!("stream {} has no status", config.stream)),
            },
            Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => {
                not_active(format!("stream {} does not exist in {}", config.stream, config.region))
            }
            Err(e) => sdk_failure(&format!("cannot describe stream {}", config.stream), &e),
        };
        warn!(stream = %config.stream, reason = %why, "Waiting for the stream.");
        ctx.health.set(SourceState::Failed(why));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.shutdown.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
