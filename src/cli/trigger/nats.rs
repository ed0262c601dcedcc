//! `kubeless trigger nats`: NATS triggers (the selector triggers' commands, in `trigger`), and
//! publishing to a subject: through JetStream when a stream captures it, else core NATS.

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{selector_trigger, SelectorFlags, SelectorTrigger, TriggerCrud};
use crate::cli::common::{created_by, meta, FlagError};
use crate::cli::publish::{self, Message, Outcome, Pending, Sink, Source};
use crate::cli::{table, Global};
use crate::config::DEFAULT_NATS_URL;
use crate::resources::{NATSTrigger, NATSTriggerSpec};

#[derive(Debug, Subcommand)]
pub enum NatsCommand {
    #[command(flatten)]
    Trigger(TriggerCrud<SelectorFlags>),
    /// Publish to a NATS subject (JetStream when a stream captures it).
    Publish {
        /// NATS server.
        #[arg(long, env = "NATS_URL", default_value = DEFAULT_NATS_URL)]
        url: String,
        /// Subject.
        #[arg(long, default_value = "kubeless")]
        topic: String,
        /// One message (Kubeless's flag; same as --data).
        #[arg(long, conflicts_with = "data")]
        message: Option<String>,
        #[command(flatten)]
        input: publish::Input,
    },
}

pub async fn run(g: &Global, c: NatsCommand) -> anyhow::Result<()> {
    match c {
        NatsCommand::Trigger(c) => selector_trigger::<NATSTrigger>(g, c).await,
        NatsCommand::Publish { url, topic, message, input } => nats_publish(&url, &topic, message, &input).await,
    }
}

/// `kubeless trigger nats create NAME --trigger-topic T --function-selector S`.
pub fn nats_trigger(name: &str, namespace: &str, topic: &str, selector: LabelSelector) -> NATSTrigger {
    let mut t = NATSTrigger::new(
        name,
        NATSTriggerSpec { function_selector: Some(selector), topic: topic.to_string(), ..Default::default() },
    );
    t.metadata = meta(name, namespace, created_by());
    t
}

impl SelectorTrigger for NATSTrigger {
    fn build(name: &str, ns: &str, topic: &str, selector: LabelSelector) -> Self {
        nats_trigger(name, ns, topic, selector)
    }
    fn set(&mut self, topic: Option<&str>, selector: Option<LabelSelector>) {
        if let Some(t) = topic {
            self.spec.topic = t.to_string();
        }
        if selector.is_some() {
            self.spec.function_selector = selector;
        }
    }
    fn topic(&self) -> String {
        self.spec.topic.clone()
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.function_selector.as_ref()
    }
    fn ready(&self) -> String {
        table::trigger_ready(self.status.as_ref())
    }
}

async fn nats_publish(url: &str, subject: &str, message: Option<String>, input: &publish::Input) -> anyhow::Result<()> {
    if input.key.is_some() || input.key_separator.is_some() {
        bail!(FlagError::new("--key", "NATS messages have no key; use --header name=value"));
    }
    let source = Source::open(input, message.into_iter().collect()).await?;
    let client = kubeless_nats::connect(url, &kubeless_nats::NatsAuth::None, false, None)
        .await
        .with_context(|| "the NATS server (--url, NATS_URL)".to_string())?;
    let (sink, stream) = NatsSink::new(client, subject, &input.headers, input.timeout).await;
    let target = match stream {
        Some(s) => format!("NATS subject {subject} (JetStream stream {s}) at {url}"),
        None => format!("NATS subject {subject} at {url}"),
    };
    publish::publish(sink, source, input, &target).await
}

/// Core NATS messages are acknowledged together by a flush (the server's PONG) every this many.
const NATS_FLUSH_EVERY: u64 = 1_000;

/// NATS: JetStream (each message acknowledged by the stream) or core (flushed in groups).
pub struct NatsSink {
    client: async_nats::Client,
    jetstream: Option<async_nats::jetstream::Context>,
    subject: String,
    headers: async_nats::HeaderMap,
    timeout: Duration,
    unflushed: u64,
}

impl NatsSink {
    /// Uses JetStream when a stream captures `subject`.
    pub async fn new(
        client: async_nats::Client,
        subject: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> (Self, Option<String>) {
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(timeout);
        let stream = js.stream_by_subject(subject).await.ok();
        let mut map = async_nats::HeaderMap::new();
        for (k, v) in headers {
            map.insert(k.as_str(), v.as_str());
        }
        let sink = Self {
            client,
            jetstream: stream.is_some().then_some(js),
            subject: subject.to_string(),
            headers: map,
            timeout,
            unflushed: 0,
        };
        (sink, stream)
    }

    fn flush(&mut self) -> Option<Pending> {
        let n = std::mem::take(&mut self.unflushed);
        if n == 0 {
            return None;
        }
        let (client, timeout) = (self.client.clone(), self.timeout);
        Some(Box::pin(async move {
            match tokio::time::timeout(timeout, client.flush()).await {
                Ok(Ok(())) => Outcome::acked(n),
                Ok(Err(e)) => Outcome::failed(n, e.to_string()),
                Err(_) => Outcome::failed(n, format!("the server did not answer a flush within {timeout:?}")),
            }
        }))
    }
}

impl Sink for NatsSink {
    async fn send(&mut self, msg: Message) -> Result<Option<Pending>, String> {
        let subject = self.subject.clone();
        match &self.jetstream {
            Some(js) => {
                let ack = js
                    .publish_with_headers(subject, self.headers.clone(), msg.value.into())
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Some(Box::pin(async move {
                    match ack.await {
                        Ok(_) => Outcome::acked(1),
                        Err(e) => Outcome::failed(1, e.to_string()),
                    }
                })))
            }
            None => {
                let publish = self.client.publish_with_headers(subject, self.headers.clone(), msg.value.into());
                match tokio::time::timeout(self.timeout, publish).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("the client's buffer stayed full for {:?}", self.timeout)),
                }
                self.unflushed += 1;
                Ok(if self.unflushed >= NATS_FLUSH_EVERY { self.flush() } else { None })
            }
        }
    }

    async fn finish(&mut self) -> Option<Pending> {
        self.flush()
    }
}
