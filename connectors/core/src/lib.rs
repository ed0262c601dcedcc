//! The seam every event-bus connector implements.
//!
//! A source turns broker records into [`Message`]s, each carrying an [`AckHandle`]. The dispatcher
//! delivers the message and resolves the handle with an [`Outcome`]; only then may the source commit
//! that position. A handle dropped without an outcome leaves its position unfinished, so it is never
//! committed and the record is delivered again later: that is what makes delivery at-least-once.
//!
//! ```text
//! broker ─► source (position held) ─► Message{payload, key, headers, origin, ack}
//!        ─► bounded channel (SourceContext::out) ─► dispatcher ─► HTTP
//!        ◄─ AckHandle::finish(Outcome) ◄─ delivered | dead-lettered
//! ```

#![forbid(unsafe_code)]

mod ack;
mod dead_letter;
mod health;
mod message;
mod source;
mod tracker;

pub use ack::{AckHandle, Acker, Outcome, Position};
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterReason, DeadLetterSink};
pub use health::{Health, SourceState};
pub use message::{Message, Origin};
pub use source::SourceContext;
pub use tracker::PartitionTracker;

/// An error with its causes, e.g. `error sending request: connection refused`: the top-level
/// message of SDK and HTTP errors alone rarely says what went wrong.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
