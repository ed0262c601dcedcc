//! Per-shard checkpoints: the last sequence number whose record (and every record before it) is
//! finished, and whether the shard is closed and fully finished — and which reader may read which
//! shard ([`ShardLeases`]). Standalone mode keeps a JSON file per reader and reads every shard;
//! Kubernetes mode keeps one `Lease` per shard (KCL's model), split between replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCheckpoint {
    /// Resume after this sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
    /// The shard was closed (resharding) and all its records are finished: its children may start.
    #[serde(default)]
    pub finished: bool,
    /// When reading first started at `LATEST` (ms since the epoch): a reader taking the shard over
    /// before any record was checkpointed starts here, not at a later `LATEST`, so nothing
    /// published in between is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// The stream this checkpoint belongs to (its ARN and creation time): a stream deleted and
    /// created again under the same name has new sequence numbers, and its old checkpoints are
    /// ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoints {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write checkpoints {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("shard leases of {reader}: {reason}")]
    Lease { reader: String, reason: String },
    /// Another reader holds the shard now: stop reading it.
    #[error("the lease on shard {shard} was lost to {holder}")]
    Lost { shard: String, holder: String },
}

pub trait CheckpointStore: Send + Sync {
    fn load(&self) -> Result<BTreeMap<String, ShardCheckpoint>, CheckpointError>;
    fn save(&self, shard: &str, checkpoint: ShardCheckpoint) -> Result<(), CheckpointError>;
}

/// What a balancing round decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Every shard's checkpoint, whoever holds it (parents finished elsewhere unblock children).
    pub checkpoints: BTreeMap<String, ShardCheckpoint>,
    /// Shards this reader holds and should be reading.
    pub held: BTreeSet<String>,
    /// Shards this reader holds beyond its fair share: stop, save, then [`ShardLeases::release`].
    pub surrender: BTreeSet<String>,
}

/// Which shards a reader reads, and where their checkpoints live.
pub trait ShardLeases: Send + Sync {
    /// One round over the stream's current shards: renews held leases, takes free or expired ones
    /// up to a fair share, and names any to give up.
    fn balance<'a>(&'a self, shards: &'a [String]) -> BoxFuture<'a, Result<Assignment, CheckpointError>>;
    /// Saves a held shard's checkpoint; [`CheckpointError::Lost`] if another reader holds it now.
    fn save<'a>(&'a self, shard: &'a str, checkpoint: ShardCheckpoint) -> BoxFuture<'a, Result<(), CheckpointError>>;
    /// Gives up a shard whose reader has stopped and saved.
    fn release<'a>(&'a self, shard: &'a str) -> BoxFuture<'a, ()>;
    /// How long a lease lasts without renewal before another reader may take it; none if leases
    /// never expire (one process).
    fn lease_duration(&self) -> Option<std::time::Duration> {
        None
    }
}

/// One process reads every shard, with its checkpoints in a file.
impl ShardLeases for FileCheckpointStore {
    fn balance<'a>(&'a self, shards: &'a [String]) -> BoxFuture<'a, Result<Assignment, CheckpointError>> {
        Box::pin(async move {
            let checkpoints = {
                let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.clone()
            };
            let checkpoints = match checkpoints {
                Some(c) => c,
                None => self.load()?,
            };
            Ok(Assignment { checkpoints, held: shards.iter().cloned().collect(), surrender: BTreeSet::new() })
        })
    }

    fn save<'a>(&'a self, shard: &'a str, checkpoint: ShardCheckpoint) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(async move { CheckpointStore::save(self, shard, checkpoint) })
    }

    fn release<'a>(&'a self, _shard: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// `<dir>/kinesis/<key>.json`, replaced atomically on every save.
pub struct FileCheckpointStore {
    path: PathBuf,
    /// Read instead while `path` does not exist: an earlier version's file for this reader.
    legacy: Option<PathBuf>,
    /// The file's contents, so a save rewrites every shard without reading the file again.
    cache: Mutex<Option<BTreeMap<String, ShardCheckpoint>>>,
}

impl FileCheckpointStore {
    pub fn new(dir: &Path, key: &str) -> Self {
        Self { path: Self::file(dir, key), legacy: None, cache: Mutex::new(None) }
    }

    /// Reads the checkpoints of `legacy_key` until this store has saved its own.
    pub fn reading_first_from(self, dir: &Path, legacy_key: &str) -> Self {
        Self { legacy: Some(Self::file(dir, legacy_key)), ..self }
    }

    fn file(dir: &Path, key: &str) -> PathBuf {
        let file: String =
            key.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        dir.join("kinesis").join(format!("{file}.json"))
    }

    fn read(&self) -> Result<BTreeMap<String, ShardCheckpoint>, CheckpointError> {
        match Self::read_file(&self.path)? {
            Some(all) => Ok(all),
            None => Ok(match &self.legacy {
                Some(legacy) => Self::read_file(legacy)?.unwrap_or_default(),
                None => BTreeMap::new(),
            }),
        }
    }

    fn read_file(path: &Path) -> Result<Option<BTreeMap<String, ShardCheckpoint>>, CheckpointError> {
        match std::fs::read_to_string(path) {
            Ok(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| CheckpointError::Read { path: path.to_path_buf(), reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CheckpointError::Read { path: path.to_path_buf(), reason: e.to_string() }),
        }
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self) -> Result<BTreeMap<String, ShardCheckpoint>, CheckpointError> {
        let all = self.read()?;
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(all.clone());
        Ok(all)
    }

    fn save(&self, shard: &str, checkpoint: ShardCheckpoint) -> Result<(), CheckpointError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let all = match cache.as_mut() {
            Some(all) => all,
            None => cache.insert(self.read()?),
        };
        all.insert(shard.to_string(), checkpoint);
        let json = serde_json::to_string_pretty(all).unwrap_or_default();
        kubeless_connector::write_atomically(&self.path, json.as_bytes())
            .map_err(|e| CheckpointError::Write { path: self.path.clone(), reason: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_versions_checkpoints_are_read_until_the_store_saves_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = FileCheckpointStore::new(dir.path(), "ns_t_f_stream");
        let at = ShardCheckpoint { sequence: Some("49".into()), ..ShardCheckpoint::default() };
        CheckpointStore::save(&old, "shardId-000000000000", at.clone()).expect("save");
        let new =
            || FileCheckpointStore::new(dir.path(), "ns_t_stream").reading_first_from(dir.path(), "ns_t_f_stream");
        assert_eq!(new().load().expect("load").get("shardId-000000000000"), Some(&at), "picked up where it was");
        let later = ShardCheckpoint { sequence: Some("77".into()), ..ShardCheckpoint::default() };
        CheckpointStore::save(&new(), "shardId-000000000000", later.clone()).expect("save");
        assert_eq!(new().load().expect("load").get("shardId-000000000000"), Some(&later), "its own from then on");
        assert_eq!(FileCheckpointStore::new(dir.path(), "ns_t_other").load().expect("load").len(), 0);
    }

    #[test]
    fn checkpoints_survive_a_new_store_and_keep_other_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileCheckpointStore::new(dir.path(), "ns_t_f_stream");
        let first = ShardCheckpoint { sequence: Some("49".into()), ..ShardCheckpoint::default() };
        CheckpointStore::save(&store, "shardId-000000000000", first).expect("save");
        let second = ShardCheckpoint { sequence: Some("77".into()), finished: true, ..ShardCheckpoint::default() };
        CheckpointStore::save(&store, "shardId-000000000001", second).expect("save");
        let again = FileCheckpointStore::new(dir.path(), "ns_t_f_stream").load().expect("load");
        assert_eq!(again.len(), 2);
        assert_eq!(again["shardId-000000000000"].sequence.as_deref(), Some("49"));
        assert!(again["shardId-000000000001"].finished);
        assert!(FileCheckpointStore::new(dir.path(), "other").load().expect("load").is_empty());
    }
}
