//! The Kafka source: one consumer-group member on its own thread.
//!
//! Messages go to the dispatcher through a bounded channel. While it is briefly full the thread
//! waits for room; if it stays full (a slow function) the assigned partitions are paused, so
//! librdkafka stops fetching and memory stays bounded, and the thread keeps polling to serve
//! rebalances. Acknowledgements come back over a channel; the contiguous finished prefix of each
//! partition is stored and auto-committed, and committed synchronously on revocation and shutdown.
//! A partition whose uncommitted span reaches `max_uncommitted` (one message retried forever holds
//! back every later offset) is paused on its own until the span shrinks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubeless_connector::{
    AckHandle, Acker, ConsumerBudget, Failure, Health, Message, Origin, Outcome, PartitionTracker, Position, Reason,
    SourceContext, SourceState,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, error, info, warn};

use crate::KafkaSourceConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("cannot create a Kafka consumer for group {group}: {source}")]
    CreateConsumer {
        group: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot subscribe group {group} to topics {topics:?}: {source}")]
    Subscribe {
        group: String,
        topics: Vec<String>,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot start the consumer thread for group {group}: {source}")]
    SpawnThread {
        group: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the consumer thread for group {group} panicked")]
    ThreadPanicked { group: String },
}

impl KafkaSourceError {
    /// What the consumer's status shows. librdkafka refuses a bad property when the consumer is
    /// created: that waits for the spec to change; the rest is tried again.
    pub fn failure(&self) -> Failure {
        let reason = match self {
            Self::CreateConsumer { .. } => Reason::InvalidConfig,
            Self::Subscribe { source, .. } => reason_of(source),
            Self::SpawnThread { .. } => Reason::SourceError,
            Self::ThreadPanicked { .. } => Reason::Panicked,
        };
        Failure::new(reason, self.to_string())
    }
}

/// The reason a librdkafka error stands for.
pub fn reason_of(err: &KafkaError) -> Reason {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match err.rdkafka_error_code() {
        Some(Code::BrokerTransportFailure | Code::AllBrokersDown | Code::Resolve | Code::NetworkException) => {
            Reason::BrokerUnreachable
        }
        Some(
            Code::Authentication
            | Code::SaslAuthenticationFailed
            | Code::TopicAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::ClusterAuthorizationFailed,
        ) => Reason::NotAuthorized,
        Some(Code::SSL) => Reason::TlsFailed,
        Some(Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition) => Reason::TopicNotFound,
        Some(Code::InvalidArgument) => Reason::InvalidConfig,
        _ => Reason::SourceError,
    }
}

/// How long one `poll` waits for a record; also the longest a rebalance or shutdown waits for us.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long the thread waits for room in the dispatch channel before pausing its partitions.
/// Pausing makes librdkafka drop its prefetch and fetch again on resume, so brief fullness (the
/// normal state when the function is the bottleneck) is waited out instead.
const PAUSE_AFTER: Duration = Duration::from_millis(500);
/// How often finished offsets are handed to librdkafka's offset store. It auto-commits the store
/// every second, and revocation and shutdown commit directly, so storing after every message would
/// only cost an FFI list per record.
const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// How long taking partitions waits to read their committed offsets.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a consumer until `ctx.shutdown` is cancelled or the dispatch channel closes, then drains and
/// commits. Returns once the consumer has left its group.
pub async fn run_source(config: KafkaSourceConfig, ctx: SourceContext) -> Result<(), KafkaSourceError> {
    let runtime = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let group = config.group_id.clone();
    std::thread::Builder::new()
        .name("kafka-source".to_string())
        .spawn(move || {
            let result = consume(config, ctx, runtime);
            // The receiver is gone only if the task awaiting us was dropped; nothing to tell then.
            let _ = done_tx.send(result);
        })
        .map_err(|source| KafkaSourceError::SpawnThread { group: group.clone(), source })?;
    done_rx.await.unwrap_or(Err(KafkaSourceError::ThreadPanicked { group }))
}

fn consume(
    config: KafkaSourceConfig,
    ctx: SourceContext,
    runtime: tokio::runtime::Handle,
) -> Result<(), KafkaSourceError> {
    let (ack_tx, ack_rx) = std_mpsc::channel();
    let live = Arc::new(RwLock::new(HashSet::new()));
    let acker: Arc<dyn Acker> = Arc::new(ChannelAcker { acks: ack_tx, live: live.clone() });
    let shared = Arc::new(Shared {
        group: config.group_id.clone(),
        health: ctx.health.clone(),
        drain_timeout: config.drain_timeout,
        assigned: AtomicBool::new(false),
        rebalancing: AtomicBool::new(false),
        inner: Mutex::new(Inner {
            health: ctx.health.clone(),
            max_uncommitted: config.max_uncommitted.max(1),
            live,
            slots: Vec::new(),
            next_generation: 1,
            acks: ack_rx,
            stash: VecDeque::new(),
            paused: false,
            last_store: Instant::now(),
            unsaved: HashMap::new(),
        }),
    });
    let consumer: BaseConsumer<SourceCtx> = config
        .client_config_within(ctx.budget.share())
        .create_with_context(SourceCtx { shared: shared.clone() })
        .map_err(|source| KafkaSourceError::CreateConsumer {
            group: config.group_id.clone(),
            source: Box::new(source),
        })?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(|source| KafkaSourceError::Subscribe {
        group: config.group_id.clone(),
        topics: config.topics.clone(),
        source: Box::new(source),
    })?;
    info!(group = %config.group_id, topics = ?config.topics, "Kafka consumer subscribed.");

    while !ctx.shutdown.is_cancelled() {
        shared.lock().settle(&consumer);
        if !shared.lock().flush_stash(&ctx.out) {
            break;
        }
        // Nothing more is taken from librdkafka while messages wait in the stash (the channel was
        // full) or while the consumer holds its share of the memory budget: the stash goes out as
        // the channel makes room; new records once the budget does.
        let (stashed, over_budget) = (shared.lock().has_stash(), !ctx.budget.has_room());
        if stashed || over_budget {
            if !shared.lock().paused {
                // Wait for half the channel rather than one slot: waking this thread for every
                // message the dispatcher takes cost more CPU than the message itself.
                let want = (ctx.out.max_capacity() / 2).max(1);
                // The timer must be created inside block_on, where the runtime context exists.
                let room = runtime.block_on(async {
                    tokio::time::timeout(PAUSE_AFTER, async {
                        if !stashed {
                            ctx.budget.room().await;
                        }
                        ctx.out.reserve_many(want).await
                    })
                    .await
                });
                match room {
                    Ok(Ok(mut permits)) => {
                        {
                            let mut inner = shared.lock();
                            while !inner.stash.is_empty() {
                                let Some(permit) = permits.next() else { break };
                                if let Some(msg) = inner.stash.pop_front() {
                                    permit.send(msg);
                                }
                            }
                        }
                        // Fill the rest of the room with what librdkafka has already fetched,
                        // within the memory budget.
                        for permit in permits {
                            if !ctx.budget.has_room() {
                                break;
                            }
                            match consumer.poll(Duration::ZERO) {
                                None => break,
                                Some(Err(err)) => {
                                    shared.report_error(&err);
                                    break;
                                }
                                Some(Ok(record)) => {
                                    if let Some(msg) = shared.lock().track(&record, &acker, &ctx.budget) {
                                        permit.send(msg);
                                    }
                                }
                            }
                        }
                        continue;
                    }
                    Ok(Err(_closed)) => break,
                    Err(_elapsed) => shared.lock().pause(&consumer, true),
                }
            }
        } else if shared.lock().paused {
            shared.lock().pause(&consumer, false);
        }
        // The lock is never held across poll: rebalance callbacks run inside it and take it.
        let polled = consumer.poll(POLL_INTERVAL);
        match polled {
            None => {}
            Some(Err(err)) => shared.report_error(&err),
            Some(Ok(record)) => {
                let mut inner = shared.lock();
                let Some(msg) = inner.track(&record, &acker, &ctx.budget) else { continue };
                if inner.has_stash() {
                    inner.stash.push_back(msg);
                } else {
                    match ctx.out.try_send(msg) {
                        Ok(()) => {}
                        Err(TrySendError::Full(msg)) => inner.stash.push_back(msg),
                        Err(TrySendError::Closed(msg)) => {
                            msg.ack.release();
                            break;
                        }
                    }
                }
            }
        }
    }

    // A stop in the middle of a rebalance (partitions revoked and drained, the new assignment not
    // yet received) lets the rebalance finish before leaving, within the drain timeout: a member
    // leaving mid-join makes the group start its join over, and tansu 0.6 never completes a join
    // whose leader left during it. Nothing polled meanwhile is handed out, so none of it is
    // delivered or committed.
    let deadline = Instant::now() + shared.drain_timeout;
    if shared.rebalancing.load(Ordering::Relaxed) {
        info!(group = %config.group_id, "Kafka consumer stopping during a rebalance: waiting for it to finish before leaving.");
        while shared.rebalancing.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Some(Err(err)) = consumer.poll(POLL_INTERVAL) {
                shared.report_error(&err);
            }
        }
    }
    info!(group = %config.group_id, "Kafka consumer stopping: draining in-flight messages.");
    {
        let mut inner = shared.lock();
        inner.pause(&consumer, true);
        let all: Vec<usize> = (0..inner.slots.len()).collect();
        // One deadline for the whole stop, so it stays within the drain timeout.
        inner.release(&consumer, &all, deadline, &shared.group);
    }
    ctx.health.clear_oldest_unfinished();
    // Dropping the consumer leaves the group; its revoke callback finds nothing left to drain.
    drop(consumer);
    info!(group = %config.group_id, "Kafka consumer stopped.");
    Ok(())
}

struct ChannelAcker {
    acks: std_mpsc::Sender<(Position, Outcome)>,
    /// Generations of the partitions owned now (each assignment of a partition gets a new one).
    /// Read before every delivery attempt, written only on rebalances.
    live: Arc<RwLock<HashSet<u32>>>,
}

impl Acker for ChannelAcker {
    fn ack(&self, position: Position, outcome: Outcome) {
        // The receiver lives as long as the consumer thread; after it is gone there is nothing
        // left to commit, so a failed send is nothing to report.
        let _ = self.acks.send((position, outcome));
    }

    fn is_current(&self, position: Position) -> bool {
        self.live.read().unwrap_or_else(|p| p.into_inner()).contains(&position.generation)
    }
}

struct Shared {
    group: String,
    health: Health,
    drain_timeout: Duration,
    /// Set by the first assignment; errors before it mean "not connected", after it they are
    /// transient and only logged.
    assigned: AtomicBool,
    /// Between a revocation and the assignment that ends its rebalance.
    rebalancing: AtomicBool,
    /// Touched only by the consumer thread (the loop and the callbacks librdkafka runs inside its
    /// `poll`), so it is never contended; the mutex is what lets the callback context be `Sync`.
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means this thread panicked earlier while holding it; the data is still
        // consistent enough to drain and commit, so keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn report_error(&self, err: &KafkaError) {
        warn!(group = %self.group, error = %err, "Kafka consumer error.");
        if !self.assigned.load(Ordering::Relaxed) {
            let detail = format!("Kafka consumer for group {}: {err}", self.group);
            self.health.set(SourceState::Failed(Failure::new(reason_of(err), detail)));
        }
    }
}

/// One owned partition.
struct Slot {
    topic: Arc<str>,
    partition: i32,
    generation: u32,
    tracker: PartitionTracker,
    /// Paused because its uncommitted span reached the limit.
    capped: bool,
}

impl Slot {
    fn tpl(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, self.partition);
        tpl
    }
}

struct Inner {
    health: Health,
    max_uncommitted: usize,
    live: Arc<RwLock<HashSet<u32>>>,
    /// Owned partitions; `Position::slot` indexes this. A revoked partition leaves `None` so the
    /// indices of the others stay valid. Partitions per consumer are few, so lookup is a scan.
    slots: Vec<Option<Slot>>,
    /// Bumped on every assignment so acks for a partition we lost and got back are ignored.
    next_generation: u32,
    acks: std_mpsc::Receiver<(Position, Outcome)>,
    /// Messages taken from librdkafka that the dispatch channel had no room for, in order. At most
    /// what librdkafka had prefetched when the partitions were paused.
    stash: VecDeque<Message>,
    paused: bool,
    last_store: Instant,
    /// Next offsets that were finished when their partition was released but whose commit failed.
    unsaved: HashMap<(Arc<str>, i32), i64>,
}

impl Inner {
    fn has_stash(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Sends stashed messages while the channel has room. False if the channel is closed.
    fn flush_stash(&mut self, out: &tokio::sync::mpsc::Sender<Message>) -> bool {
        while let Some(msg) = self.stash.pop_front() {
            match out.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    self.stash.push_front(msg);
                    return true;
                }
                Err(TrySendError::Closed(msg)) => {
                    msg.ack.release();
                    return false;
                }
            }
        }
        true
    }

    fn apply(&mut self, (position, outcome): (Position, Outcome)) {
        if outcome == Outcome::Abandoned {
            self.health.note_abandoned();
            if let Some(Some(slot)) = self.slots.get(position.slot as usize) {
                error!(
                    topic = %slot.topic, partition = slot.partition, offset = position.offset,
                    "A message was abandoned without an outcome; this partition commits no further until it is read again."
                );
            }
        }
        // Kafka cannot redeliver one record: retries happen in the dispatcher, and an unfinished
        // offset is never committed (read again after a restart or rebalance).
        if !outcome.is_finished() {
            return;
        }
        if let Some(Some(slot)) = self.slots.get_mut(position.slot as usize) {
            if slot.generation == position.generation {
                slot.tracker.finish(position.offset);
            }
        }
    }

    /// Applies every ack that arrived, pauses or resumes partitions at their uncommitted limit, and
    /// stores the offsets that moved.
    fn settle<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        while let Ok(ack) = self.acks.try_recv() {
            self.apply(ack);
        }
        self.cap(consumer);
        if self.last_store.elapsed() < STORE_INTERVAL {
            return;
        }
        self.last_store = Instant::now();
        for (i, slot) in self.slots.iter().enumerate() {
            let since = slot.as_ref().and_then(|s| s.tracker.oldest_unfinished());
            self.health.set_oldest_unfinished(i as i64, since);
        }
        let mut tpl = TopicPartitionList::new();
        for slot in self.slots.iter_mut().flatten() {
            if let Some(next) = slot.tracker.take_commit() {
                // Only fails for a partition name librdkafka rejects, which came from librdkafka.
                let _ = tpl.add_partition_offset(&slot.topic, slot.partition, Offset::Offset(next));
            }
        }
        if tpl.count() > 0 {
            if let Err(err) = consumer.store_offsets(&tpl) {
                debug!(error = %err, "Storing offsets failed (partition no longer assigned?).");
            }
        }
    }

    /// Pauses every partition (the dispatcher is full), or resumes those not at their limit.
    fn pause<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, pause: bool) {
        let result = if pause {
            let Ok(assignment) = consumer.assignment() else { return };
            consumer.pause(&assignment)
        } else {
            let mut tpl = TopicPartitionList::new();
            for slot in self.slots.iter().flatten().filter(|s| !s.capped) {
                tpl.add_partition(&slot.topic, slot.partition);
            }
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => self.paused = pause,
            Err(err) => warn!(error = %err, pause, "Pausing or resuming partitions failed."),
        }
    }

    /// Pauses a partition whose uncommitted span reached the limit, and resumes it once the span
    /// is back under half of it (so it does not flap at the edge).
    fn cap<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
        let (limit, paused) = (self.max_uncommitted, self.paused);
        for slot in self.slots.iter_mut().flatten() {
            let span = slot.tracker.span();
            if !slot.capped && span >= limit {
                match consumer.pause(&slot.tpl()) {
                    Ok(()) => {
                        slot.capped = true;
                        warn!(
                            topic = %slot.topic, partition = slot.partition, span, limit,
                            "Partition paused: too many offsets after its oldest unfinished message."
                        );
                    }
                    Err(err) => warn!(error = %err, "Pausing a partition at its uncommitted limit failed."),
                }
            } else if slot.capped && span <= limit / 2 {
                slot.capped = false;
                info!(topic = %slot.topic, partition = slot.partition, span, "Partition resumed.");
                if !paused {
                    if let Err(err) = consumer.resume(&slot.tpl()) {
                        warn!(error = %err, "Resuming a partition failed.");
                    }
                }
            }
        }
    }

    /// Registers a record as handed out and turns it into a message.
    /// Registers a record as handed out and turns it into a message charged to `budget`.
    fn track(
        &mut self,
        record: &BorrowedMessage<'_>,
        acker: &Arc<dyn Acker>,
        budget: &ConsumerBudget,
    ) -> Option<Message> {
        let (topic, partition, offset) = (record.topic(), record.partition(), record.offset());
        let (idx, slot) =
            self.slots.iter_mut().enumerate().find_map(|(i, s)| {
                s.as_mut().filter(|s| s.partition == partition && &*s.topic == topic).map(|s| (i, s))
            })?;
        slot.tracker.push(offset);
        let position = Position { slot: idx as u32, generation: slot.generation, offset };
        let headers = record
            .headers()
            .map(|hs| {
                hs.iter().map(|h| (h.key.to_string(), Bytes::copy_from_slice(h.value.unwrap_or_default()))).collect()
            })
            .unwrap_or_default();
        Some(
            Message {
                payload: Bytes::copy_from_slice(record.payload().unwrap_or_default()),
                key: record.key().map(Bytes::copy_from_slice),
                headers,
                origin: Origin {
                    source: slot.topic.clone(),
                    partition,
                    offset,
                    timestamp_ms: record.timestamp().to_millis(),
                },
                attempt: 1,
                ack: AckHandle::new(acker.clone(), position),
                charge: Default::default(),
            }
            .charged(budget),
        )
    }

    fn assign(&mut self, tpl: &TopicPartitionList) {
        for elem in tpl.elements() {
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1);
            let slot = Slot {
                topic: Arc::from(elem.topic()),
                partition: elem.partition(),
                generation,
                tracker: PartitionTracker::default(),
                capped: false,
            };
            self.live.write().unwrap_or_else(|p| p.into_inner()).insert(generation);
            match self.slots.iter().position(Option::is_none) {
                Some(free) => self.slots[free] = Some(slot),
                None => self.slots.push(Some(slot)),
            }
        }
        // A new assignment starts unpaused.
        self.paused = false;
    }

    fn slots_of(&self, tpl: &TopicPartitionList) -> Vec<usize> {
        let elems = tpl.elements();
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .filter(|(_, s)| elems.iter().any(|e| e.partition() == s.partition && e.topic() == &*s.topic))
            .map(|(i, _)| i)
            .collect()
    }

    /// Gives up the given slots: drops their stashed messages (never handed out, the next owner
    /// reads them), waits until `deadline` for the rest to finish, commits the finished prefix
    /// synchronously and forgets the slots.
    fn release<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        slots: &[usize],
        deadline: Instant,
        group: &str,
    ) {
        let stash = std::mem::take(&mut self.stash);
        for msg in stash {
            let pos = msg.ack.position();
            if slots.contains(&(pos.slot as usize)) {
                if let Some(Some(slot)) = self.slots.get_mut(pos.slot as usize) {
                    slot.tracker.forget_from(pos.offset);
                }
                msg.ack.release();
            } else {
                self.stash.push_back(msg);
            }
        }
        loop {
            let outstanding: usize =
                slots.iter().filter_map(|&i| self.slots[i].as_ref()).map(|s| s.tracker.outstanding()).sum();
            if outstanding == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                warn!(group, outstanding, "Drain timed out; unfinished messages will be delivered again.");
                break;
            }
            match self.acks.recv_timeout(deadline - now) {
                Ok(ack) => self.apply(ack),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut tpl = TopicPartitionList::new();
        for &i in slots {
            self.health.set_oldest_unfinished(i as i64, None);
            if let Some(slot) = self.slots[i].take() {
                // Whatever of it is still queued or retrying in the dispatcher is dropped there now.
                self.live.write().unwrap_or_else(|p| p.into_inner()).remove(&slot.generation);
                if let Some(next) = slot.tracker.committable() {
                    let _ = tpl.add_partition_offset(&slot.topic, slot.partition, Offset::Offset(next));
                }
            }
        }
        if tpl.count() > 0 {
            // Store them too: librdkafka auto-commits its stored offsets when the partitions go,
            // and an older stored offset would overwrite this commit (and cause redeliveries).
            if let Err(err) = consumer.store_offsets(&tpl) {
                debug!(group, error = %err, "Storing offsets before release failed.");
            }
            let result = consumer.commit(&tpl, CommitMode::Sync);
            for elem in tpl.elements() {
                let key = (Arc::from(elem.topic()), elem.partition());
                match (&result, elem.offset()) {
                    (Err(_), Offset::Offset(next)) => self.unsaved.insert(key, next),
                    _ => self.unsaved.remove(&key),
                };
            }
            match result {
                Ok(()) => info!(group, partitions = tpl.count(), "Committed finished offsets before release."),
                Err(err) => warn!(
                    group, error = %err,
                    "Commit before release failed (the group moved on, or the broker is back without this member); committed when the partition is assigned here again, else delivered again by its next owner."
                ),
            }
        }
    }

    /// Before taking partitions, commits what was delivered of them before a release whose commit
    /// failed (a broker restart ends the member's generation mid-stream): without it, everything
    /// since the last auto-commit would be delivered again. Only ever moves a committed offset
    /// forward, so another member's progress in between is kept.
    fn commit_unsaved<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: &TopicPartitionList,
        group: &str,
    ) {
        if self.unsaved.is_empty() {
            return;
        }
        let mut mine = TopicPartitionList::new();
        for elem in assigned.elements() {
            if let Some(&next) = self.unsaved.get(&(Arc::from(elem.topic()), elem.partition())) {
                let _ = mine.add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(next));
            }
        }
        if mine.count() == 0 {
            return;
        }
        let committed = match consumer.committed_offsets(mine.clone(), COMMITTED_TIMEOUT) {
            Ok(committed) => committed,
            Err(err) => {
                warn!(group, error = %err, "Cannot read committed offsets; what was delivered before the release may be delivered again.");
                return;
            }
        };
        let mut ahead = TopicPartitionList::new();
        for elem in mine.elements() {
            let (Offset::Offset(next), theirs) =
                (elem.offset(), committed.find_partition(elem.topic(), elem.partition()).map(|e| e.offset()))
            else {
                continue;
            };
            if !matches!(theirs, Some(Offset::Offset(c)) if c >= next) {
                let _ = ahead.add_partition_offset(elem.topic(), elem.partition(), Offset::Offset(next));
            }
            self.unsaved.remove(&(Arc::from(elem.topic()), elem.partition()));
        }
        if ahead.count() == 0 {
            return;
        }
        match consumer.commit(&ahead, CommitMode::Sync) {
            Ok(()) => info!(group, partitions = ahead.count(), "Committed offsets delivered before the last release."),
            Err(err) => {
                warn!(group, error = %err, "Committing offsets delivered before the last release failed; they will be delivered again.")
            }
        }
    }
}

struct SourceCtx {
    shared: Arc<Shared>,
}

impl ClientContext for SourceCtx {
    fn stats(&self, statistics: Statistics) {
        let lag = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .sum();
        self.shared.health.set_lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(group = %self.shared.group, error = %error, reason, "Kafka client error.");
        if !self.shared.assigned.load(Ordering::Relaxed) {
            let detail = format!("Kafka group {}: {reason}", self.shared.group);
            self.shared.health.set(SourceState::Failed(Failure::new(reason_of(&error), detail)));
        }
    }
}

impl ConsumerContext for SourceCtx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                self.shared.rebalancing.store(true, Ordering::Relaxed);
                let mut inner = self.shared.lock();
                let slots = inner.slots_of(tpl);
                info!(group = %self.shared.group, partitions = tpl.count(), "Partitions revoked: draining before release.");
                inner.release(consumer, &slots, Instant::now() + self.shared.drain_timeout, &self.shared.group);
            }
            Rebalance::Error(err) => warn!(group = %self.shared.group, error = %err, "Rebalance error."),
            Rebalance::Assign(tpl) => self.shared.lock().commit_unsaved(consumer, tpl, &self.shared.group),
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.lock().assign(tpl);
            self.shared.assigned.store(true, Ordering::Relaxed);
            self.shared.rebalancing.store(false, Ordering::Relaxed);
            self.shared.health.set(SourceState::Ready);
            info!(group = %self.shared.group, partitions = tpl.count(), "Partitions assigned.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner_with_one_partition() -> (Inner, std_mpsc::Sender<(Position, Outcome)>) {
        let (tx, acks) = std_mpsc::channel();
        let mut tracker = PartitionTracker::default();
        tracker.push(5);
        let slot = Slot { topic: Arc::from("t"), partition: 0, generation: 1, tracker, capped: false };
        let inner = Inner {
            health: Health::new(),
            max_uncommitted: 10,
            live: Arc::default(),
            slots: vec![Some(slot)],
            next_generation: 2,
            acks,
            stash: VecDeque::new(),
            paused: false,
            last_store: Instant::now(),
            unsaved: HashMap::new(),
        };
        (inner, tx)
    }

    #[test]
    fn an_abandoned_message_is_counted_and_stays_uncommitted_and_a_released_one_is_not_counted() {
        let (mut inner, _tx) = inner_with_one_partition();
        let pos = Position { slot: 0, generation: 1, offset: 5 };
        inner.apply((pos, Outcome::Released));
        inner.apply((pos, Outcome::Abandoned));
        assert_eq!(inner.health.abandoned(), 1);
        let tracker = &inner.slots[0].as_ref().expect("slot").tracker;
        assert_eq!((tracker.outstanding(), tracker.committable()), (1, None));
        inner.apply((pos, Outcome::Delivered));
        assert_eq!(inner.slots[0].as_ref().expect("slot").tracker.committable(), Some(6));
    }
}
