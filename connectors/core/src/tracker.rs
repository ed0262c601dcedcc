//! Offset tracking for one partition or shard: which handed-out offsets are finished, and how far
//! the contiguous finished prefix reaches (the only position that may be committed). Shared by
//! every source that commits positions (Kafka offsets, Kinesis checkpoints).

use std::collections::VecDeque;
use std::time::SystemTime;

/// Offsets handed out for one partition, in the order the broker gave them (increasing), whether
/// each is finished, and when it was handed out. Its length is the uncommitted span: everything
/// from the oldest unfinished offset on, finished or not. Backpressure does not bound that (one
/// message retried forever holds back everything behind it), so sources stop reading a partition
/// whose [`span`](Self::span) reached their limit.
#[derive(Debug, Default)]
pub struct PartitionTracker {
    pending: VecDeque<Entry>,
    /// The next offset to commit: one past the last offset of the finished prefix.
    committable: Option<i64>,
    /// The value last handed to `take_commit`, so each advance is stored once.
    stored: Option<i64>,
}

#[derive(Debug)]
struct Entry {
    offset: i64,
    done: bool,
    handed_out: SystemTime,
}

impl PartitionTracker {
    pub fn push(&mut self, offset: i64) {
        debug_assert!(self.pending.back().is_none_or(|last| last.offset < offset), "offsets must increase");
        self.pending.push_back(Entry { offset, done: false, handed_out: SystemTime::now() });
    }

    /// Marks `offset` finished. Returns false if it was not outstanding (a stale or repeated ack).
    pub fn finish(&mut self, offset: i64) -> bool {
        let idx = self.pending.partition_point(|e| e.offset < offset);
        match self.pending.get_mut(idx) {
            Some(e) if e.offset == offset && !e.done => e.done = true,
            _ => return false,
        }
        while let Some(e) = self.pending.front().filter(|e| e.done) {
            self.committable = Some(e.offset + 1);
            self.pending.pop_front();
        }
        true
    }

    /// Forgets `offset` and every later offset: they were never handed out (they sat in the stash)
    /// and the partition is being released, so the next owner reads them again.
    pub fn forget_from(&mut self, offset: i64) {
        let idx = self.pending.partition_point(|e| e.offset < offset);
        self.pending.truncate(idx);
    }

    pub fn outstanding(&self) -> usize {
        self.pending.iter().filter(|e| !e.done).count()
    }

    /// Offsets held: from the oldest unfinished one to the last handed out.
    pub fn span(&self) -> usize {
        self.pending.len()
    }

    /// When the oldest unfinished offset was handed out.
    pub fn oldest_unfinished(&self) -> Option<SystemTime> {
        self.pending.front().map(|e| e.handed_out)
    }

    pub fn is_drained(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next offset to commit, if it moved since the last call.
    pub fn take_commit(&mut self) -> Option<i64> {
        if self.committable != self.stored {
            self.stored = self.committable;
            self.committable
        } else {
            None
        }
    }

    /// The next offset to commit, whether or not it was taken before.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_finished_prefix_is_committable() {
        let mut t = PartitionTracker::default();
        for o in [10, 11, 12, 15] {
            t.push(o);
        }
        assert!(t.finish(11));
        assert_eq!(t.take_commit(), None, "10 is not finished, nothing may be committed");
        assert!(t.finish(10));
        assert_eq!(t.take_commit(), Some(12));
        assert_eq!(t.take_commit(), None, "an unchanged offset is stored once");
        assert!(t.finish(15));
        assert_eq!(t.committable(), Some(12), "12 still blocks 15");
        assert!(t.finish(12));
        assert_eq!(t.take_commit(), Some(16), "the gap 13..15 held no messages");
        assert!(t.is_drained());
    }

    #[test]
    fn stale_and_repeated_acks_are_ignored() {
        let mut t = PartitionTracker::default();
        t.push(1);
        t.push(2);
        assert!(!t.finish(7));
        assert!(t.finish(2));
        assert!(!t.finish(2));
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.committable(), None);
    }

    #[test]
    fn forgetting_the_unsent_tail_keeps_the_committable_prefix() {
        let mut t = PartitionTracker::default();
        for o in 0..5 {
            t.push(o);
        }
        t.finish(0);
        t.forget_from(3);
        assert_eq!(t.outstanding(), 2, "1 and 2 are still out; 3 and 4 were never sent");
        t.finish(1);
        t.finish(2);
        assert!(t.is_drained());
        assert_eq!(t.committable(), Some(3));
    }

    #[test]
    fn the_span_counts_finished_offsets_held_behind_an_unfinished_one() {
        let mut t = PartitionTracker::default();
        assert_eq!(t.oldest_unfinished(), None);
        for o in 0..100 {
            t.push(o);
        }
        let first = t.oldest_unfinished();
        for o in 1..100 {
            t.finish(o);
        }
        assert_eq!(t.outstanding(), 1);
        assert_eq!(t.span(), 100, "offset 0 holds the 99 finished ones behind it");
        assert_eq!(t.oldest_unfinished(), first);
        t.finish(0);
        assert_eq!(t.span(), 0);
        assert_eq!(t.oldest_unfinished(), None);
    }
}
