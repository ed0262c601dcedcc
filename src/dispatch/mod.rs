//! Dispatch for one consumer: takes messages from the source's bounded channel and runs their
//! deliveries with an ordering guarantee and a bound on what is in flight.
//!
//! Ordering lanes: a message whose lane (its key, or its partition) already has a delivery running
//! waits behind it; other lanes proceed in parallel. At most `max_in_flight` deliveries run, and at
//! most `max_waiting` messages wait behind busy lanes; beyond either, the dispatcher stops reading
//! its channel, the channel fills, and the source pauses. Memory is bounded by configuration, never
//! by the backlog.
//!
//! Messages waiting behind a lane whose delivery is being **retried** (a poisoned key) do not count
//! towards `max_waiting` where the source bounds each partition itself (Kafka and Kinesis pause a
//! partition at `maxUncommitted` offsets from its oldest unfinished one; JetStream hands out at most
//! `max_ack_pending`): one failing key then holds back only its own partition, which its source
//! pauses at that bound, while the other partitions keep flowing.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use kubeless_connector::Message;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod consumer;

use crate::delivery::Deliverer;
use crate::resources::Ordering;
use crate::telemetry::events::{DeliveryPanicked, Received};

/// The lane a message must keep order within.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane {
    Key(Arc<str>, Bytes),
    Partition(Arc<str>, i32),
}

fn lane_of(ordering: Ordering, msg: &Message) -> Option<Lane> {
    match ordering {
        Ordering::None => None,
        Ordering::Partition => Some(Lane::Partition(msg.origin.source.clone(), msg.origin.partition)),
        Ordering::Key => msg.key.clone().map(|k| Lane::Key(msg.origin.source.clone(), k)),
    }
}

/// Messages allowed to wait behind busy lanes, per in-flight slot. Enough that one hot key does
/// not stall intake for the other keys at once, small enough to stay a fixed multiple of the
/// configured bound.
const WAITING_PER_SLOT: usize = 4;

/// How much one dispatcher holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Deliveries running at once.
    pub in_flight: usize,
    /// Whether the source bounds what each partition has outstanding (so messages behind a
    /// retried lane need no bound here).
    pub source_bounds_partitions: bool,
}

impl From<usize> for Bounds {
    /// `in_flight` deliveries at once, from a source that bounds nothing per partition.
    fn from(in_flight: usize) -> Self {
        Self { in_flight, source_bounds_partitions: false }
    }
}

/// Lanes whose running delivery is between attempts (a key failing), set and cleared by the
/// deliveries themselves: nothing is allocated or locked for a delivery that needs no retry.
#[derive(Default)]
struct Retrying {
    lanes: std::sync::Mutex<HashSet<Lane>>,
    /// Woken when a lane starts retrying, so a dispatcher stopped at `max_waiting` looks again.
    started: Notify,
}

impl Retrying {
    fn lanes(&self) -> std::sync::MutexGuard<'_, HashSet<Lane>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waiting messages that count towards `max_waiting`: all of them, less those behind a retried
/// lane when the source bounds its partitions. Only looked at when the total is at the bound.
fn counted_waiting(
    busy: &HashMap<Lane, VecDeque<Message>>,
    waiting: usize,
    retrying: &Retrying,
    source_bounds_partitions: bool,
) -> usize {
    if !source_bounds_partitions {
        return waiting;
    }
    let held: usize = retrying.lanes().iter().filter_map(|lane| busy.get(lane)).map(VecDeque::len).sum();
    waiting.saturating_sub(held)
}

/// A dispatcher running in its own task. Dropping this (with whatever owned it: a consumer task
/// aborted after its stop grace ran out) stops its deliveries and retries too: an abandoned consumer
/// must not keep calling the function with messages its source can no longer commit.
pub struct Dispatcher {
    task: tokio::task::JoinHandle<()>,
    abort: tokio_util::sync::DropGuard,
}

impl Dispatcher {
    pub fn spawn(
        input: mpsc::Receiver<Message>,
        deliverer: Arc<Deliverer>,
        ordering: Ordering,
        bounds: impl Into<Bounds>,
    ) -> Self {
        let abort = CancellationToken::new();
        let task = tokio::spawn(run(input, deliverer, ordering, bounds.into(), abort.clone()));
        Self { task, abort: abort.drop_guard() }
    }

    /// Stops what still runs (each message released unfinished, so delivered again) and waits for
    /// the task.
    pub async fn abort(self) {
        let Self { task, abort } = self;
        drop(abort);
        let _ = task.await;
    }
}

/// Runs until `input` closes and every delivery finished, or until `abort` (remaining deliveries are
/// dropped unacknowledged, to be delivered again).
pub async fn run(
    mut input: mpsc::Receiver<Message>,
    deliverer: Arc<Deliverer>,
    ordering: Ordering,
    bounds: impl Into<Bounds> + Send,
    abort: CancellationToken,
) {
    let bounds = bounds.into();
    let max_in_flight = bounds.in_flight.max(1);
    let max_waiting = max_in_flight * WAITING_PER_SLOT;
    let mut running: JoinSet<Option<Lane>> = JoinSet::new();
    // A lane is present while a delivery of it runs; its queue holds the messages waiting behind.
    let mut busy: HashMap<Lane, VecDeque<Message>> = HashMap::new();
    let mut waiting = 0usize;
    let mut input_open = true;
    let retrying = Arc::new(Retrying::default());

    let spawn = |running: &mut JoinSet<Option<Lane>>, msg: Message, lane: Option<Lane>| {
        let (deliverer, abort, retrying) = (deliverer.clone(), abort.clone(), retrying.clone());
        running.spawn(async move {
            let retried = AtomicBool::new(false);
            let noted = || {
                if let Some(lane) = &lane {
                    if !retried.swap(true, AtomicOrdering::Relaxed) {
                        retrying.lanes().insert(lane.clone());
                        retrying.started.notify_one();
                    }
                }
            };
            // A panic is a bug, but it must not wedge the lane: the message stays unacknowledged
            // (delivered again after a restart) and the messages behind it keep flowing.
            let delivery = deliverer.deliver_noting_retries(msg, &abort, &noted);
            if AssertUnwindSafe(delivery).catch_unwind().await.is_err() {
                let (trigger, function) = deliverer.consumer();
                deliverer.emit(DeliveryPanicked { trigger, function });
            }
            if let Some(lane) = lane.as_ref().filter(|_| retried.load(AtomicOrdering::Relaxed)) {
                retrying.lanes().remove(lane);
            }
            lane
        });
    };

    loop {
        if !input_open && running.is_empty() {
            break;
        }
        let room = waiting < max_waiting
            || counted_waiting(&busy, waiting, &retrying, bounds.source_bounds_partitions) < max_waiting;
        let can_take = input_open && running.len() < max_in_flight && room;
        let stalled = input_open && !room;
        tokio::select! {
            biased;
            () = abort.cancelled() => {
                release_all(input, running, busy).await;
                return;
            }
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok(Some(lane)) = done else { continue };
                if let Entry::Occupied(mut queue) = busy.entry(lane) {
                    match queue.get_mut().pop_front() {
                        Some(next) => {
                            waiting -= 1;
                            let lane = queue.key().clone();
                            spawn(&mut running, next, Some(lane));
                        }
                        None => {
                            queue.remove();
                        }
                    }
                }
            }
            () = retrying.started.notified(), if stalled => {}
            msg = input.recv(), if can_take => match msg {
                None => input_open = false,
                Some(msg) => {
                    deliverer.emit(Received);
                    match lane_of(ordering, &msg) {
                        None => spawn(&mut running, msg, None),
                        Some(lane) => match busy.entry(lane) {
                            Entry::Occupied(mut queue) => {
                                queue.get_mut().push_back(msg);
                                waiting += 1;
                            }
                            Entry::Vacant(slot) => {
                                let lane = slot.key().clone();
                                slot.insert(VecDeque::new());
                                spawn(&mut running, msg, Some(lane));
                            }
                        },
                    }
                }
            },
        }
    }
}

/// How long an aborted dispatcher waits for its deliveries to give their messages back (each
/// returns at its next await, so this is only reached by a delivery stuck outside one).
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Gives every message back unfinished: running deliveries release theirs on seeing the abort,
/// and the waiting and not yet read ones are released here, so none is reported abandoned.
async fn release_all(
    mut input: mpsc::Receiver<Message>,
    mut running: JoinSet<Option<Lane>>,
    busy: HashMap<Lane, VecDeque<Message>>,
) {
    input.close();
    while let Ok(msg) = input.try_recv() {
        msg.ack.release();
    }
    for msg in busy.into_values().flatten() {
        msg.ack.release();
    }
    let drained = tokio::time::timeout(RELEASE_GRACE, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        running.abort_all();
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
