//! Cron ticks on the API: each CronJobTrigger's last fired tick is its `status.lastScheduleTime`
//! (as for a Kubernetes CronJob). A tick is claimed with a merge patch carrying the resourceVersion
//! just read: if another replica wrote in between, the API answers 409 and the claim is read again,
//! so whatever the leases say, no tick is ever fired by two replicas.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::Client;

use super::lease::is_conflict;
use super::watch::api_resource;
use crate::cron::state::{StateError, TickStore};
use crate::resources::Kind;

/// Conflicting writes (a status write racing the claim) before a claim gives up.
const CLAIM_ATTEMPTS: usize = 5;

pub struct ApiTickStore {
    client: Client,
    field_manager: String,
    /// Shared with the status writer: a claim is a write like any other.
    writes: super::ApiWrites,
}

impl ApiTickStore {
    pub fn new(client: Client, field_manager: &str, writes: super::ApiWrites) -> Self {
        Self { client, field_manager: format!("{field_manager}-cron"), writes }
    }

    fn api(&self, trigger: &str) -> Result<(Api<DynamicObject>, String), StateError> {
        let (namespace, name) = trigger.split_once('/').ok_or_else(|| StateError::Api {
            trigger: trigger.to_string(),
            reason: "not a namespace/name reference".to_string(),
        })?;
        let api = Api::namespaced_with(self.client.clone(), namespace, &api_resource(Kind::CronJobTrigger));
        Ok((api, name.to_string()))
    }

    /// The object's resourceVersion and last fired tick.
    async fn read(&self, trigger: &str) -> Result<(Option<String>, Option<DateTime<Utc>>), StateError> {
        let (api, name) = self.api(trigger)?;
        let obj = api.get_status(&name).await.map_err(|e| api_error(trigger, &e))?;
        let last = obj.data["status"]["lastScheduleTime"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok((obj.metadata.resource_version, last))
    }
}

fn api_error(trigger: &str, e: &kube::Error) -> StateError {
    StateError::Api { trigger: trigger.to_string(), reason: kubeless_connector::error_chain(e) }
}

impl TickStore for ApiTickStore {
    fn last_fired<'a>(&'a self, trigger: &'a str) -> BoxFuture<'a, Result<Option<DateTime<Utc>>, StateError>> {
        Box::pin(async move { Ok(self.read(trigger).await?.1) })
    }

    fn claim<'a>(&'a self, trigger: &'a str, tick: DateTime<Utc>) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let (api, name) = self.api(trigger)?;
            for _ in 0..CLAIM_ATTEMPTS {
                self.writes.until_ready().await;
                let (version, last) = self.read(trigger).await?;
                if last.is_some_and(|l| l >= tick) {
                    return Ok(false);
                }
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": version},
                    // Full precision: an `@every 1500ms` tick claimed at whole seconds would look unclaimed.
                    "status": {"lastScheduleTime": tick.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)},
                });
                let params = PatchParams { field_manager: Some(self.field_manager.clone()), ..PatchParams::default() };
                match api.patch_status(&name, &params, &Patch::Merge(&patch)).await {
                    Ok(_) => return Ok(true),
                    Err(e) if is_conflict(&e) => continue,
                    Err(e) => return Err(api_error(trigger, &e)),
                }
            }
            Err(StateError::Api {
                trigger: trigger.to_string(),
                reason: format!("{CLAIM_ATTEMPTS} conflicting writes while claiming tick {tick}"),
            })
        })
    }
}
