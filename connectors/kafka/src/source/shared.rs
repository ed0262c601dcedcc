//! The consumer thread's state: the partitions it owns with their trackers, the messages waiting
//! for room in the dispatch channel, and the acker that brings outcomes back to the thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubeless_connector::{
    AckHandle, Acker, ConsumerBudget, Failure, Health, Message, Origin, Outcome, PartitionTracker, Position,
    SourceState,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, error, info, warn};

use super::reason_of;

/// How often finished offsets are handed to librdkafka's offset store. It auto-commits the store
/// every second, and revocation and shutdown commit directly, so storing after every message would
/// only cost an FFI list per record.
const STORE_INTERVAL: Duration = Duration::from_millis(100);
/// How long taking partitions waits to read their committed offsets.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct ChannelAcker {
    pub(super) acks: std_mpsc::Sender<(Position, Outcome)>,
    /// Generations of the partitions owned now (each assignment of a partition gets a new one).
    /// Read before every delivery attempt, written only on rebalances.
    pub(super) live: Arc<RwLock<HashSet<u32>>>,
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

pub(super) struct Shared {
    pub(super) group: String,
    pub(super) health: Health,
    pub(super) drain_timeout: Duration,
    /// Set by the first assignment; errors before it mean "not connected", after it they are
    /// transient and only logged.
    pub(super) assigned: AtomicBool,
    /// Between a revocation and the assignment that ends its rebalance.
    pub(super) rebalancing: AtomicBool,
    /// Touched only by the consumer thread (the loop and the callbacks librdkafka runs inside its
    /// `poll`), so it is never contended; the mutex is what lets the callback context be `Sync`.
    pub(super) inner: Mutex<Inner>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means this thread panicked earlier while holding it; the data is still
        // consistent enough to drain and commit, so keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn report_error(&self, err: &KafkaError) {
        warn!(group = %self.group, error = %err, "Kafka consumer error.");
        if !self.assigned.load(Ordering::Relaxed) {
            let detail = format!("Kafka consumer for group {}: {err}", self.group);
            self.health.set(SourceState::Failed(Failure::new(reason_of(err), detail)));
        }
    }
}

/// One owned partition.
pub(super) struct Slot {
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

pub(super) struct Inner {
    pub(super) health: Health,
    pub(super) max_uncommitted: usize,
    pub(super) live: Arc<RwLock<HashSet<u32>>>,
    /// Owned partitions; `Position::slot` indexes this. A revoked partition leaves `None` so the
    /// indices of the others stay valid. Partitions per consumer are few, so lookup is a scan.
    pub(super) slots: Vec<Option<Slot>>,
    /// Bumped on every assignment so acks for a partition we lost and got back are ignored.
    pub(super) next_generation: u32,
    pub(super) acks: std_mpsc::Receiver<(Position, Outcome)>,
    /// Messages taken from librdkafka that the dispatch channel had no room for, in order. At most
    /// what librdkafka had prefetched when the partitions were paused.
    pub(super) stash: VecDeque<Message>,
    pub(super) paused: bool,
    pub(super) last_store: Instant,
    /// Next offsets that were finished when their partition was released but whose commit failed.
    pub(super) unsaved: HashMap<(Arc<str>, i32), i64>,
}

impl Inner {
    pub(super) fn has_stash(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Sends stashed messages while the channel has room. False if the channel is closed.
    pub(super) fn flush_stash(&mut self, out: &tokio::sync::mpsc::Sender<Message>) -> bool {
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
    pub(super) fn settle<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) {
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
    pub(super) fn pause<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>, pause: bool) {
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
    pub(super) fn track(
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

    pub(super) fn assign(&mut self, tpl: &TopicPartitionList) {
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

    pub(super) fn slots_of(&self, tpl: &TopicPartitionList) -> Vec<usize> {
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
    pub(super) fn release<C: ConsumerContext>(
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
    pub(super) fn commit_unsaved<C: ConsumerContext>(
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
