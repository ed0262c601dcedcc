//! Dead letters published to a NATS subject: through JetStream (a write is confirmed by the stream
//! that captures the subject) when the trigger uses JetStream, else core NATS (flushed).

use futures::future::BoxFuture;
use kubeless_connector::{DeadLetter, DeadLetterError, DeadLetterSink};

pub struct NatsDeadLetter {
    client: async_nats::Client,
    jetstream: Option<async_nats::jetstream::Context>,
    subject: String,
}

impl NatsDeadLetter {
    pub fn new(client: async_nats::Client, subject: &str, use_jetstream: bool) -> Self {
        let jetstream = use_jetstream.then(|| async_nats::jetstream::new(client.clone()));
        Self { client, jetstream, subject: subject.to_string() }
    }
}

impl DeadLetterSink for NatsDeadLetter {
    fn describe(&self) -> String {
        format!("nats subject {}", self.subject)
    }

    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            let msg = letter.message;
            let mut headers = async_nats::HeaderMap::new();
            for (k, v) in &msg.headers {
                if let Ok(v) = std::str::from_utf8(v) {
                    headers.insert(k.as_str(), v);
                }
            }
            headers.insert("kubeless-dead-letter-reason", letter.reason.as_str());
            headers.insert(
                "kubeless-dead-letter-status",
                letter.status.map(|s| s.to_string()).unwrap_or_default().as_str(),
            );
            headers.insert("kubeless-dead-letter-attempts", letter.attempts.to_string().as_str());
            headers.insert("kubeless-dead-letter-error", letter.error);
            headers.insert("kubeless-original-subject", &*msg.origin.source);
            headers.insert("kubeless-original-sequence", msg.origin.offset.to_string().as_str());
            headers.insert("kubeless-trigger", letter.trigger);
            headers.insert("kubeless-function", letter.function);
            let fail = |e: String| DeadLetterError::WriteFailed { target: self.describe(), reason: e };
            let subject = self.subject.clone();
            match &self.jetstream {
                Some(js) => {
                    let ack = js
                        .publish_with_headers(subject, headers, msg.payload.clone())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    ack.await.map(|_| ()).map_err(|e| fail(e.to_string()))
                }
                None => {
                    self.client
                        .publish_with_headers(subject, headers, msg.payload.clone())
                        .await
                        .map_err(|e| fail(e.to_string()))?;
                    self.client.flush().await.map_err(|e| fail(e.to_string()))
                }
            }
        })
    }
}
