//! Where the scheduler remembers the last tick it fired, so a restart never fires a tick twice.
//! A trait, so Kubernetes `Lease` objects can hold the state later; standalone mode uses files.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

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
}

/// Remembers one timestamp per key.
pub trait StateStore: Send + Sync {
    fn last_fired(&self, key: &str) -> Result<Option<DateTime<Utc>>, StateError>;
    fn set_last_fired(&self, key: &str, tick: DateTime<Utc>) -> Result<(), StateError>;
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

fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl StateStore for FileStateStore {
    fn last_fired(&self, key: &str) -> Result<Option<DateTime<Utc>>, StateError> {
        let path = self.path(key);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(DateTime::parse_from_rfc3339(s.trim()).ok().map(|d| d.with_timezone(&Utc))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    fn set_last_fired(&self, key: &str, tick: DateTime<Utc>) -> Result<(), StateError> {
        let path = self.path(key);
        write_atomically(&path, &tick.to_rfc3339()).map_err(|source| StateError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn the_last_fired_tick_survives_a_new_store_on_the_same_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tick = Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 2).single().expect("valid");
        let store = FileStateStore::new(dir.path());
        assert_eq!(store.last_fired("cron/ns/t").expect("read"), None);
        store.set_last_fired("cron/ns/t", tick).expect("write");
        assert_eq!(FileStateStore::new(dir.path()).last_fired("cron/ns/t").expect("read"), Some(tick));
        assert_eq!(store.last_fired("cron/ns/other").expect("read"), None, "keys are separate");
    }
}
