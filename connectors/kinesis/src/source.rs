//! The Kinesis source: waits for the stream to be active, discovers shards, and runs one reader per
//! shard whose parents are finished.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamDescriptionSummary, StreamStatus};
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use kubeless_connector::{
    error_chain, AckHandle, Acker, Failure, Health, Message, Origin, Outcome, PartitionTracker, Position, Reason,
    SourceContext, SourceState,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoint::{CheckpointError, FileCheckpointStore, ShardCheckpoint, ShardLeases};
use crate::config::{KinesisSourceConfig, StartingPosition};

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
/// Records per `GetRecords` call: one call's worth stays small in memory.
const RECORDS_PER_CALL: i32 = 500;
/// Kinesis allows 5 `GetRecords` per second per shard; a busy shard is read at most this often.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);
/// Checkpoints are written at most this often while reading, and always at the end.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a shard paused at its uncommitted limit looks again.
const CAPPED_RECHECK: Duration = Duration::from_millis(100);

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

/// Which shards to start reading now, and where. A shard starts only when every parent is finished
/// (or gone from the stream), so records of one partition key are delivered in order across
/// resharding. Where it starts: after its checkpoint; else at TRIM_HORIZON if this reader read a
/// parent (its children hold the rest of those keys' records); else at the configured position.
/// A shard that was already closed before this reader ever saw it, with `LATEST`, holds nothing
/// new: it is marked finished without reading.
fn plan_readers(
    shards: &[ShardInfo],
    config: &KinesisSourceConfig,
    checkpoints: &std::collections::BTreeMap<String, ShardCheckpoint>,
    running: &HashSet<String>,
    finished: &mut HashSet<String>,
    read: &HashSet<String>,
) -> Vec<(String, Start)> {
    let mut plan = Vec::new();
    for shard in shards.iter().filter(|s| config.shard.as_ref().is_none_or(|only| *only == s.id)) {
        if running.contains(&shard.id) || finished.contains(&shard.id) {
            continue;
        }
        let parents_done = shard.parents.iter().all(|p| finished.contains(p) || !shards.iter().any(|s| &s.id == p));
        if !parents_done {
            continue;
        }
        let checkpoint = checkpoints.get(&shard.id);
        let start = match (checkpoint.and_then(|c| c.sequence.clone()), checkpoint.and_then(|c| c.started_at_ms)) {
            (Some(seq), _) => Start::After(seq),
            (None, Some(ms)) => Start::Since(ms),
            (None, None) if shard.parents.iter().any(|p| read.contains(p)) => Start::TrimHorizon,
            (None, None) if shard.closed && config.starting_position == StartingPosition::Latest => {
                finished.insert(shard.id.clone());
                continue;
            }
            (None, None) => Start::Configured,
        };
        plan.push((shard.id.clone(), start));
    }
    plan
}

struct ShardInfo {
    id: String,
    parents: Vec<String>,
    closed: bool,
}

async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, Failure> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = req.send().await.map_err(|e| sdk_failure(&format!("ListShards on {stream}"), &e))?;
        for s in page.shards() {
            let parents =
                [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten().map(str::to_string).collect();
            let closed = s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some();
            out.push(ShardInfo { id: s.shard_id().to_string(), parents, closed });
        }
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(out),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    After(String),
    /// Where an earlier reader started at `LATEST` before checkpointing any record (ms).
    Since(i64),
    TrimHorizon,
    Configured,
}

/// Records handed out for one shard, and the sequence number of each.
#[derive(Default)]
struct ShardState {
    tracker: PartitionTracker,
    /// (counter, sequence number) of records not yet behind the checkpoint.
    sequences: VecDeque<(i64, String)>,
}

impl ShardState {
    /// Takes back record `counter`, the last one pushed, which was never handed out.
    fn unsend(&mut self, counter: i64) {
        self.tracker.forget_from(counter);
        self.sequences.retain(|(c, _)| *c < counter);
    }

    /// The sequence number to checkpoint: the last record of the finished prefix.
    fn checkpoint(&mut self) -> Option<String> {
        let next = self.tracker.committable()?;
        let mut last = None;
        while self.sequences.front().is_some_and(|(c, _)| *c < next) {
            last = self.sequences.pop_front().map(|(_, s)| s);
        }
        last
    }
}

struct ShardAcker {
    state: Mutex<ShardState>,
    health: Health,
    /// Set once the reader stopped and its drain ran out: what is still out is given back.
    given_back: std::sync::atomic::AtomicBool,
}

impl ShardAcker {
    /// Moves `saved` to the end of the finished prefix; true if it moved.
    fn advance(&self, saved: &mut Option<String>) -> bool {
        let next = self.state.lock().unwrap_or_else(|p| p.into_inner()).checkpoint();
        let moved = next.is_some();
        if moved {
            *saved = next;
        }
        moved
    }
}

impl Acker for ShardAcker {
    /// False once the reader stopped and its drain ran out: a record still waiting or retrying is
    /// then given back, not delivered (the next reader delivers it, in order).
    fn is_current(&self, _position: Position) -> bool {
        !self.given_back.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn ack(&self, position: Position, outcome: Outcome) {
        if outcome == Outcome::Abandoned {
            // The handle's drop logged it; the shard checkpoints no further until it is read again.
            self.health.note_abandoned();
        }
        if outcome.is_finished() {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).tracker.finish(position.offset);
        }
    }
}

/// `shardId-000000000003` → 3, for the `event-partition`-like shard index.
fn shard_index(id: &str) -> i32 {
    id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A shard of a stream, by id, and the stream's identity.
struct Shard<'a> {
    id: &'a str,
    stream_id: &'a str,
}

/// Reads one shard until stopped (false) or until it is closed and every record is finished (true).
async fn read_shard(
    client: &Client,
    config: &KinesisSourceConfig,
    Shard { id: shard, stream_id }: Shard<'_>,
    start: Start,
    store: &dyn ShardLeases,
    ctx: &SourceContext,
    stop: &CancellationToken,
) -> Result<bool, Failure> {
    let started_at_ms = match &start {
        Start::Since(ms) => Some(*ms),
        Start::Configured if config.starting_position == StartingPosition::Latest => {
            // Recorded before the iterator is asked for: a reader taking over starts here.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let ms = i64::try_from(now.as_millis()).unwrap_or(i64::MAX);
            let first = ShardCheckpoint {
                sequence: None,
                finished: false,
                started_at_ms: Some(ms),
                stream: Some(stream_id.to_string()),
            };
            save_checkpoint(store, shard, first, ctx).await?;
            Some(ms)
        }
        _ => None,
    };
    let state = Arc::new(ShardAcker {
        state: Mutex::new(ShardState::default()),
        health: ctx.health.clone(),
        given_back: Default::default(),
    });
    let health_key = i64::from(shard_index(shard));
    let acker: Arc<dyn Acker> = state.clone();
    let stream_name: Arc<str> = Arc::from(config.stream.as_str());
    let mut iterator = shard_iterator(client, config, shard, &start).await?;
    let mut last_read: Option<String> = None;
    let mut counter = 0i64;
    let mut interrupted = false;
    let mut capped = false;
    let mut saved: Option<String> = match &start {
        Start::After(s) => Some(s.clone()),
        _ => None,
    };
    let mut last_save = Instant::now();
    // A checkpoint that could not be written is tried again at the next interval.
    let mut unsaved = false;
    let save = |saved: Option<String>, finished: bool| {
        let stream = Some(stream_id.to_string());
        save_checkpoint(store, shard, ShardCheckpoint { sequence: saved, finished, started_at_ms, stream }, ctx)
    };
    // Ok(closed), or why reading failed: either way what was handed out drains before the reader
    // returns, so the next reader never delivers a record this one still has out.
    let outcome: Result<bool, Failure> = loop {
        if stop.is_cancelled() {
            break Ok(false);
        }
        if last_save.elapsed() >= CHECKPOINT_INTERVAL {
            if state.advance(&mut saved) || unsaved {
                match save(saved.clone(), false).await {
                    Ok(done) => unsaved = !done,
                    Err(why) => break Err(why),
                }
            }
            last_save = Instant::now();
        }
        let (span, oldest) = {
            let s = state.state.lock().unwrap_or_else(|p| p.into_inner());
            (s.tracker.span(), s.tracker.oldest_unfinished())
        };
        ctx.health.set_oldest_unfinished(health_key, oldest);
        if span >= config.max_uncommitted {
            // One record unfinished holds back the checkpoint of everything after it: stop reading
            // this shard until the span is back under the limit.
            if !capped {
                warn!(stream = %config.stream, shard, span, limit = config.max_uncommitted, "Shard paused: too many records after its oldest unfinished one.");
                capped = true;
            }
            tokio::select! { () = tokio::time::sleep(CAPPED_RECHECK) => {}, () = stop.cancelled() => {} }
            continue;
        }
        capped = false;
        let called = Instant::now();
        let out = match client.get_records().shard_iterator(&iterator).limit(RECORDS_PER_CALL).send().await {
            Ok(out) => out,
            Err(e) => {
                let service = e.as_service_error();
                if service.is_some_and(|s| s.is_expired_iterator_exception()) {
                    let resume = last_read.clone().map_or(start.clone(), Start::After);
                    match shard_iterator(client, config, shard, &resume).await {
                        Ok(next) => iterator = next,
                        Err(why) => break Err(why),
                    }
                    continue;
                }
                if service.is_some_and(|s| s.is_provisioned_throughput_exceeded_exception()) {
                    warn!(stream = %config.stream, shard, "Throughput exceeded; backing off.");
                    tokio::select! { () = tokio::time::sleep(THROTTLE_BACKOFF) => {}, () = stop.cancelled() => {} }
                    continue;
                }
                break Err(sdk_failure(&format!("GetRecords on {shard}"), &e));
            }
        };
        for r in out.records() {
            counter += 1;
            let seq = r.sequence_number().to_string();
            {
                let mut s = state.state.lock().unwrap_or_else(|p| p.into_inner());
                s.tracker.push(counter);
                s.sequences.push_back((counter, seq.clone()));
            }
            let msg = Message {
                payload: Bytes::copy_from_slice(r.data().as_ref()),
                key: r.partition_key().map(|k| Bytes::copy_from_slice(k.as_bytes())),
                headers: vec![
                    ("event-sequence-number".to_string(), Bytes::from(seq.clone())),
                    ("event-shard-id".to_string(), Bytes::copy_from_slice(shard.as_bytes())),
                ],
                origin: Origin {
                    source: stream_name.clone(),
                    partition: shard_index(shard),
                    // Derived from the sequence number, so event-id is the same on redelivery.
                    offset: sequence_id(&seq),
                    timestamp_ms: r.approximate_arrival_timestamp().and_then(|t| t.to_millis().ok()),
                },
                attempt: 1,
                ack: AckHandle::new(acker.clone(), Position { slot: 0, generation: 0, offset: counter }),
                charge: Default::default(),
            };
            // At its share of the memory budget, the reader waits (no GetRecords meanwhile), as
            // with a full channel. The record is charged once it has room: charged while waiting,
            // it would count against the room it waits for.
            tokio::select! {
                room = async { ctx.budget.room().await; ctx.out.reserve().await } => match room {
                    Ok(permit) => permit.send(msg.charged(&ctx.budget)),
                    Err(_closed) => {
                        // The consumer is gone: like a stop, drain (bounded) what was handed out.
                        state.state.lock().unwrap_or_else(|p| p.into_inner()).unsend(counter);
                        msg.ack.release();
                        stop.cancel();
                        interrupted = true;
                        break;
                    }
                },
                () = stop.cancelled() => {
                    // Never handed out: not outstanding (the drain must not wait for it), and
                    // read again from the checkpoint by the next reader.
                    state.state.lock().unwrap_or_else(|p| p.into_inner()).unsend(counter);
                    msg.ack.release();
                    interrupted = true;
                    break;
                }
            }
            last_read = Some(seq);
        }
        if interrupted {
            // The rest of this batch was never handed out: the shard is not finished, even if
            // this was its last batch.
            break Ok(false);
        }
        match out.next_shard_iterator() {
            Some(next) => iterator = next.to_string(),
            None => break Ok(true),
        }
        let pause = if out.records().is_empty() { config.poll_interval } else { MIN_CALL_INTERVAL };
        let wait = pause.saturating_sub(called.elapsed());
        tokio::select! { () = tokio::time::sleep(wait) => {}, () = stop.cancelled() => {} }
    };
    // Wait for handed-out records: all of them for a closed shard (its children must not start
    // before), bounded by the drain timeout on a stop or a failure. Past it, what is still out is
    // given back rather than delivered: the next reader reads it again from the checkpoint.
    if let Err(why) = &outcome {
        warn!(stream = %config.stream, shard, error = %why, "Reading the shard failed; draining what was handed out before it is read again.");
    }
    let deadline = Instant::now() + config.drain_timeout;
    loop {
        let outstanding = state.state.lock().unwrap_or_else(|p| p.into_inner()).tracker.outstanding();
        if outstanding == 0 {
            break;
        }
        if (stop.is_cancelled() || outcome.is_err()) && Instant::now() >= deadline {
            warn!(stream = %config.stream, shard, outstanding, "Drain timed out; those records are given back and read again by the next reader.");
            state.given_back.store(true, std::sync::atomic::Ordering::Relaxed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctx.health.set_oldest_unfinished(health_key, None);
    let closed = matches!(outcome, Ok(true));
    let finished = closed && state.state.lock().unwrap_or_else(|p| p.into_inner()).tracker.outstanding() == 0;
    if state.advance(&mut saved) || finished || unsaved {
        let saved = save(saved, finished).await;
        // A failure to read is the reason to report; a lost lease while saving is one too.
        outcome.as_ref().map_err(Clone::clone)?;
        saved?;
    }
    outcome.map(|_| finished)
}

/// Saves a shard's checkpoint: true if saved. A checkpoint file that cannot be written (a
/// read-only or full state directory) is not fatal: the file keeps the last good checkpoint,
/// reading and delivery go on, the failure shows in the source's health (`/status`) until a save
/// succeeds, and a restart meanwhile reads again from the last good one. A lost lease, or leases
/// that cannot be reached, stop the reader.
async fn save_checkpoint(
    store: &dyn ShardLeases,
    shard: &str,
    checkpoint: ShardCheckpoint,
    ctx: &SourceContext,
) -> Result<bool, Failure> {
    match store.save(shard, checkpoint).await {
        Ok(()) => {
            ctx.health.note_checkpoint_saved();
            Ok(true)
        }
        Err(e @ CheckpointError::Write { .. }) => {
            warn!(shard, error = %e, "Cannot save the checkpoint; the last good one stays, and reading goes on.");
            ctx.health.note_checkpoint_failed(e.to_string());
            Ok(false)
        }
        Err(e) => Err(Failure::new(Reason::SourceError, e.to_string())),
    }
}

fn sequence_id(seq: &str) -> i64 {
    // FNV-1a: stable across builds, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seq.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h & (i64::MAX as u64)) as i64
}

async fn shard_iterator(
    client: &Client,
    config: &KinesisSourceConfig,
    shard: &str,
    start: &Start,
) -> Result<String, Failure> {
    let mut req = client.get_shard_iterator().stream_name(&config.stream).shard_id(shard);
    req = match start {
        Start::After(seq) => {
            req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
        }
        Start::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        Start::Since(ms) => req
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
        Start::Configured => match config.starting_position {
            StartingPosition::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartingPosition::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartingPosition::AtTimestamp(secs) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs(secs)),
        },
    };
    let out = req.send().await.map_err(|e| sdk_failure(&format!("GetShardIterator on {shard}"), &e))?;
    out.shard_iterator()
        .map(str::to_string)
        .ok_or_else(|| Failure::new(Reason::SourceError, format!("no iterator for shard {shard}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_taken_back_is_neither_outstanding_nor_checkpointed() {
        let mut s = ShardState::default();
        for (c, seq) in [(1, "100"), (2, "105"), (3, "110")] {
            s.tracker.push(c);
            s.sequences.push_back((c, seq.to_string()));
        }
        // A stop arrived while record 3 waited for room in the channel.
        s.unsend(3);
        assert_eq!(s.tracker.outstanding(), 2, "the drain waits for 1 and 2 only");
        s.tracker.finish(1);
        s.tracker.finish(2);
        assert!(s.tracker.is_drained());
        assert_eq!(s.checkpoint(), Some("105".to_string()), "the next reader starts at 110 again");
    }

    #[test]
    fn the_checkpoint_is_the_last_record_of_the_finished_prefix() {
        let mut s = ShardState::default();
        for (c, seq) in [(1, "100"), (2, "105"), (3, "110")] {
            s.tracker.push(c);
            s.sequences.push_back((c, seq.to_string()));
        }
        assert_eq!(s.checkpoint(), None, "nothing finished");
        s.tracker.finish(2);
        assert_eq!(s.checkpoint(), None, "record 1 still out");
        s.tracker.finish(1);
        assert_eq!(s.checkpoint(), Some("105".to_string()));
        s.tracker.finish(3);
        assert_eq!(s.checkpoint(), Some("110".to_string()));
    }

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo { id: id.into(), parents: parents.iter().map(|p| p.to_string()).collect(), closed }
    }

    fn config(start: StartingPosition) -> KinesisSourceConfig {
        KinesisSourceConfig {
            stream: "s".into(),
            region: "us-east-1".into(),
            endpoint: None,
            credentials: None,
            shard: None,
            starting_position: start,
            checkpoint_dir: std::path::PathBuf::new(),
            checkpoint_key: "k".into(),
            legacy_checkpoint_key: None,
            poll_interval: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(1),
            max_uncommitted: 100,
        }
    }

    /// After resharding 2 → 4 (0 → 2,3 and 1 → 4,5), as AWS lists it.
    fn resharded() -> Vec<ShardInfo> {
        vec![
            shard("p0", &[], true),
            shard("p1", &[], true),
            shard("c2", &["p0"], false),
            shard("c3", &["p0"], false),
            shard("c4", &["p1"], false),
            shard("c5", &["p1"], false),
        ]
    }

    #[test]
    fn children_wait_for_their_parents_then_start_at_trim_horizon() {
        let cfg = config(StartingPosition::Latest);
        let checkpoints: std::collections::BTreeMap<String, ShardCheckpoint> =
            [("p0".to_string(), ShardCheckpoint { sequence: Some("10".into()), ..ShardCheckpoint::default() })].into();
        let read: HashSet<String> = ["p0".to_string(), "p1".to_string()].into();
        let mut finished = HashSet::new();
        // Parents still being read: no child may start.
        let running: HashSet<String> = read.clone();
        assert!(plan_readers(&resharded(), &cfg, &checkpoints, &running, &mut finished, &read).is_empty());
        // p0 finished: its children start from their first record; p1's still wait.
        finished.insert("p0".to_string());
        let running: HashSet<String> = ["p1".to_string()].into();
        let plan = plan_readers(&resharded(), &cfg, &checkpoints, &running, &mut finished, &read);
        assert_eq!(plan, vec![("c2".to_string(), Start::TrimHorizon), ("c3".to_string(), Start::TrimHorizon)]);
    }

    #[test]
    fn a_restart_resumes_each_shard_after_its_checkpoint() {
        let cfg = config(StartingPosition::Latest);
        let checkpoints: std::collections::BTreeMap<String, ShardCheckpoint> = [
            (
                "p0".to_string(),
                ShardCheckpoint { sequence: Some("10".into()), finished: true, ..ShardCheckpoint::default() },
            ),
            ("p1".to_string(), ShardCheckpoint { sequence: Some("20".into()), ..ShardCheckpoint::default() }),
        ]
        .into();
        let mut finished: HashSet<String> = ["p0".to_string()].into();
        let read: HashSet<String> = checkpoints.keys().cloned().collect();
        let plan = plan_readers(&resharded(), &cfg, &checkpoints, &HashSet::new(), &mut finished, &read);
        assert_eq!(
            plan,
            vec![
                ("p1".to_string(), Start::After("20".into())),
                ("c2".to_string(), Start::TrimHorizon),
                ("c3".to_string(), Start::TrimHorizon)
            ]
        );
    }

    #[test]
    fn a_new_latest_reader_skips_shards_closed_before_it_and_starts_children_at_latest() {
        let cfg = config(StartingPosition::Latest);
        let mut finished = HashSet::new();
        let none = std::collections::BTreeMap::new();
        let plan = plan_readers(&resharded(), &cfg, &none, &HashSet::new(), &mut finished, &HashSet::new());
        assert!(finished.contains("p0") && finished.contains("p1"), "closed parents are not read");
        // Their children start in the same pass, at the configured position (no history replay).
        assert_eq!(plan.len(), 4);
        assert!(plan.iter().all(|(id, s)| id.starts_with('c') && *s == Start::Configured), "{plan:?}");
    }

    #[test]
    fn shard_index_and_sequence_ids_are_stable() {
        assert_eq!(shard_index("shardId-000000000003"), 3);
        assert_eq!(
            sequence_id("49590338271490256608559692538361571095921575989136588898"),
            sequence_id("49590338271490256608559692538361571095921575989136588898")
        );
        assert_ne!(sequence_id("1"), sequence_id("2"));
    }
}
