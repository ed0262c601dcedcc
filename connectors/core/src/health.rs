//! How a running source tells the daemon whether it is live, for `/readyz` and status.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Connecting, or waiting for the consumer group to hand out partitions.
    Starting,
    /// Consuming: partitions assigned (possibly none, when the group has more members than
    /// partitions), subscription made.
    Ready,
    /// Not consuming, with a reason a person can act on. The source keeps retrying.
    Failed(String),
}

/// Shared, cheaply cloned health of one source.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<SourceState>>,
    lag: Arc<AtomicI64>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    pub fn new() -> Self {
        Self { state: Arc::new(watch::Sender::new(SourceState::Starting)), lag: Arc::new(AtomicI64::new(0)) }
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
}
