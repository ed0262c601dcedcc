//! Acknowledgements: how a delivered message tells its source that its position may be committed.

use std::fmt;
use std::sync::Arc;

/// What finally happened to a message. `Delivered` and `DeadLettered` let the source commit the
/// position; `Redeliver` asks a source that can (JetStream) to deliver it again later.
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
}

/// The acknowledgement a message carries. Resolve it with [`AckHandle::finish`]; dropping it without
/// an outcome means "not done" and the position is never committed.
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
    fn finish_reports_the_outcome_once_and_drop_reports_nothing() {
        let recorder = Arc::new(Recorder::default());
        let pos = |offset| Position { slot: 1, generation: 2, offset };
        AckHandle::new(recorder.clone(), pos(7)).finish(Outcome::Delivered);
        drop(AckHandle::new(recorder.clone(), pos(8)));
        AckHandle::new(recorder.clone(), pos(9)).finish(Outcome::DeadLettered);
        let got = recorder.0.lock().expect("recorder lock").clone();
        assert_eq!(got, vec![(pos(7), Outcome::Delivered), (pos(9), Outcome::DeadLettered)]);
    }
}
