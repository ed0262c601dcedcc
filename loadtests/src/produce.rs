//! The load generator: `count` stamped messages of `size` bytes over `keys` keys to a Kafka topic,
//! a NATS JetStream subject or a Kinesis stream, flat out or at `rate` messages per second.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::payload;

#[derive(Debug, Clone)]
pub enum Target {
    Kafka { brokers: String, topic: String },
    Nats { url: String, subject: String },
    Kinesis { endpoint: String, stream: String },
}

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub count: u64,
    /// Messages per second; `None` is flat out.
    pub rate: Option<f64>,
    pub size: usize,
    pub keys: u64,
}

/// How long to wait before sending message `i` so that `rate` per second holds from `start`.
fn wait_before(start: Instant, i: u64, rate: Option<f64>) -> Option<Duration> {
    let due = start + Duration::from_secs_f64(i as f64 / rate?);
    due.checked_duration_since(Instant::now()).filter(|d| *d > Duration::from_micros(200))
}

/// Sends the load; returns the achieved send rate (messages per second).
pub async fn produce(target: &Target, load: Load) -> anyhow::Result<f64> {
    let start = Instant::now();
    match target {
        Target::Kafka { brokers, topic } => {
            let (brokers, topic) = (brokers.clone(), topic.clone());
            tokio::task::spawn_blocking(move || kafka(&brokers, &topic, load)).await??
        }
        Target::Nats { url, subject } => nats(url, subject, load).await?,
        Target::Kinesis { endpoint, stream } => kinesis(endpoint, stream, load).await?,
    }
    Ok(load.count as f64 / start.elapsed().as_secs_f64())
}

fn kafka(brokers: &str, topic: &str, load: Load) -> anyhow::Result<()> {
    // Flat out: batch for throughput. At a set rate: batch for at most 1 ms, so latency stays the broker's.
    let linger = if load.rate.is_some() { "1" } else { "5" };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("client.id", "kubeless-loadgen")
        .set("linger.ms", linger)
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("acks", "1")
        .create()
        .with_context(|| format!("Kafka producer for {brokers}"))?;
    let start = Instant::now();
    for i in 0..load.count {
        if let Some(wait) = wait_before(start, i, load.rate) {
            std::thread::sleep(wait);
        }
        let key = payload::key(i, load.keys);
        let body = payload::stamped(load.size);
        loop {
            match producer.send(BaseRecord::to(topic).key(&key).payload(&body)) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(e).with_context(|| format!("producing to {topic}")),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).with_context(|| format!("flushing to {topic}"))?;
    Ok(())
}

async fn nats(url: &str, subject: &str, load: Load) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await.with_context(|| format!("connecting to {url}"))?;
    let js = async_nats::jetstream::new(client);
    let mut pending = FuturesUnordered::new();
    let start = Instant::now();
    for i in 0..load.count {
        if let Some(wait) = wait_before(start, i, load.rate) {
            tokio::time::sleep(wait).await;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("key", payload::key(i, load.keys).as_str());
        let ack = js
            .publish_with_headers(subject.to_string(), headers, payload::stamped(load.size).into())
            .await
            .with_context(|| format!("publishing to {subject}"))?;
        pending.push(ack.into_future());
        while pending.len() >= 4096 {
            if let Some(r) = pending.next().await {
                r.with_context(|| format!("JetStream ack for {subject}"))?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        r.with_context(|| format!("JetStream ack for {subject}"))?;
    }
    Ok(())
}

async fn kinesis(endpoint: &str, stream: &str, load: Load) -> anyhow::Result<()> {
    let client = kubeless_kinesis::emulator_client(endpoint).await;
    let start = Instant::now();
    let mut i = 0;
    while i < load.count {
        if let Some(wait) = wait_before(start, i, load.rate) {
            tokio::time::sleep(wait).await;
        }
        // At a set rate, one record per call keeps the stamp honest; flat out, 500 per PutRecords.
        let batch = if load.rate.is_some() { 1 } else { 500.min(load.count - i) };
        let mut entries: Vec<PutRecordsRequestEntry> = Vec::with_capacity(batch as usize);
        for j in i..i + batch {
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(payload::key(j, load.keys))
                    .data(Blob::new(payload::stamped(load.size)))
                    .build()?,
            );
        }
        loop {
            let out = client
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries.clone()))
                .send()
                .await
                .with_context(|| format!("PutRecords to {stream}"))?;
            if out.failed_record_count().unwrap_or(0) == 0 {
                break;
            }
            // Throttled records: resend only those.
            entries =
                out.records().iter().zip(entries).filter(|(r, _)| r.error_code().is_some()).map(|(_, e)| e).collect();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i += batch;
    }
    Ok(())
}
