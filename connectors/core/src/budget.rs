//! The daemon-wide budget of message bytes held in memory, shared fairly between consumers.
//!
//! Every message a source hands out is charged to its consumer ([`ConsumerBudget::charge`]) until it
//! is dropped — delivered, dead-lettered or given back — wherever it waits meanwhile (the channel,
//! behind a busy lane, in flight, in a source's stash). A consumer may hold up to its share, the
//! total divided by the consumers registered; a source whose consumer is at its share stops taking
//! messages from its broker ([`ConsumerBudget::has_room`], [`ConsumerBudget::room`]) exactly as when
//! its channel is full. A busy or hostile consumer is paused at its share, never the others. One
//! message is always allowed, so a message larger than a share still moves.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How often a waiting source looks again even without a release of its own (shares grow when
/// consumers stop).
const RECHECK: Duration = Duration::from_millis(100);

/// The budget of the whole process.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Global>,
}

struct Global {
    total: u64,
    /// Consumers registered (running a source).
    consumers: AtomicUsize,
    /// Consumers the control plane wants running: shares are sized for them from the start, so
    /// the first of many consumers starting does not take the whole budget.
    expected: AtomicUsize,
    held: AtomicU64,
}

impl Global {
    fn share(&self) -> u64 {
        let n = self.consumers.load(Ordering::Relaxed).max(self.expected.load(Ordering::Relaxed)).max(1);
        self.total / n as u64
    }
}

impl MemoryBudget {
    /// `total` bytes for every consumer together.
    pub fn new(total: u64) -> Self {
        let inner =
            Global { total, consumers: AtomicUsize::new(0), expected: AtomicUsize::new(0), held: AtomicU64::new(0) };
        Self { inner: Arc::new(inner) }
    }

    pub fn total(&self) -> u64 {
        self.inner.total
    }

    /// Bytes held by every consumer now.
    pub fn held(&self) -> u64 {
        self.inner.held.load(Ordering::Relaxed)
    }

    /// How many consumers should run (shares are sized for at least that many).
    pub fn expect(&self, consumers: usize) {
        self.inner.expected.store(consumers, Ordering::Relaxed);
    }

    /// A consumer's part of the budget, for as long as the handle (and its clones) live.
    pub fn register(&self) -> ConsumerBudget {
        self.inner.consumers.fetch_add(1, Ordering::Relaxed);
        let own = Arc::new(Own { held: AtomicU64::new(0), released: Notify::new(), global: self.inner.clone() });
        ConsumerBudget { own: Some(Arc::new(Registration(own))) }
    }
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget").field("total", &self.total()).field("held", &self.held()).finish()
    }
}

struct Own {
    held: AtomicU64,
    released: Notify,
    global: Arc<Global>,
}

/// Counts the consumer out of the shares when its last handle goes.
struct Registration(Arc<Own>);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.global.consumers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One consumer's part of the budget. `Default` is unlimited (a source run on its own).
#[derive(Clone, Default)]
pub struct ConsumerBudget {
    own: Option<Arc<Registration>>,
}

impl ConsumerBudget {
    /// What this consumer may hold now.
    pub fn share(&self) -> u64 {
        match &self.own {
            None => u64::MAX,
            Some(r) => r.0.global.share(),
        }
    }

    /// Bytes this consumer's messages hold now.
    pub fn held(&self) -> u64 {
        self.own.as_ref().map_or(0, |r| r.0.held.load(Ordering::Relaxed))
    }

    /// Whether the source may hand out another message: below its share (or holding nothing).
    pub fn has_room(&self) -> bool {
        let held = self.held();
        held == 0 || held < self.share()
    }

    /// Waits until [`has_room`](Self::has_room).
    pub async fn room(&self) {
        let Some(r) = &self.own else { return };
        loop {
            let released = r.0.released.notified();
            if self.has_room() {
                return;
            }
            let _ = tokio::time::timeout(RECHECK, released).await;
        }
    }

    /// Charges `bytes` to this consumer until the returned charge is dropped.
    pub fn charge(&self, bytes: usize) -> Charge {
        let Some(r) = &self.own else { return Charge::default() };
        let bytes = bytes as u64;
        r.0.held.fetch_add(bytes, Ordering::Relaxed);
        r.0.global.held.fetch_add(bytes, Ordering::Relaxed);
        Charge { to: Some((r.0.clone(), bytes)) }
    }
}

impl fmt::Debug for ConsumerBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBudget").field("held", &self.held()).field("share", &self.share()).finish()
    }
}

/// Bytes held by one message, given back when it is dropped.
#[derive(Default)]
pub struct Charge {
    to: Option<(Arc<Own>, u64)>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((own, bytes)) = self.to.take() {
            own.held.fetch_sub(bytes, Ordering::Relaxed);
            own.global.held.fetch_sub(bytes, Ordering::Relaxed);
            own.released.notify_waiters();
        }
    }
}

impl fmt::Debug for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Charge({})", self.to.as_ref().map_or(0, |(_, b)| *b))
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, else v1
/// `memory.limit_in_bytes`), if it has one.
pub fn cgroup_memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let v2 = read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse::<u64>().ok());
    let v1 = || read("/sys/fs/cgroup/memory/memory.limit_in_bytes").and_then(|s| s.trim().parse::<u64>().ok());
    // v1 reports "no limit" as a huge number (page-rounded i64::MAX).
    v2.or_else(v1).filter(|l| *l < (1 << 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_share_the_budget_and_a_full_one_waits_alone() {
        let budget = MemoryBudget::new(1000);
        let hostile = budget.register();
        let polite = budget.register();
        assert_eq!((hostile.share(), polite.share()), (500, 500));
        let mut held = Vec::new();
        while hostile.has_room() {
            held.push(hostile.charge(100));
        }
        assert_eq!(hostile.held(), 500, "paused at its share");
        assert!(polite.has_room(), "the other is not touched");
        let _p = polite.charge(400);
        assert!(polite.has_room());
        assert_eq!(budget.held(), 900);
        held.pop();
        assert!(hostile.has_room(), "room again once a message is done");
        drop(held);
        assert_eq!(hostile.held(), 0);
    }

    #[test]
    fn one_message_larger_than_a_share_still_moves_and_shares_grow_as_consumers_leave() {
        let budget = MemoryBudget::new(100);
        let a = budget.register();
        let b = budget.register();
        assert!(a.has_room());
        let big = a.charge(10_000);
        assert!(!a.has_room(), "one at a time");
        drop(big);
        drop(b);
        assert_eq!(a.share(), 100);
        budget.expect(4);
        assert_eq!(a.share(), 25, "sized for the consumers about to start");
        assert!(ConsumerBudget::default().has_room(), "unregistered: unlimited");
    }

    #[tokio::test]
    async fn a_waiting_source_wakes_when_its_messages_are_done() {
        let budget = MemoryBudget::new(10);
        let c = budget.register();
        let charge = c.charge(50);
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(charge);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").expect("task");
    }
}
