//! Dispatch for one consumer: takes messages from the source's bounded channel and runs their
//! deliveries with an ordering guarantee and a bound on what is in flight.
//!
//! Ordering lanes: a message whose lane (its key, or its partition) already has a delivery running
//! waits behind it; other lanes proceed in parallel. At most `max_in_flight` deliveries run, and at
//! most `max_waiting` messages wait behind busy lanes; beyond either, the dispatcher stops reading
//! its channel, the channel fills, and the source pauses. Memory is bounded by configuration, never
//! by the backlog.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use kubeless_connector::Message;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub mod consumer;

use crate::delivery::Deliverer;
use crate::resources::Ordering;

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
        max_in_flight: usize,
    ) -> Self {
        let abort = CancellationToken::new();
        let task = tokio::spawn(run(input, deliverer, ordering, max_in_flight, abort.clone()));
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
    max_in_flight: usize,
    abort: CancellationToken,
) {
    let max_in_flight = max_in_flight.max(1);
    let max_waiting = max_in_flight * WAITING_PER_SLOT;
    let mut running: JoinSet<Option<Lane>> = JoinSet::new();
    // A lane is present while a delivery of it runs; its queue holds the messages waiting behind.
    let mut busy: HashMap<Lane, VecDeque<Message>> = HashMap::new();
    let mut waiting = 0usize;
    let mut input_open = true;

    let spawn = |running: &mut JoinSet<Option<Lane>>, msg: Message, lane: Option<Lane>| {
        let deliverer = deliverer.clone();
        let abort = abort.clone();
        running.spawn(async move {
            // A panic is a bug, but it must not wedge the lane: the message stays unacknowledged
            // (delivered again after a restart) and the messages behind it keep flowing.
            if AssertUnwindSafe(deliverer.deliver(msg, &abort)).catch_unwind().await.is_err() {
                tracing::error!("A delivery panicked; its message stays uncommitted.");
            }
            lane
        });
    };

    loop {
        if !input_open && running.is_empty() {
            break;
        }
        let can_take = input_open && running.len() < max_in_flight && waiting < max_waiting;
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
            msg = input.recv(), if can_take => match msg {
                None => input_open = false,
                Some(msg) => {
                    deliverer.metrics().received.increment(1);
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
