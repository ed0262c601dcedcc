//! Where the scheduler remembers the last tick it fired, so a restart never fires a tick twice:
//! files in standalone mode, the CronJobTrigger's `status.lastScheduleTime` in Kubernetes mode
//! (`kubernetes::ticks`), where claiming a tick is a resourceVersion-checked write, so
//! two replicas can never both fire it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write state {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cron trigger {trigger}: {reason}")]
    Api { trigger: String, reason: String },
}

impl StateError {
    /// A state file of this process's own, not a record other replicas share.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Read { .. } | Self::Write { .. })
    }
}

/// Remembers the last fired tick of each trigger (`namespace/name`).
pub trait TickStore: Send + Sync {
    fn last_fired<'a>(&'a self, trigger: &'a str) -> BoxFuture<'a, Result<Option<DateTime<Utc>>, StateError>>;
    /// Records `tick` as fired unless it, or a later tick, already is: true if the caller may fire
    /// it, false if someone already did.
    fn claim<'a>(&'a self, trigger: &'a str, tick: DateTime<Utc>) -> BoxFuture<'a, Result<bool, StateError>>;
}

/// One small file per key under a directory, replaced atomically (write, fsync, rename).
#[derive(Debug, Clone)]
pub struct FileStateStore {
    dir: PathBuf,
}

impl FileStateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys are `cron/<namespace>/<name>`: Kubernetes names, so only `/` needs replacing.
        let file: String =
            key.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        self.dir.join(file)
    }
}

impl FileStateStore {
    fn read(&self, trigger: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let path = self.path(&format!("cron/{trigger}"));
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(DateTime::parse_from_rfc3339(s.trim()).ok().map(|d| d.with_timezone(&Utc))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    fn write(&self, trigger: &str, tick: DateTime<Utc>) -> Result<(), StateError> {
        let path = self.path(&format!("cron/{trigger}"));
        kubeless_connector::write_atomically(&path, tick.to_rfc3339().as_bytes())
            .map_err(|source| StateError::Write { path, source })
    }
}

/// One process owns the directory: a claim is a read and a write.
impl TickStore for FileStateStore {
    fn last_fired<'a>(&'a self, trigger: &'a str) -> BoxFuture<'a, Result<Option<DateTime<Utc>>, StateError>> {
        Box::pin(async move { self.read(trigger) })
    }

    fn claim<'a>(&'a self, trigger: &'a str, tick: DateTime<Utc>) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            if self.read(trigger)?.is_some_and(|last| last >= tick) {
                return Ok(false);
            }
            self.write(trigger, tick)?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[tokio::test]
    async fn the_last_fired_tick_survives_a_new_store_and_is_claimed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tick = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 2).single().expect("valid");
        let store = FileStateStore::new(dir.path());
        assert_eq!(store.last_fired("ns/t").await.expect("read"), None);
        assert!(store.claim("ns/t", tick).await.expect("claim"));
        assert!(!store.claim("ns/t", tick).await.expect("claim"), "a tick is claimed once");
        let earlier = tick - chrono::Duration::seconds(2);
        assert!(!store.claim("ns/t", earlier).await.expect("claim"), "nor one before the last");
        assert_eq!(FileStateStore::new(dir.path()).last_fired("ns/t").await.expect("read"), Some(tick));
        assert_eq!(store.last_fired("ns/other").await.expect("read"), None, "keys are separate");
    }
}
