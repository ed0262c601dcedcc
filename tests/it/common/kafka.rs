//! The Kafka fixture: a tansu broker on loopback, in memory or on S3.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::server::{free_port, Server};

/// Session timeout that makes tansu groups join in ~3 s.
pub const SESSION_TIMEOUT_MS: &str = "6000";

/// A tansu broker, killed on drop: in memory, or on S3 (a moto_server of its own) so that it can
/// be killed and restarted without losing its log.
pub struct Kafka {
    server: Server,
    pub brokers: String,
    _storage: Option<Server>,
}

impl Kafka {
    pub async fn start() -> Self {
        Self::start_on("memory://tansu/", Vec::new(), None).await
    }

    /// A broker whose topics, offsets and groups survive [`Kafka::kill`] and [`Kafka::restart`].
    pub async fn start_durable() -> Self {
        let port = free_port();
        let moto = ["moto_server", "-H", "127.0.0.1", "-p", &port.to_string()].map(String::from).to_vec();
        let moto = Server::start("moto-s3", moto, Vec::new(), port).await;
        let bucket = reqwest::Client::new().put(format!("http://127.0.0.1:{port}/tansu")).send().await.expect("bucket");
        assert!(bucket.status().is_success(), "create the S3 bucket: {}", bucket.status());
        let env = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT", &format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec();
        Self::start_on("s3://tansu/", env, Some(moto)).await
    }

    async fn start_on(storage: &str, env: Vec<(String, String)>, backing: Option<Server>) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let port = free_port();
        let tansu = root.join("scripts/tansu").display().to_string();
        let server = Server::start("tansu", vec![tansu, port.to_string(), storage.to_string()], env, port).await;
        Self { server, brokers: format!("127.0.0.1:{port}"), _storage: backing }
    }

    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub async fn restart(&mut self) {
        self.server.restart().await;
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        kubeless_kafka::create_topic(&self.brokers, &BTreeMap::new(), topic, partitions, 1)
            .await
            .expect("create topic");
    }

    pub fn publisher(&self) -> kubeless_kafka::Publisher {
        kubeless_kafka::Publisher::new(&self.brokers, &BTreeMap::new()).expect("publisher")
    }

    /// Publishes `(key, payload)` pairs, many in flight at once, in order per key.
    pub async fn publish_all(&self, topic: &str, records: Vec<(Option<String>, Vec<u8>)>) {
        let publisher = self.publisher();
        // Records of one key go to one partition; librdkafka keeps their order within it.
        futures::stream::iter(records)
            .map(|(key, payload)| {
                let publisher = &publisher;
                async move {
                    publisher.publish(topic, key.as_deref().map(str::as_bytes), &payload, &[]).await.expect("publish")
                }
            })
            .buffered(2000)
            .collect::<Vec<_>>()
            .await;
    }

    /// Committed offsets of `group` for partitions `0..partitions` of `topic` (None: nothing committed).
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
        (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .collect()
    }

    /// Every record of `topic` partition `partition`, with headers.
    pub fn read_all(&self, topic: &str, partition: i32, expect: usize) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::{Headers, Message};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "test-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning).expect("tpl");
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let start = Instant::now();
        while out.len() < expect && start.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        out
    }
}
