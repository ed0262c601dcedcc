//! JetStream durables the daemon created, deleted from the server once no trigger wants them (the
//! trigger was deleted, or edited onto another durable). An orphan on an Interest or WorkQueue stream
//! pins messages until the stream fills, and a WorkQueue stream refuses an edited trigger's new
//! durable while the old one holds its subject. Only the leader deletes:
//!
//! - a durable that leaves the desired state, after its consumers had time to drain and commit on
//!   every replica (the drain timeout and a margin);
//! - on taking the lead and every ten minutes, any durable on a stream a trigger reads whose
//!   description says the daemon made it for that trigger's namespace (`kubeless-broker ns/name`)
//!   and that no trigger wants: what was left while no replica was leading.
//!
//! Each deletion uses the connection settings (URL, credentials) of a trigger of the namespace that
//! owns the durable, so no namespace's triggers can reach another's durables.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kubeless_nats::NatsSourceConfig;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::spec::SourceSpec;
use crate::control::Snapshot;

/// Beyond the drain timeout, how long a durable that left the desired state is kept (replicas see
/// the change at slightly different times).
const GRACE: Duration = Duration::from_secs(15);
/// How often the leader looks for durables left while nobody was leading.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often due deletions are looked at.
const TICK: Duration = Duration::from_secs(2);
/// The longest one call to a NATS server may take.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// How long a deletion that keeps failing is retried.
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// One durable: by stream and name, whatever URL reaches its server (names are unique per
/// namespace, trigger, function and subject, so an edit of a trigger's `url` alone wants the same).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurableRef {
    pub stream: String,
    pub durable: String,
}

/// The durables the desired state wants, each with the settings of a consumer reading it: under
/// its name, and under the name an earlier version gave it (which a consumer goes on with).
pub fn wanted(snapshot: &Snapshot) -> BTreeMap<DurableRef, NatsSourceConfig> {
    let mut out = BTreeMap::new();
    for c in snapshot.desired.consumers.values() {
        let SourceSpec::Nats(n) = &c.source else { continue };
        let Some(stream) = &n.jetstream_stream else { continue };
        for durable in [kubeless_nats::durable_name(&n.group), kubeless_nats::legacy_durable_name(&n.group)] {
            out.insert(DurableRef { stream: stream.clone(), durable }, n.clone());
        }
    }
    out
}

/// The namespace a consumer's durable belongs to (its owner is `namespace/trigger`).
fn namespace_of(config: &NatsSourceConfig) -> &str {
    config.owner.split_once('/').map_or("", |(ns, _)| ns)
}

/// A durable waiting for its grace to pass.
struct Pending {
    config: NatsSourceConfig,
    due: Instant,
    since: Instant,
}

/// Deletes durables no trigger wants, while leading, until `stop`.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    leading: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    // Whether a loaded snapshot was seen: durables leaving the desired state are those of later ones.
    let mut loaded = false;
    let mut pending: BTreeMap<DurableRef, Pending> = BTreeMap::new();
    let mut last_sweep: Option<Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wants: BTreeMap<DurableRef, NatsSourceConfig> = BTreeMap::new();
    loop {
        let changed = tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return } else { true },
            _ = tick.tick() => false,
            () = stop.cancelled() => return,
        };
        let now = Instant::now();
        if changed {
            let snapshot = snapshots.borrow_and_update().clone();
            if !snapshot.loaded {
                continue;
            }
            let previous = std::mem::replace(&mut wants, wanted(&snapshot));
            if loaded {
                for (r, config) in previous {
                    if !wants.contains_key(&r) && !pending.contains_key(&r) {
                        let due = now + config.drain_timeout + GRACE;
                        pending.insert(r, Pending { config, due, since: now });
                    }
                }
            }
            loaded = true;
            pending.retain(|r, _| !wants.contains_key(r));
        }
        if !loaded {
            continue;
        }
        if !*leading.borrow() {
            last_sweep = None;
            continue;
        }
        let due: Vec<DurableRef> = pending.iter().filter(|(_, p)| p.due <= now).map(|(r, _)| r.clone()).collect();
        for r in due {
            let Some(p) = pending.get(&r) else { continue };
            match delete(&p.config, &r).await {
                Ok(_) => {
                    pending.remove(&r);
                }
                Err(e) if now.saturating_duration_since(p.since) >= GIVE_UP_AFTER => {
                    warn!(stream = %r.stream, durable = %r.durable, error = %e, "Giving up deleting a durable no trigger wants; the next sweep tries again.");
                    pending.remove(&r);
                }
                Err(e) => {
                    warn!(stream = %r.stream, durable = %r.durable, error = %e, "Cannot delete a durable no trigger wants yet; retrying.");
                    if let Some(p) = pending.get_mut(&r) {
                        p.due = now + Duration::from_secs(30);
                    }
                }
            }
        }
        if last_sweep.is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY) {
            last_sweep = Some(now);
            sweep(&wants, &pending).await;
        }
    }
}

/// Deletes one durable; `Ok(false)` if it was already gone.
async fn delete(config: &NatsSourceConfig, r: &DurableRef) -> Result<bool, String> {
    let call = async {
        let client = kubeless_nats::connect(&config.url, &config.auth, config.tls, config.ca_pem.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        kubeless_nats::delete_durable(&client, &r.stream, &r.durable).await.map_err(|e| e.to_string())
    };
    let deleted =
        tokio::time::timeout(CALL_DEADLINE, call).await.map_err(|_| "the server did not answer".to_string())??;
    if deleted {
        info!(stream = %r.stream, durable = %r.durable, owner = %config.owner, "Deleted the JetStream durable of a trigger that is gone.");
    }
    Ok(deleted)
}

/// Which owned durables to delete on one stream: those the namespace owns that no trigger wants
/// and none is waiting for its grace.
pub fn unwanted_on(
    owned: Vec<String>,
    stream: &str,
    wants: &BTreeMap<DurableRef, NatsSourceConfig>,
    pending: &BTreeSet<DurableRef>,
) -> Vec<DurableRef> {
    owned
        .into_iter()
        .map(|durable| DurableRef { stream: stream.to_string(), durable })
        .filter(|r| !wants.contains_key(r) && !pending.contains(r))
        .collect()
}

/// Deletes the durables left while nobody led: on each (server, stream, namespace) some trigger
/// reads, the ones the daemon made for that namespace that nothing wants.
async fn sweep(wants: &BTreeMap<DurableRef, NatsSourceConfig>, pending: &BTreeMap<DurableRef, Pending>) {
    let mut places: BTreeMap<(String, String), &NatsSourceConfig> = BTreeMap::new();
    for (r, config) in wants {
        places.entry((r.stream.clone(), namespace_of(config).to_string())).or_insert(config);
    }
    let pending: BTreeSet<DurableRef> = pending.keys().cloned().collect();
    for ((stream, namespace), config) in places {
        let call = async {
            let client = kubeless_nats::connect(&config.url, &config.auth, config.tls, config.ca_pem.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            // Younger durables are left: another replica may have just made one for a trigger
            // the leader has not seen yet.
            kubeless_nats::owned_durables(&client, &stream, &namespace, config.drain_timeout + GRACE)
                .await
                .map_err(|e| e.to_string())
        };
        let owned = match tokio::time::timeout(CALL_DEADLINE, call).await {
            Ok(Ok(owned)) => owned,
            Ok(Err(e)) => {
                warn!(stream = %stream, namespace = %namespace, error = %e, "Cannot list the stream's durables to clean up.");
                continue;
            }
            Err(_) => continue,
        };
        for r in unwanted_on(owned, &stream, wants, &pending) {
            if let Err(e) = delete(config, &r).await {
                warn!(stream = %r.stream, durable = %r.durable, error = %e, "Cannot delete a durable no trigger wants.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(owner: &str, group: &str) -> NatsSourceConfig {
        NatsSourceConfig {
            url: "nats://127.0.0.1:4222".into(),
            subject: "s".into(),
            group: group.into(),
            owner: owner.into(),
            jetstream_stream: Some("S".into()),
            max_ack_pending: 1,
            ack_wait: Duration::from_secs(1),
            auth: Default::default(),
            tls: false,
            ca_pem: None,
            drain_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn only_durables_nothing_wants_or_waits_for_are_swept() {
        let r = |d: &str| DurableRef { stream: "S".into(), durable: d.into() };
        let wants = BTreeMap::from([(r("a_t_f_s"), config("a/t", "a_t_f_s"))]);
        let pending = BTreeSet::from([r("a_old_f_s")]);
        let owned = vec!["a_t_f_s".to_string(), "a_old_f_s".to_string(), "a_gone_f_s".to_string()];
        let unwanted = unwanted_on(owned, "S", &wants, &pending);
        assert_eq!(unwanted, vec![r("a_gone_f_s")]);
        assert_eq!(namespace_of(&config("a/t", "g")), "a");
    }
}
