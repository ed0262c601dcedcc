//! Kinesis source settings.

use std::path::PathBuf;
use std::time::Duration;

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartingPosition {
    /// New records only (Kubeless's behaviour).
    #[default]
    Latest,
    /// The oldest record the stream retains.
    TrimHorizon,
    /// Records from this time (seconds since the epoch).
    AtTimestamp(i64),
}

/// One reader of a stream feeding one function.
#[derive(Clone, PartialEq, Eq)]
pub struct KinesisSourceConfig {
    pub stream: String,
    pub region: String,
    /// Endpoint override (emulators).
    pub endpoint: Option<String>,
    /// Static keys (from the trigger's Secret); none means the AWS default credential chain.
    pub credentials: Option<(String, String)>,
    /// Read only this shard.
    pub shard: Option<String>,
    pub starting_position: StartingPosition,
    /// Where checkpoints live, and the key of this reader's checkpoints.
    pub checkpoint_dir: PathBuf,
    pub checkpoint_key: String,
    /// What earlier versions keyed this reader's checkpoints by (the function's name was part of
    /// it): read while the key above has no checkpoint for a shard yet.
    pub legacy_checkpoint_key: Option<String>,
    /// Pause between `GetRecords` calls on an idle shard (Kinesis allows 5 per second per shard).
    pub poll_interval: Duration,
    /// How long a stop waits for handed-out records before checkpointing what finished.
    pub drain_timeout: Duration,
    /// Records a shard may hold past its checkpoint (from its oldest unfinished record on) before
    /// it stops being read until they finish.
    pub max_uncommitted: usize,
}

impl std::fmt::Debug for KinesisSourceConfig {
    /// Never prints the secret key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisSourceConfig")
            .field("stream", &self.stream)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials.as_ref().map(|_| "***"))
            .field("shard", &self.shard)
            .field("starting_position", &self.starting_position)
            .field("checkpoint_key", &self.checkpoint_key)
            .finish()
    }
}
