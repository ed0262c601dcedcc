//! The NATS source: a core queue subscription, or a JetStream durable pull consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt;
use kubeless_connector::{
    AckHandle, Acker, Failure, Health, Message, Origin, Outcome, Position, Reason, SourceContext, SourceState,
};
use tokio::sync::{mpsc, Notify};
use tracing::{info, warn};

use crate::admin::{connect, AdminError};
use crate::config::{durable_name, legacy_durable_name, owned_description, NatsSourceConfig};

#[derive(Debug, thiserror::Error)]
pub enum NatsSourceError {
    #[error(transparent)]
    Connect(#[from] crate::AdminError),
    #[error("cannot subscribe to {subject:?} in queue group {group}: {reason}")]
    Subscribe { subject: String, group: String, reason: String },
    #[error("JetStream stream {stream:?} is not available ({reason}); create it with a subject covering {subject:?}")]
    Stream { stream: String, subject: String, reason: String },
    #[error("cannot bind durable consumer {durable} on stream {stream}: {reason}")]
    Consumer { stream: String, durable: String, reason: String },
    #[error("the subscription to {subject:?} ended: {reason}")]
    Ended { subject: String, reason: String },
}

impl NatsSourceError {
    /// What the consumer's status shows.
    pub fn failure(&self) -> Failure {
        let reason = match self {
            Self::Connect(AdminError::Connect { why, .. }) => *why,
            Self::Connect(AdminError::Request(_)) | Self::Subscribe { .. } | Self::Consumer { .. } => {
                Reason::SourceError
            }
            Self::Stream { .. } => Reason::StreamNotFound,
            Self::Ended { .. } => Reason::SourceStopped,
        };
        Failure::new(reason, self.to_string())
    }
}

/// Messages pulled from JetStream per request: a small batch keeps the prefetch (and memory) small.
const MAX_BATCH: i64 = 256;

/// Runs until `ctx.shutdown` (then waits, bounded, for handed-out messages to be acknowledged).
pub async fn run_source(config: NatsSourceConfig, ctx: SourceContext) -> Result<(), NatsSourceError> {
    let client = connect(&config.url, &config.auth, config.tls, config.ca_pem.as_deref()).await?;
    let result = match config.jetstream_stream.clone() {
        None => core(&client, &config, &ctx).await,
        Some(stream) => jetstream_consumer(&client, &stream, &config, &ctx).await,
    };
    // Acks are publishes: make sure they reached the server before the connection goes.
    let _ = client.flush().await;
    result
}

/// Core NATS: at-most-once by nature. While the dispatcher is full the subscription is not read;
/// the client buffers, and past its capacity the server drops messages for this slow consumer.
async fn core(
    client: &async_nats::Client,
    config: &NatsSourceConfig,
    ctx: &SourceContext,
) -> Result<(), NatsSourceError> {
    let mut sub = client.queue_subscribe(config.subject.clone(), config.group.clone()).await.map_err(|e| {
        NatsSourceError::Subscribe {
            subject: config.subject.clone(),
            group: config.group.clone(),
            reason: e.to_string(),
        }
    })?;
    ctx.health.set(SourceState::Ready);
    info!(subject = %config.subject, group = %config.group, "NATS queue subscription made.");
    // Core NATS has no sequence: number messages from the start time so event-ids stay unique.
    let mut seq = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    loop {
        // At its share of the memory budget, the subscription is not read (as with a full channel).
        let next = tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            m = async { ctx.budget.room().await; sub.next().await } => m,
        };
        let Some(m) = next else {
            return Err(NatsSourceError::Ended { subject: config.subject.clone(), reason: "connection closed".into() });
        };
        seq += 1;
        let msg = Message {
            headers: headers_of(m.headers.as_ref()),
            payload: m.payload,
            key: None,
            origin: Origin { source: Arc::from(m.subject.as_str()), partition: 0, offset: seq, timestamp_ms: None },
            attempt: 1,
            ack: AckHandle::detached(),
            charge: Default::default(),
        }
        .charged(&ctx.budget);
        if ctx.out.send(msg).await.is_err() {
            break;
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(())
}

fn headers_of(h: Option<&async_nats::HeaderMap>) -> Vec<(String, Bytes)> {
    h.map(|h| {
        h.iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), Bytes::copy_from_slice(v.as_str().as_bytes()))))
            .collect()
    })
    .unwrap_or_default()
}

/// Messages handed out and not yet acknowledged, by a local id: a stop waits for them, and while
/// they are out their ack deadline is pushed back (`+WPI`), so the server never redelivers a message
/// this consumer still holds — queued behind its lane, or retried in place to keep its order.
#[derive(Default)]
struct Outstanding {
    replies: Mutex<HashMap<u64, Subject>>,
    next_id: AtomicU64,
    zero: Notify,
}

impl Outstanding {
    fn add(&self, reply: Subject) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, reply);
        id
    }

    fn take(&self, id: u64) -> Option<Subject> {
        let mut replies = self.lock();
        let reply = replies.remove(&id);
        if replies.is_empty() {
            self.zero.notify_waiters();
        }
        reply
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    fn held(&self) -> Vec<Subject> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subject>> {
        self.replies.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ack of one JetStream message: `+ACK` when finished, `-NAK` with a delay to have the server
/// redeliver it later (retries), `-NAK` at once when given back unfinished.
struct JsAck {
    id: u64,
    acks: mpsc::UnboundedSender<(Subject, AckKind)>,
    outstanding: Arc<Outstanding>,
    health: Health,
}

impl Acker for JsAck {
    fn ack(&self, _position: Position, outcome: Outcome) {
        let Some(reply) = self.outstanding.take(self.id) else { return };
        let kind = match outcome {
            Outcome::Delivered | Outcome::DeadLettered => AckKind::Ack,
            Outcome::Redeliver { after } => AckKind::Nak(Some(after)),
            Outcome::Released => AckKind::Nak(None),
            Outcome::Abandoned => {
                self.health.note_abandoned();
                AckKind::Nak(None)
            }
        };
        // If the consumer is gone the server redelivers after ack_wait.
        let _ = self.acks.send((reply, kind));
    }
}

/// Publishes acks in the order deliveries finish, and every `heartbeat` a progress ack for each
/// message still held. One task for the consumer rather than one per ack: an ack is a single
/// publish to the message's reply subject, cheaper than spawning a task. The queue holds at most
/// `max_ack_pending` acks, as the server hands out no more than that.
async fn publish_acks(
    client: async_nats::Client,
    mut acks: mpsc::UnboundedReceiver<(Subject, AckKind)>,
    outstanding: Arc<Outstanding>,
    heartbeat: Duration,
) {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        let (reply, kind) = tokio::select! {
            next = acks.recv() => match next {
                Some(ack) => ack,
                None => break,
            },
            _ = beat.tick() => {
                for reply in outstanding.held() {
                    if let Err(e) = client.publish(reply, AckKind::Progress.into()).await {
                        warn!(error = %e, "JetStream progress ack failed; the server may redeliver a held message.");
                    }
                }
                continue;
            }
        };
        if let Err(e) = client.publish(reply, kind.into()).await {
            warn!(error = %e, "JetStream ack failed; the server will redeliver the message.");
        }
    }
}

/// Creates the durable, or updates it to this configuration: after a timeout or `maxInFlight` edit
/// the server must not keep the old `ack_wait` (redelivering messages still in progress) or the old
/// `max_ack_pending`. What cannot be updated is kept as the server has it (where it starts).
///
/// A durable an earlier version made under its ambiguous name (see [`legacy_durable_name`]) for the
/// same subject, and not yet claimed by another trigger, is kept under that name and claimed (its
/// description names this trigger): it goes on where it stopped, replicas of both versions share
/// it during a rollout, and a WorkQueue stream never holds two durables for one subject.
/// Returns the consumer and the name it has.
async fn bind_durable(
    stream: &jetstream::stream::Stream,
    durable: &str,
    config: &NatsSourceConfig,
) -> Result<(jetstream::consumer::Consumer<pull::Config>, String), String> {
    let not_found = |e: &jetstream::context::ConsumerInfoError| {
        matches!(e.kind(), jetstream::context::ConsumerInfoErrorKind::NotFound)
    };
    let description = owned_description(&config.owner);
    let mut name = durable.to_string();
    let existing = match stream.consumer_info(durable).await {
        Ok(info) => Some(info),
        Err(e) if not_found(&e) => {
            let legacy = legacy_durable_name(&config.group);
            match stream.consumer_info(&legacy).await {
                Ok(old)
                    if legacy != durable
                        && old.config.filter_subject == config.subject
                        && old.config.description.as_deref().is_none_or(|d| d == description) =>
                {
                    name = legacy;
                    Some(old)
                }
                Ok(_) => None,
                Err(e) if not_found(&e) => None,
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(e) => return Err(e.to_string()),
    };
    let wanted = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(description),
        filter_subject: config.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_ack_pending: config.max_ack_pending,
        deliver_policy: existing.map(|info| info.config.deliver_policy).unwrap_or_default(),
        ..Default::default()
    };
    let consumer = stream.create_consumer(wanted).await.map_err(|e| e.to_string())?;
    if name != durable {
        info!(durable = %name, "Went on with the durable an earlier version made for this trigger.");
    }
    Ok((consumer, name))
}

async fn jetstream_consumer(
    client: &async_nats::Client,
    stream_name: &str,
    config: &NatsSourceConfig,
    ctx: &SourceContext,
) -> Result<(), NatsSourceError> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(stream_name).await.map_err(|e| NatsSourceError::Stream {
        stream: stream_name.to_string(),
        subject: config.subject.clone(),
        reason: e.to_string(),
    })?;
    let consumer_err = |durable: &str, reason: String| NatsSourceError::Consumer {
        stream: stream_name.to_string(),
        durable: durable.to_string(),
        reason,
    };
    let (bound, durable) = bind_durable(&stream, &durable_name(&config.group), config)
        .await
        .map_err(|e| consumer_err(&durable_name(&config.group), e))?;
    let consumer: pull::Stream = bound
        .stream()
        .max_messages_per_batch(config.max_ack_pending.clamp(1, MAX_BATCH) as usize)
        .messages()
        .await
        .map_err(|e| consumer_err(&durable, e.to_string()))?;
    let mut messages = consumer;
    ctx.health.set(SourceState::Ready);
    info!(stream = stream_name, durable = %durable, subject = %config.subject, "JetStream durable consumer bound.");
    let outstanding = Arc::new(Outstanding::default());
    let (acks, ack_queue) = mpsc::unbounded_channel();
    // Well inside ack_wait, so a lost progress ack or two does not cost a redelivery.
    let heartbeat = (config.ack_wait / 3).max(Duration::from_millis(100));
    let publisher = tokio::spawn(publish_acks(client.clone(), ack_queue, outstanding.clone(), heartbeat));
    // Messages of one subject share its name rather than allocating it per message.
    let mut source: Arc<str> = Arc::from(config.subject.as_str());
    let result = loop {
        // At its share of the memory budget, nothing more is pulled (as with a full channel).
        let next = tokio::select! {
            () = ctx.shutdown.cancelled() => break Ok(()),
            m = async { ctx.budget.room().await; messages.next().await } => m,
        };
        let m = match next {
            None => {
                break Err(NatsSourceError::Ended { subject: config.subject.clone(), reason: "stream closed".into() })
            }
            Some(Err(e)) => {
                warn!(durable = %durable, error = %e, "JetStream pull error; continuing.");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let (seq, delivered, published_ms) = match m.info() {
            Ok(i) => (i.stream_sequence as i64, i.delivered, (i.published.unix_timestamp_nanos() / 1_000_000) as i64),
            Err(_) => (0, 1, 0),
        };
        let m = m.message;
        if *source != *m.subject.as_str() {
            source = Arc::from(m.subject.as_str());
        }
        let Some(reply) = m.reply else {
            warn!(durable = %durable, sequence = seq, "JetStream message without a reply subject; skipped.");
            continue;
        };
        let id = outstanding.add(reply);
        let ack =
            Arc::new(JsAck { id, acks: acks.clone(), outstanding: outstanding.clone(), health: ctx.health.clone() });
        let msg = Message {
            headers: headers_of(m.headers.as_ref()),
            payload: m.payload,
            key: None,
            origin: Origin {
                source: source.clone(),
                partition: 0,
                offset: seq,
                timestamp_ms: (published_ms > 0).then_some(published_ms),
            },
            attempt: u32::try_from(delivered).unwrap_or(1).max(1),
            ack: AckHandle::new(ack, Position { slot: 0, generation: 0, offset: seq }),
            charge: Default::default(),
        }
        .charged(&ctx.budget);
        if let Err(unsent) = ctx.out.send(msg).await {
            unsent.0.ack.release();
            break Ok(());
        }
    };
    // Stop pulling; what was prefetched but never handed out is redelivered by the server.
    drop(messages);
    let deadline = Instant::now() + config.drain_timeout;
    while outstanding.count() > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            warn!(durable = %durable, outstanding = outstanding.count(), "Drain timed out; the server will redeliver the rest.");
            break;
        }
        let notified = outstanding.zero.notified();
        if outstanding.count() == 0 {
            break;
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
    }
    // Acks still queued go out before the connection is flushed and closed; a delivery still
    // running past the drain timeout is aborted by the caller, which drops its ack.
    drop(acks);
    let _ = tokio::time::timeout(Duration::from_secs(1), publisher).await;
    result
}
