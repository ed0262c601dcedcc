//! Dead letters: where a message goes when it cannot be delivered.

use futures::future::BoxFuture;

use crate::Message;

/// Why a message was dead-lettered. The string forms travel in headers and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The function answered with a status that is not worth retrying (a 4xx other than 408/429).
    Rejected,
    /// `retry.maxAttempts` attempts all failed.
    RetriesExhausted,
    /// The record became older than `retry.maxRecordAge` while being retried.
    RecordTooOld,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::RetriesExhausted => "retries-exhausted",
            Self::RecordTooOld => "record-too-old",
        }
    }
}

/// Everything a dead-letter destination records about a failed message.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub message: &'a Message,
    pub reason: DeadLetterReason,
    /// The last HTTP status, if the function answered at all.
    pub status: Option<u16>,
    pub attempts: u32,
    /// The last error, in words.
    pub error: &'a str,
    pub trigger: &'a str,
    pub function: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter write to {target} failed: {reason}")]
    WriteFailed { target: String, reason: String },
}

/// A destination for dead letters. A write that returns `Ok` is durable; the caller commits the
/// original message only then.
pub trait DeadLetterSink: Send + Sync {
    /// A short description for logs, e.g. `kafka topic orders-dlq`.
    fn describe(&self) -> String;

    fn send<'a>(&'a self, letter: DeadLetter<'a>) -> BoxFuture<'a, Result<(), DeadLetterError>>;
}
