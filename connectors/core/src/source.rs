//! What every source is given when it starts.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ConsumerBudget, Health, Message};

/// The context a source runs in.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// Where messages go. Bounded: when it is full the source must stop reading from the broker
    /// (pause), never buffer on its own.
    pub out: mpsc::Sender<Message>,
    /// Cancelled when the source must stop taking new messages. The source then waits (bounded by
    /// its drain timeout) for the messages it handed out, commits what finished, and returns.
    pub shutdown: CancellationToken,
    pub health: Health,
    /// This consumer's part of the daemon's memory budget: every message handed out is charged to
    /// it ([`Message::charged`]), and a source at its share stops taking messages from the broker,
    /// as when `out` is full.
    pub budget: ConsumerBudget,
}
