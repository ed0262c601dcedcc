//! One shard's reader: `GetRecords` until stopped or the shard is closed, records handed out in
//! order, and the checkpoint moved to the end of the finished prefix.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use kubeless_connector::{
    AckHandle, Acker, Failure, Health, Message, Origin, Outcome, PartitionTracker, Position, Reason, SourceContext,
};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::plan::Start;
use super::sdk_failure;
use crate::checkpoint::{CheckpointError, ShardCheckpoint, ShardLeases};
use crate::config::{KinesisSourceConfig, StartingPosition};

/// Records per `GetRecords` call: one call's worth stays small in memory.
const RECORDS_PER_CALL: i32 = 500;
/// Kinesis allows 5 `GetRecords` per second per shard; a busy shard is read at most this often.
const MIN_CALL_INTERVAL: Duration = Duration::from_millis(200);
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);
/// Checkpoints are written at most this often while reading, and always at the end.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How often a shard paused at its uncommitted limit looks again.
const CAPPED_RECHECK: Duration = Duration::from_millis(100);

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
pub(super) struct Shard<'a> {
    pub(super) id: &'a str,
    pub(super) stream_id: &'a str,
}

/// Reads one shard until stopped (false) or until it is closed and every record is finished (true).
pub(super) async fn read_shard(
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
