//! Kinesis shards split between replicas, KCL's way: one `coordination.k8s.io/v1` Lease per
//! (reader, shard) holding who reads the shard and its checkpoint (annotations), plus one Lease per
//! live replica so each knows how many share the work. Every round a replica renews what it holds,
//! takes free or expired shards up to its fair share (`ceil(shards / replicas)`), and gives one up
//! when it holds more, so a new replica gets work without anyone reading a shard twice at once.
//! Checkpoint writes are resourceVersion-checked replaces by the holder: a replica whose lease was
//! taken over learns it at its next write and stops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, PostParams};
use kubeless_kinesis::{Assignment, CheckpointError, ShardCheckpoint, ShardLeases};
use tokio::sync::Mutex;
use tracing::info;

use super::lease::{held_spec, is_conflict, Observer, Record, Verdict};

/// A shard whose holder stopped renewing is taken over after this long.
pub const SHARD_LEASE_DURATION: Duration = Duration::from_secs(10);
/// A held lease is renewed when its last write is older than this.
const RENEW_AFTER: Duration = Duration::from_secs(3);
/// Conflicting writes before a checkpoint save gives up (the reader restarts from the last one).
const SAVE_ATTEMPTS: usize = 3;

const LABEL_READER: &str = "kubeless.io/kinesis-reader";
const LABEL_ROLE: &str = "kubeless.io/lease-for";
const ANN_READER: &str = "kubeless.io/checkpoint-key";
const ANN_SHARD: &str = "kubeless.io/shard";
const ANN_SEQUENCE: &str = "kubeless.io/sequence";
const ANN_FINISHED: &str = "kubeless.io/finished";
const ANN_STARTED: &str = "kubeless.io/started-at-ms";
const ANN_STREAM: &str = "kubeless.io/stream";

/// How many free shards to take, and whether to give one up, for a fair share of `shards` among
/// `workers` replicas of which this one holds `mine`.
pub fn fair_share(shards: usize, workers: usize, mine: usize, free: usize) -> (usize, bool) {
    let target = shards.div_ceil(workers.max(1));
    (target.saturating_sub(mine).min(free), mine > target)
}

/// A checkpoint kept in a Lease's annotations.
pub fn checkpoint_of(lease: &Lease) -> ShardCheckpoint {
    let ann = lease.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).filter(|v| !v.is_empty());
    ShardCheckpoint {
        sequence: get(ANN_SEQUENCE).cloned(),
        finished: get(ANN_FINISHED).is_some_and(|v| v == "true"),
        started_at_ms: get(ANN_STARTED).and_then(|v| v.parse().ok()),
        stream: get(ANN_STREAM).cloned(),
    }
}

fn set_checkpoint(lease: &mut Lease, c: &ShardCheckpoint) {
    let ann = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        (ANN_SEQUENCE, c.sequence.clone()),
        (ANN_FINISHED, c.finished.then(|| "true".to_string())),
        (ANN_STARTED, c.started_at_ms.map(|ms| ms.to_string())),
        (ANN_STREAM, c.stream.clone()),
    ] {
        match v {
            Some(v) => ann.insert(k.to_string(), v),
            None => ann.remove(k),
        };
    }
}

/// The worker Lease a replica that holds none takes: a free one (its replica is gone: Leases are
/// reused, not piled up with every rollout), else a new one in the lowest unused slot.
pub fn worker_slot(hash: &str, workers: &BTreeMap<String, Verdict>) -> String {
    if let Some((name, _)) = workers.iter().find(|(_, v)| **v == Verdict::Free) {
        return name.clone();
    }
    (0..)
        .map(|slot| format!("kinesis-{hash}-worker-{slot}"))
        .find(|name| !workers.contains_key(name))
        .unwrap_or_default()
}

/// A short, stable name part for what may be long or not name-safe (xxh3, as event ids use).
fn short_hash(s: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(s.as_bytes()))
}

/// `shardId-000000000003` → `shardid-000000000003` (a Lease name is a DNS subdomain).
fn name_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect()
}

#[derive(Default)]
struct Inner {
    observer: Observer,
    /// The last version of each held shard's Lease (read or written), by shard.
    held: BTreeMap<String, Lease>,
    /// When each lease (worker lease under "") was last written by this replica.
    written: BTreeMap<String, Instant>,
    /// The earlier version's checkpoints, read once.
    legacy: Option<BTreeMap<String, ShardCheckpoint>>,
}

/// The shard Leases of one Kinesis reader (trigger × stream) for one replica.
pub struct ApiShardLeases {
    api: Api<Lease>,
    reader: String,
    hash: String,
    identity: String,
    /// The label hash of an earlier version's leases for this reader, whose checkpoints are read
    /// for shards this reader has none for yet.
    legacy_hash: Option<String>,
    inner: Mutex<Inner>,
}

fn lease_error(reader: &str, e: &kube::Error) -> CheckpointError {
    CheckpointError::Lease { reader: reader.to_string(), reason: kubeless_connector::error_chain(e) }
}

impl ApiShardLeases {
    pub fn new(api: Api<Lease>, reader: &str, identity: &str) -> Self {
        Self {
            api,
            reader: reader.to_string(),
            hash: short_hash(reader),
            identity: identity.to_string(),
            legacy_hash: None,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Reads the checkpoints an earlier version saved for this reader under `legacy` (its
    /// checkpoint key named the function) where this reader has none yet.
    pub fn reading_first_from(self, legacy: Option<&str>) -> Self {
        Self { legacy_hash: legacy.filter(|l| *l != self.reader).map(short_hash), ..self }
    }

    /// The earlier version's checkpoints by shard (empty without one).
    async fn legacy_checkpoints(&self) -> Result<BTreeMap<String, ShardCheckpoint>, kube::Error> {
        let Some(hash) = &self.legacy_hash else { return Ok(BTreeMap::new()) };
        let listed = self.api.list(&ListParams::default().labels(&format!("{LABEL_READER}={hash}"))).await?;
        Ok(listed
            .items
            .iter()
            .filter_map(|l| {
                let shard = l.metadata.annotations.as_ref()?.get(ANN_SHARD)?.clone();
                Some((shard, checkpoint_of(l)))
            })
            .collect())
    }

    fn shard_lease_name(&self, shard: &str) -> String {
        format!("kinesis-{}-{}", self.hash, name_safe(shard))
    }

    fn new_lease(&self, name: String, role: &str, shard: Option<&str>) -> Lease {
        let mut annotations = BTreeMap::from([(ANN_READER.to_string(), self.reader.clone())]);
        if let Some(shard) = shard {
            annotations.insert(ANN_SHARD.to_string(), shard.to_string());
        }
        Lease {
            metadata: ObjectMeta {
                name: Some(name),
                labels: Some(BTreeMap::from([
                    (LABEL_READER.to_string(), self.hash.clone()),
                    (LABEL_ROLE.to_string(), role.to_string()),
                ])),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    /// Writes `lease` held by this replica: a create if it has no resourceVersion, else a checked
    /// replace. `None` if another replica wrote first.
    async fn hold(&self, mut lease: Lease) -> Result<Option<Lease>, kube::Error> {
        lease.spec = Some(held_spec(lease.spec.as_ref(), &self.identity, SHARD_LEASE_DURATION));
        let name = lease.metadata.name.clone().unwrap_or_default();
        let written = if lease.metadata.resource_version.is_some() {
            self.api.replace(&name, &PostParams::default(), &lease).await
        } else {
            self.api.create(&PostParams::default(), &lease).await
        };
        match written {
            Ok(l) => Ok(Some(l)),
            Err(e) if is_conflict(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn round(&self, shards: &[String]) -> Result<Assignment, kube::Error> {
        let mut inner = self.inner.lock().await;
        let inner = &mut *inner;
        let listed = self.api.list(&ListParams::default().labels(&format!("{LABEL_READER}={}", self.hash))).await?;
        let now = Instant::now();
        let mut workers = 1; // this replica
        let mut my_worker: Option<Lease> = None;
        let mut worker_leases: BTreeMap<String, (Lease, Verdict)> = BTreeMap::new();
        let mut by_shard: BTreeMap<String, (Lease, Verdict)> = BTreeMap::new();
        let names: BTreeSet<String> = listed.items.iter().filter_map(|l| l.metadata.name.clone()).collect();
        inner.observer.retain(&names);
        for lease in listed.items {
            let name = lease.metadata.name.clone().unwrap_or_default();
            let verdict = inner.observer.verdict(&name, &Record::of(&lease), &self.identity, now);
            let labels = lease.metadata.labels.as_ref();
            if labels.and_then(|l| l.get(LABEL_ROLE)).is_some_and(|r| r == "worker") {
                match verdict {
                    Verdict::Mine if my_worker.is_none() => my_worker = Some(lease),
                    _ => {
                        workers += usize::from(verdict == Verdict::Taken);
                        worker_leases.insert(name, (lease, verdict));
                    }
                }
                continue;
            }
            let shard = lease.metadata.annotations.as_ref().and_then(|a| a.get(ANN_SHARD)).cloned();
            if let Some(shard) = shard {
                by_shard.insert(shard, (lease, verdict));
            }
        }
        // This replica's presence: its own worker Lease, else a free one, else a new slot.
        let due = |written: &BTreeMap<String, Instant>, key: &str| {
            written.get(key).is_none_or(|at| now.saturating_duration_since(*at) >= RENEW_AFTER)
        };
        if due(&inner.written, "") || my_worker.is_none() {
            let lease = my_worker.unwrap_or_else(|| {
                let verdicts = worker_leases.iter().map(|(n, (_, v))| (n.clone(), *v)).collect();
                let slot = worker_slot(&self.hash, &verdicts);
                match worker_leases.remove(&slot) {
                    Some((lease, _)) => lease,
                    None => self.new_lease(slot, "worker", None),
                }
            });
            if self.hold(lease).await?.is_some() {
                inner.written.insert(String::new(), now);
            }
        }

        let mut checkpoints: BTreeMap<String, ShardCheckpoint> =
            by_shard.iter().map(|(s, (l, _))| (s.clone(), checkpoint_of(l))).collect();
        if self.legacy_hash.is_some() {
            if inner.legacy.is_none() {
                inner.legacy = Some(self.legacy_checkpoints().await?);
            }
            for (shard, old) in inner.legacy.iter().flatten() {
                let own = checkpoints.entry(shard.clone()).or_default();
                if *own == ShardCheckpoint::default() {
                    *own = old.clone();
                }
            }
        }
        let open: Vec<&String> = shards.iter().filter(|s| !checkpoints.get(*s).is_some_and(|c| c.finished)).collect();
        let mut mine: Vec<String> = Vec::new();
        let mut free: Vec<&String> = Vec::new();
        for shard in &open {
            match by_shard.get(*shard).map(|(_, v)| *v) {
                Some(Verdict::Mine) => mine.push((*shard).clone()),
                Some(Verdict::Free) | None => free.push(shard),
                Some(Verdict::Taken) => {}
            }
        }
        inner.held.retain(|s, _| mine.contains(s));
        // Renew what is held.
        let mut held = BTreeSet::new();
        for shard in mine {
            let Some((lease, _)) = by_shard.remove(&shard) else { continue };
            if !due(&inner.written, &shard) {
                inner.held.insert(shard.clone(), lease);
                held.insert(shard);
                continue;
            }
            if let Some(written) = self.hold(lease).await? {
                inner.written.insert(shard.clone(), Instant::now());
                inner.held.insert(shard.clone(), written);
                held.insert(shard);
            }
        }
        // Take free shards up to a fair share; give one up above it.
        let (take, give_up) = fair_share(open.len(), workers, held.len(), free.len());
        for shard in free.into_iter().take(take) {
            let lease = match by_shard.remove(shard) {
                Some((lease, _)) => lease,
                None => self.new_lease(self.shard_lease_name(shard), "shard", Some(shard)),
            };
            if let Some(written) = self.hold(lease).await? {
                info!(reader = %self.reader, shard = %shard, identity = %self.identity, "Took the shard's lease.");
                inner.written.insert(shard.clone(), Instant::now());
                inner.held.insert(shard.clone(), written);
                held.insert(shard.clone());
            }
        }
        let surrender: BTreeSet<String> =
            if give_up { held.iter().next_back().cloned().into_iter().collect() } else { BTreeSet::new() };
        Ok(Assignment { checkpoints, held, surrender })
    }

    async fn save_checkpoint(&self, shard: &str, checkpoint: &ShardCheckpoint) -> Result<(), CheckpointError> {
        let mut inner = self.inner.lock().await;
        let name = self.shard_lease_name(shard);
        let mut lease = match inner.held.get(shard) {
            Some(l) => l.clone(),
            None => self.api.get(&name).await.map_err(|e| lease_error(&self.reader, &e))?,
        };
        for _ in 0..SAVE_ATTEMPTS {
            let holder = Record::of(&lease).holder.unwrap_or_default();
            if holder != self.identity {
                inner.held.remove(shard);
                return Err(CheckpointError::Lost { shard: shard.to_string(), holder });
            }
            set_checkpoint(&mut lease, checkpoint);
            match self.hold(lease).await.map_err(|e| lease_error(&self.reader, &e))? {
                Some(written) => {
                    inner.written.insert(shard.to_string(), Instant::now());
                    inner.held.insert(shard.to_string(), written);
                    return Ok(());
                }
                None => lease = self.api.get(&name).await.map_err(|e| lease_error(&self.reader, &e))?,
            }
        }
        Err(CheckpointError::Lease {
            reader: self.reader.clone(),
            reason: format!("{SAVE_ATTEMPTS} conflicting writes saving the checkpoint of {shard}"),
        })
    }
}

impl ShardLeases for ApiShardLeases {
    fn balance<'a>(&'a self, shards: &'a [String]) -> BoxFuture<'a, Result<Assignment, CheckpointError>> {
        Box::pin(async move { self.round(shards).await.map_err(|e| lease_error(&self.reader, &e)) })
    }

    fn save<'a>(&'a self, shard: &'a str, checkpoint: ShardCheckpoint) -> BoxFuture<'a, Result<(), CheckpointError>> {
        Box::pin(async move { self.save_checkpoint(shard, &checkpoint).await })
    }

    fn lease_duration(&self) -> Option<Duration> {
        // Counted from the last successful round, whose Lease write may be up to RENEW_AFTER older:
        // stop a renewal interval before another replica could take over.
        Some(SHARD_LEASE_DURATION - 2 * RENEW_AFTER)
    }

    fn release<'a>(&'a self, shard: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut inner = self.inner.lock().await;
            inner.held.remove(shard);
            inner.written.remove(shard);
            let name = self.shard_lease_name(shard);
            let Ok(mut lease) = self.api.get(&name).await else { return };
            let Some(spec) = lease.spec.as_mut() else { return };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
            // Another replica may take it at once; a failed write just leaves it to expire.
            let _ = self.api.replace(&name, &PostParams::default(), &lease).await;
            info!(reader = %self.reader, shard, "Released the shard's lease.");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fair_share_takes_up_to_ceil_and_gives_up_one_above_it() {
        // Alone: every shard.
        assert_eq!(fair_share(4, 1, 0, 4), (4, false));
        // A second replica appears while the first holds all four: the first gives one up at a
        // time, the second takes what is free up to two.
        assert_eq!(fair_share(4, 2, 4, 0), (0, true));
        assert_eq!(fair_share(4, 2, 3, 0), (0, true));
        assert_eq!(fair_share(4, 2, 2, 0), (0, false));
        assert_eq!(fair_share(4, 2, 0, 1), (1, false));
        assert_eq!(fair_share(4, 2, 1, 2), (1, false));
        // Uneven: 5 over 2 → up to 3 each, nobody gives up at 3.
        assert_eq!(fair_share(5, 2, 3, 0), (0, false));
        assert_eq!(fair_share(0, 3, 0, 0), (0, false));
    }

    #[test]
    fn a_replica_takes_a_free_worker_lease_before_a_new_slot() {
        let w = |slot: &str| format!("kinesis-h-worker-{slot}");
        let none = BTreeMap::new();
        assert_eq!(worker_slot("h", &none), w("0"));
        // Replicas gone in earlier rollouts leave free Leases: reused, so they never pile up.
        let after_rollout = BTreeMap::from([(w("0"), Verdict::Taken), (w("1"), Verdict::Free)]);
        assert_eq!(worker_slot("h", &after_rollout), w("1"));
        let busy = BTreeMap::from([(w("0"), Verdict::Taken), (w("2"), Verdict::Taken)]);
        assert_eq!(worker_slot("h", &busy), w("1"), "the lowest unused slot");
        // An earlier version's Lease named after its replica is a free slot too.
        let legacy = BTreeMap::from([(w("0"), Verdict::Taken), ("kinesis-h-worker-0123456789".into(), Verdict::Free)]);
        assert_eq!(worker_slot("h", &legacy), "kinesis-h-worker-0123456789");
    }

    #[test]
    fn checkpoints_round_trip_through_lease_annotations() {
        let mut lease = Lease::default();
        let c = ShardCheckpoint {
            sequence: Some("4959".into()),
            finished: true,
            started_at_ms: Some(17),
            stream: Some("arn:aws:kinesis:us-east-1:1:stream/s@1700000000000".into()),
        };
        set_checkpoint(&mut lease, &c);
        assert_eq!(checkpoint_of(&lease), c);
        let later = ShardCheckpoint { sequence: Some("5000".into()), ..ShardCheckpoint::default() };
        set_checkpoint(&mut lease, &later);
        assert_eq!(checkpoint_of(&lease), later, "cleared fields are removed");
        assert_eq!(name_safe("shardId-000000000003"), "shardid-000000000003");
    }
}
