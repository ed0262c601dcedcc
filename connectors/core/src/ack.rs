//! Acknowledgements: how a delivered message tells its source that its position may be committed.

use std::fmt;
use std::sync::Arc;

/// What finally happened to a message. `Delivered` and `DeadLettered` let the source commit the
/// position; the others leave it unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every attempt that mattered ended in a 2xx.
    Delivered,
    /// The message was written to the dead-letter destination, or (with none configured) logged and
    /// counted as failed; either way it is finished and will not be retried.
    DeadLettered,
    /// Not finished: a retriable failure the broker should redeliver after `after` (a JetStream
    /// NAK with delay). Only used for sources that declare they redeliver.
    Redeliver { after: std::time::Duration },
    /// Not finished, on purpose: the consumer is stopping, or the message's partition was revoked.
    /// The position stays uncommitted; a source that can redeliver one message may do so now.
    Released,
    /// Not finished, by accident: the handle was dropped without an outcome (a delivery that
    /// panicked, a bug). The position stays uncommitted, so the source's commits stop at it until a
    /// restart or rebalance reads it again; sources count and log it.
    Abandoned,
}

impl Outcome {
    /// Whether the position may be committed.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Delivered | Self::DeadLettered)
    }
}

/// Where a source tracks one message. The meaning of the fields belongs to the source: Kafka uses
/// `slot` for a (topic, partition) it owns, `generation` for the assignment the message came from and
/// `offset` for the record offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub slot: u32,
    pub generation: u32,
    pub offset: i64,
}

/// Receives outcomes for the positions a source handed out. Called from delivery tasks, so it must be
/// cheap and must never block.
pub trait Acker: Send + Sync + 'static {
    fn ack(&self, position: Position, outcome: Outcome);

    /// Whether the position still belongs to this consumer. False once its partition was revoked
    /// and drained: delivering it then would duplicate the new owner's work and break its order.
    fn is_current(&self, _position: Position) -> bool {
        true
    }

    /// The delivery is still working on it (retrying in place): a source whose broker redelivers
    /// unacknowledged messages after a timeout (JetStream's `ack_wait`) extends that timeout.
    fn in_progress(&self, _position: Position) {}
}

/// The acknowledgement a message carries. Resolve it with [`AckHandle::finish`], or give it back
/// unfinished with [`AckHandle::release`]; dropping it without either reports
/// [`Outcome::Abandoned`].
pub struct AckHandle {
    acker: Option<Arc<dyn Acker>>,
    position: Position,
}

impl AckHandle {
    pub fn new(acker: Arc<dyn Acker>, position: Position) -> Self {
        Self { acker: Some(acker), position }
    }

    /// A handle that reports to nobody, for messages that have no position to commit (tests, cron).
    pub fn detached() -> Self {
        Self { acker: None, position: Position { slot: 0, generation: 0, offset: 0 } }
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Reports the outcome to the source, consuming the handle.
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(acker) = self.acker.take() {
            acker.ack(self.position, outcome);
        }
    }

    /// Gives the message back unfinished, on purpose (a stop, a revoked partition).
    pub fn release(self) {
        self.finish(Outcome::Released);
    }

    /// See [`Acker::is_current`]. A detached handle is always current.
    pub fn is_current(&self) -> bool {
        self.acker.as_ref().is_none_or(|a| a.is_current(self.position))
    }

    /// See [`Acker::in_progress`].
    pub fn in_progress(&self) {
        if let Some(acker) = &self.acker {
            acker.in_progress(self.position);
        }
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            tracing::error!(position = ?self.position, "A message was dropped without an outcome; its position stays uncommitted.");
            acker.ack(self.position, Outcome::Abandoned);
        }
    }
}

impl fmt::Debug for AckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckHandle").field("position", &self.position).field("pending", &self.acker.is_some()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(Position, Outcome)>>);

    impl Acker for Recorder {
        fn ack(&self, position: Position, outcome: Outcome) {
            self.0.lock().expect("recorder lock").push((position, outcome));
        }
    }

    #[test]
    fn each_handle_reports_once_and_a_dropped_one_reports_abandoned() {
        let recorder = Arc::new(Recorder::default());
        let pos = |offset| Position { slot: 1, generation: 2, offset };
        AckHandle::new(recorder.clone(), pos(7)).finish(Outcome::Delivered);
        drop(AckHandle::new(recorder.clone(), pos(8)));
        AckHandle::new(recorder.clone(), pos(9)).finish(Outcome::DeadLettered);
        AckHandle::new(recorder.clone(), pos(10)).release();
        drop(AckHandle::detached());
        let got = recorder.0.lock().expect("recorder lock").clone();
        assert_eq!(
            got,
            vec![
                (pos(7), Outcome::Delivered),
                (pos(8), Outcome::Abandoned),
                (pos(9), Outcome::DeadLettered),
                (pos(10), Outcome::Released)
            ]
        );
    }
}
