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
mod budget;
mod dead_letter;
mod failure;
mod health;
mod message;
mod source;
mod tracker;

pub use ack::{AckHandle, Acker, Outcome, Position};
pub use budget::{cgroup_memory_limit, Charge, ConsumerBudget, MemoryBudget};
pub use dead_letter::{DeadLetter, DeadLetterError, DeadLetterReason, DeadLetterSink};
pub use failure::{Failure, Reason};
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

/// Replaces `path` with `contents` so that a crash or a full disk never leaves it half written:
/// a temporary file beside it is written and synced, then renamed over it. On failure the old
/// file stays as it was and the temporary one is removed.
pub fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        f.sync_all()
    });
    match written {
        Ok(()) => std::fs::rename(&tmp, path),
        Err(e) => {
            // A full disk leaves a partial temporary file: give its space back.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// `url` with the password of its user info replaced by `***` (`http://u:***@host/`; a user alone,
/// often a token, is replaced whole), for logs, status and errors. Anything that is not a URL with
/// credentials comes back unchanged.
pub fn redact_url(url: &str) -> String {
    // A server list (`nats://u:p@a:4222,nats://u:q@b:4222`): each one.
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else { return url.to_string() };
    let user = match authority[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{user}@{}{}", &url[..scheme_end], &authority[at + 1..], &rest[authority_end..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_in_urls_are_redacted_and_the_rest_kept() {
        assert_eq!(redact_url("http://u:hunter2@fn.ns:8080/x?y=1"), "http://u:***@fn.ns:8080/x?y=1");
        assert_eq!(redact_url("nats://u:p@a:4222"), "nats://u:***@a:4222");
        assert_eq!(redact_url("http://u:p:q@h@evil/x"), "http://u:***@evil/x", "the last @ ends the user info");
        assert_eq!(redact_url("http://token@h/"), "http://***@h/");
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b", "an @ in the path is not user info");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("nats://u:p@a:4222,nats://v:q@b:4222"), "nats://u:***@a:4222,nats://v:***@b:4222");
    }
}
