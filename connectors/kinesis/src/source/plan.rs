//! Which shards to start reading, and where: the shard list, and the plan that starts a shard only
//! once its parents are finished.

use std::collections::HashSet;

use aws_sdk_kinesis::Client;
use kubeless_connector::Failure;

use super::sdk_failure;
use crate::checkpoint::ShardCheckpoint;
use crate::config::{KinesisSourceConfig, StartingPosition};

/// Which shards to start reading now, and where. A shard starts only when every parent is finished
/// (or gone from the stream), so records of one partition key are delivered in order across
/// resharding. Where it starts: after its checkpoint; else at TRIM_HORIZON if this reader read a
/// parent (its children hold the rest of those keys' records); else at the configured position.
/// A shard that was already closed before this reader ever saw it, with `LATEST`, holds nothing
/// new: it is marked finished without reading.
pub(super) fn plan_readers(
    shards: &[ShardInfo],
    config: &KinesisSourceConfig,
    checkpoints: &std::collections::BTreeMap<String, ShardCheckpoint>,
    running: &HashSet<String>,
    finished: &mut HashSet<String>,
    read: &HashSet<String>,
) -> Vec<(String, Start)> {
    let mut plan = Vec::new();
    for shard in shards.iter().filter(|s| config.shard.as_ref().is_none_or(|only| *only == s.id)) {
        if running.contains(&shard.id) || finished.contains(&shard.id) {
            continue;
        }
        let parents_done = shard.parents.iter().all(|p| finished.contains(p) || !shards.iter().any(|s| &s.id == p));
        if !parents_done {
            continue;
        }
        let checkpoint = checkpoints.get(&shard.id);
        let start = match (checkpoint.and_then(|c| c.sequence.clone()), checkpoint.and_then(|c| c.started_at_ms)) {
            (Some(seq), _) => Start::After(seq),
            (None, Some(ms)) => Start::Since(ms),
            (None, None) if shard.parents.iter().any(|p| read.contains(p)) => Start::TrimHorizon,
            (None, None) if shard.closed && config.starting_position == StartingPosition::Latest => {
                finished.insert(shard.id.clone());
                continue;
            }
            (None, None) => Start::Configured,
        };
        plan.push((shard.id.clone(), start));
    }
    plan
}

pub(super) struct ShardInfo {
    pub(super) id: String,
    parents: Vec<String>,
    closed: bool,
}

pub(super) async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, Failure> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let page = req.send().await.map_err(|e| sdk_failure(&format!("ListShards on {stream}"), &e))?;
        for s in page.shards() {
            let parents =
                [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten().map(str::to_string).collect();
            let closed = s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_some();
            out.push(ShardInfo { id: s.shard_id().to_string(), parents, closed });
        }
        match page.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(out),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Start {
    After(String),
    /// Where an earlier reader started at `LATEST` before checkpointing any record (ms).
    Since(i64),
    TrimHorizon,
    Configured,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
        ShardInfo { id: id.into(), parents: parents.iter().map(|p| p.to_string()).collect(), closed }
    }

    fn config(start: StartingPosition) -> KinesisSourceConfig {
        KinesisSourceConfig {
            stream: "s".into(),
            region: "us-east-1".into(),
            endpoint: None,
            credentials: None,
            shard: None,
            starting_position: start,
            checkpoint_dir: std::path::PathBuf::new(),
            checkpoint_key: "k".into(),
            legacy_checkpoint_key: None,
            poll_interval: Duration::from_millis(250),
            drain_timeout: Duration::from_secs(1),
            max_uncommitted: 100,
        }
    }

    /// After resharding 2 → 4 (0 → 2,3 and 1 → 4,5), as AWS lists it.
    fn resharded() -> Vec<ShardInfo> {
        vec![
            shard("p0", &[], true),
            shard("p1", &[], true),
            shard("c2", &["p0"], false),
            shard("c3", &["p0"], false),
            shard("c4", &["p1"], false),
            shard("c5", &["p1"], false),
        ]
    }

    #[test]
    fn children_wait_for_their_parents_then_start_at_trim_horizon() {
        let cfg = config(StartingPosition::Latest);
        let checkpoints: std::collections::BTreeMap<String, ShardCheckpoint> =
            [("p0".to_string(), ShardCheckpoint { sequence: Some("10".into()), ..ShardCheckpoint::default() })].into();
        let read: HashSet<String> = ["p0".to_string(), "p1".to_string()].into();
        let mut finished = HashSet::new();
        // Parents still being read: no child may start.
        let running: HashSet<String> = read.clone();
        assert!(plan_readers(&resharded(), &cfg, &checkpoints, &running, &mut finished, &read).is_empty());
        // p0 finished: its children start from their first record; p1's still wait.
        finished.insert("p0".to_string());
        let running: HashSet<String> = ["p1".to_string()].into();
        let plan = plan_readers(&resharded(), &cfg, &checkpoints, &running, &mut finished, &read);
        assert_eq!(plan, vec![("c2".to_string(), Start::TrimHorizon), ("c3".to_string(), Start::TrimHorizon)]);
    }

    #[test]
    fn a_restart_resumes_each_shard_after_its_checkpoint() {
        let cfg = config(StartingPosition::Latest);
        let checkpoints: std::collections::BTreeMap<String, ShardCheckpoint> = [
            (
                "p0".to_string(),
                ShardCheckpoint { sequence: Some("10".into()), finished: true, ..ShardCheckpoint::default() },
            ),
            ("p1".to_string(), ShardCheckpoint { sequence: Some("20".into()), ..ShardCheckpoint::default() }),
        ]
        .into();
        let mut finished: HashSet<String> = ["p0".to_string()].into();
        let read: HashSet<String> = checkpoints.keys().cloned().collect();
        let plan = plan_readers(&resharded(), &cfg, &checkpoints, &HashSet::new(), &mut finished, &read);
        assert_eq!(
            plan,
            vec![
                ("p1".to_string(), Start::After("20".into())),
                ("c2".to_string(), Start::TrimHorizon),
                ("c3".to_string(), Start::TrimHorizon)
            ]
        );
    }

    #[test]
    fn a_new_latest_reader_skips_shards_closed_before_it_and_starts_children_at_latest() {
        let cfg = config(StartingPosition::Latest);
        let mut finished = HashSet::new();
        let none = std::collections::BTreeMap::new();
        let plan = plan_readers(&resharded(), &cfg, &none, &HashSet::new(), &mut finished, &HashSet::new());
        assert!(finished.contains("p0") && finished.contains("p1"), "closed parents are not read");
        // Their children start in the same pass, at the configured position (no history replay).
        assert_eq!(plan.len(), 4);
        assert!(plan.iter().all(|(id, s)| id.starts_with('c') && *s == Start::Configured), "{plan:?}");
    }
}
