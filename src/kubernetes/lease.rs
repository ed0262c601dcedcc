//! Leases on `coordination.k8s.io/v1`, as client-go's leader election uses them: a holder renews
//! its lease; another replica takes it only once it has seen the same record, unrenewed, for a whole
//! lease duration (measured on its own clock, so clock skew between nodes does not matter); every
//! write is a replace checked against the resourceVersion read, so two replicas never both win.
//!
//! The arithmetic is pure ([`Observer`]); [`LeaseLock`] does the API calls and [`elect`] keeps a
//! leader flag up to date on a watch channel.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a lease holds without renewal (client-go's default).
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that has not renewed for this long stops acting as one (before anyone may take over).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a lease is renewed, or tried for.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// What identifies one holding of a lease: any renewal or change of holder changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub renewed: Option<String>,
    pub transitions: i32,
    pub duration: Duration,
}

impl Record {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty()),
            renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()),
            transitions: spec.and_then(|s| s.lease_transitions).unwrap_or(0),
            duration: Duration::from_secs(
                spec.and_then(|s| s.lease_duration_seconds).and_then(|d| u64::try_from(d).ok()).unwrap_or(0),
            ),
        }
    }
}

/// Who may hold a lease, from what this replica has seen of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// This replica holds it: renew.
    Mine,
    /// Nobody holds it, or its holder has not renewed for a lease duration: take it.
    Free,
    /// Someone else holds it.
    Taken,
}

/// When each lease's record was first seen as it is, on this replica's clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: BTreeMap<String, (Record, Instant)>,
}

impl Observer {
    /// Notes `record` for lease `name` as seen at `now`, and says who may hold it.
    pub fn verdict(&mut self, name: &str, record: &Record, me: &str, now: Instant) -> Verdict {
        let since = match self.seen.get(name) {
            Some((seen, at)) if seen == record => *at,
            _ => {
                self.seen.insert(name.to_string(), (record.clone(), now));
                now
            }
        };
        match &record.holder {
            Some(h) if h == me => Verdict::Mine,
            None => Verdict::Free,
            Some(_) if now.saturating_duration_since(since) >= record.duration => Verdict::Free,
            Some(_) => Verdict::Taken,
        }
    }

    /// Forgets leases not in `names` (deleted).
    pub fn retain(&mut self, names: &std::collections::BTreeSet<String>) {
        self.seen.retain(|n, _| names.contains(n));
    }
}

/// The spec that holds (or renews) a lease for `me`.
pub fn held_spec(previous: Option<&LeaseSpec>, me: &str, duration: Duration) -> LeaseSpec {
    let now = MicroTime(Timestamp::now());
    let mine = previous.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if mine { previous.and_then(|p| p.acquire_time.clone()) } else { Some(now.clone()) },
        renew_time: Some(now),
        lease_transitions: Some(if mine || previous.is_none() { transitions } else { transitions + 1 }),
        ..LeaseSpec::default()
    }
}

/// True for the API's "someone else wrote first" answers.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One named lease, held for one identity.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observer: Observer,
}

impl LeaseLock {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self { api, name: name.to_string(), identity: identity.to_string(), duration, observer: Observer::default() }
    }

    /// Takes or renews the lease; true if this replica holds it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(held_spec(None, &self.identity, self.duration)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let record = Record::of(&lease);
        if self.observer.verdict(&self.name, &record, &self.identity, Instant::now()) == Verdict::Taken {
            return Ok(false);
        }
        lease.spec = Some(held_spec(lease.spec.as_ref(), &self.identity, self.duration));
        // `replace` sends the resourceVersion read above: a concurrent writer makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Keeps `leading` true while this replica holds the lease, until `stop`; then releases it. A
/// leader that cannot renew for [`RENEW_DEADLINE`] steps down before anyone else may take over.
pub async fn elect(mut lock: LeaseLock, leading: watch::Sender<bool>, stop: CancellationToken) {
    let mut renewed: Option<Instant> = None;
    loop {
        // A call on a hung connection must not hold `leading` past the renew deadline.
        let left = renewed.map_or(RENEW_DEADLINE, |at| RENEW_DEADLINE.saturating_sub(at.elapsed()));
        let attempt = tokio::time::timeout(left.max(Duration::from_millis(100)), lock.try_acquire_or_renew()).await;
        let holds = match attempt.unwrap_or_else(|_| Err(kube::Error::Service("the lease call timed out".into()))) {
            Ok(true) => {
                renewed = Some(Instant::now());
                true
            }
            Ok(false) => {
                renewed = None;
                false
            }
            Err(e) => {
                warn!(lease = %lock.name, error = %kubeless_connector::error_chain(&e), "Cannot renew the leader lease.");
                renewed.is_some_and(|at| at.elapsed() < RENEW_DEADLINE)
            }
        };
        crate::telemetry::set_leader(holds);
        let was = leading.send_replace(holds);
        if holds != was {
            info!(lease = %lock.name, identity = %lock.identity, leading = holds, "Leadership changed.");
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PERIOD) => {}
            () = stop.cancelled() => break,
        }
    }
    leading.send_replace(false);
    crate::telemetry::set_leader(false);
    if let Err(e) = lock.release().await {
        warn!(lease = %lock.name, error = %kubeless_connector::error_chain(&e), "Cannot release the leader lease; another replica takes over when it expires.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, renewed: &str) -> Record {
        Record {
            holder: holder.map(str::to_string),
            renewed: Some(renewed.to_string()),
            transitions: 0,
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_held_lease_is_free_only_after_a_full_duration_unrenewed_on_our_clock() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let held = record(Some("a"), "T1");
        assert_eq!(o.verdict("l", &held, "b", t0), Verdict::Taken);
        assert_eq!(o.verdict("l", &held, "b", t0 + Duration::from_secs(14)), Verdict::Taken);
        // A renewal restarts the wait, whatever its timestamp says.
        let renewed = record(Some("a"), "T2");
        assert_eq!(o.verdict("l", &renewed, "b", t0 + Duration::from_secs(14)), Verdict::Taken);
        assert_eq!(o.verdict("l", &renewed, "b", t0 + Duration::from_secs(28)), Verdict::Taken);
        assert_eq!(o.verdict("l", &renewed, "b", t0 + Duration::from_secs(29)), Verdict::Free);
        assert_eq!(o.verdict("l", &renewed, "a", t0), Verdict::Mine);
        assert_eq!(o.verdict("other", &record(None, "T1"), "b", t0), Verdict::Free, "released");
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let first = held_spec(None, "a", LEASE_DURATION);
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.lease_duration_seconds, Some(15));
        let renewed = held_spec(Some(&first), "a", LEASE_DURATION);
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let taken = held_spec(Some(&renewed), "b", LEASE_DURATION);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
    }
}
