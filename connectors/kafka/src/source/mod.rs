//! The Kafka source: one consumer-group member on its own thread.
//!
//! Messages go to the dispatcher through a bounded channel. While it is briefly full the thread
//! waits for room; if it stays full (a slow function) the assigned partitions are paused, so
//! librdkafka stops fetching and memory stays bounded, and the thread keeps polling to serve
//! rebalances. Acknowledgements come back over a channel; the contiguous finished prefix of each
//! partition is stored and auto-committed, and committed synchronously on revocation and shutdown.
//! A partition whose uncommitted span reaches `max_uncommitted` (one message retried forever holds
//! back every later offset) is paused on its own until the span shrinks.

mod context;
mod shared;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kubeless_connector::{Acker, Failure, Reason, SourceContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio::sync::mpsc::error::TrySendError;
use tracing::info;

use self::context::SourceCtx;
use self::shared::{ChannelAcker, Inner, Shared};
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
    /// What the consumer's status shows. A property librdkafka refuses waits for the spec to
    /// change; everything else is tried again, creation included (it also fails for passing
    /// reasons: no thread to spare, a certificate file not there yet).
    pub fn failure(&self) -> Failure {
        let reason = match self {
            Self::CreateConsumer { source, .. } => creation_reason(source),
            // librdkafka's subscription errors carry no code: nothing finer to say.
            Self::Subscribe { .. } | Self::SpawnThread { .. } => Reason::SourceError,
            Self::ThreadPanicked { .. } => Reason::Panicked,
        };
        Failure::new(reason, self.to_string())
    }
}

/// Why creating a librdkafka client failed: a property it refuses is the configuration's fault
/// (permanent); `rd_kafka_new` failing otherwise (threads, files it loads) may pass.
pub fn creation_reason(err: &KafkaError) -> Reason {
    match err {
        KafkaError::ClientConfig(..) => Reason::InvalidConfig,
        _ => Reason::SourceError,
    }
}

/// The reason an error of a running librdkafka client stands for.
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
        _ => Reason::SourceError,
    }
}

/// How long one `poll` waits for a record; also the longest a rebalance or shutdown waits for us.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long the thread waits for room in the dispatch channel before pausing its partitions.
/// Pausing makes librdkafka drop its prefetch and fetch again on resume, so brief fullness (the
/// normal state when the function is the bottleneck) is waited out instead.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

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
