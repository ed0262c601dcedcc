//! Kinesis for the Kubeless trigger broker: every shard of a stream (or one), read with
//! `GetRecords`, checkpointed per shard only after the contiguous prefix of records is done, and
//! resumed from the checkpoint after a restart. Parent shards are finished before their children
//! start, so order per partition key survives resharding.

#![forbid(unsafe_code)]

mod admin;
mod checkpoint;
mod config;
mod source;

pub use admin::{create_stream, emulator_client, put_record, split_open_shards, wait_active};
pub use checkpoint::{Assignment, CheckpointError, CheckpointStore, FileCheckpointStore, ShardCheckpoint, ShardLeases};
pub use config::{KinesisSourceConfig, StartingPosition};
pub use source::{client, run_source, run_source_with, KinesisSourceError};
