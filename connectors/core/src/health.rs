//! How a running source tells the daemon whether it is live, for `/readyz` and status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::Failure;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Connecting, or waiting for the consumer group to hand out partitions.
    Starting,
    /// Consuming: partitions assigned (possibly none, when the group has more members than
    /// partitions), subscription made.
    Ready,
    /// Not consuming, with a reason a person can act on. A source failing while it runs keeps
    /// retrying; a consumer that ended with a permanent failure waits for its spec to change.
    Failed(Failure),
}

/// Shared, cheaply cloned health of one source.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<SourceState>>,
    lag: Arc<AtomicI64>,
    abandoned: Arc<AtomicU64>,
    /// Per partition or shard (keyed by the source's own index): when its oldest unfinished
    /// message was handed out.
    oldest_unfinished: Arc<Mutex<BTreeMap<i64, SystemTime>>>,
    /// Why the last attempt to save the source's position (a checkpoint file) failed; none once a
    /// save succeeds.
    checkpoint_error: Arc<Mutex<Option<String>>>,
    checkpoint_failures: Arc<AtomicU64>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self {
            state: Arc::new(watch::Sender::new(SourceState::Starting)),
            lag: Arc::new(AtomicI64::new(0)),
            abandoned: Arc::new(AtomicU64::new(0)),
            oldest_unfinished: Arc::default(),
            checkpoint_error: Arc::default(),
            checkpoint_failures: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn set(&self, state: SourceState) {
        self.state.send_if_modified(|current| {
            if *current == state {
                false
            } else {
                *current = state;
                true
            }
        });
    }

    pub fn state(&self) -> SourceState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<SourceState> {
        self.state.subscribe()
    }

    /// Messages behind the end of the log, summed over the partitions this source owns.
    pub fn set_lag(&self, lag: i64) {
        self.lag.store(lag, Ordering::Relaxed);
    }

    pub fn lag(&self) -> i64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Counts a message whose handle was dropped without an outcome.
    pub fn note_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages abandoned since the source started.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Records when the oldest unfinished message of partition or shard `key` was handed out (none:
    /// nothing unfinished there, or the partition is gone).
    pub fn set_oldest_unfinished(&self, key: i64, since: Option<SystemTime>) {
        let mut map = self.oldest_unfinished.lock().unwrap_or_else(|p| p.into_inner());
        match since {
            Some(t) => map.insert(key, t),
            None => map.remove(&key),
        };
    }

    /// Forgets every partition's entry (the source stopped or lost its assignment).
    pub fn clear_oldest_unfinished(&self) {
        self.oldest_unfinished.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Records that the source's position could not be saved, and why (the last good one stays).
    pub fn note_checkpoint_failed(&self, why: String) {
        self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
        *self.checkpoint_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Records that the source's position was saved: any earlier failure is over.
    pub fn note_checkpoint_saved(&self) {
        self.checkpoint_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Why the last save of the source's position failed, unless one has succeeded since.
    pub fn checkpoint_error(&self) -> Option<String> {
        self.checkpoint_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Failed saves of the source's position since it started.
    pub fn checkpoint_failures(&self) -> u64 {
        self.checkpoint_failures.load(Ordering::Relaxed)
    }

    /// How long the oldest unfinished message of this source has been out, if any is.
    pub fn oldest_unfinished_age(&self) -> Option<std::time::Duration> {
        let map = self.oldest_unfinished.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = map.values().min()?;
        Some(SystemTime::now().duration_since(*oldest).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_oldest_unfinished_message_is_the_minimum_over_partitions() {
        let h = Health::new();
        assert_eq!(h.oldest_unfinished_age(), None);
        let now = SystemTime::now();
        h.set_oldest_unfinished(0, Some(now - Duration::from_secs(5)));
        h.set_oldest_unfinished(1, Some(now - Duration::from_secs(60)));
        assert!(h.oldest_unfinished_age().is_some_and(|a| a >= Duration::from_secs(60)));
        h.set_oldest_unfinished(1, None);
        assert!(h.oldest_unfinished_age().is_some_and(|a| a < Duration::from_secs(60)));
        h.clear_oldest_unfinished();
        assert_eq!(h.oldest_unfinished_age(), None);
    }
}
