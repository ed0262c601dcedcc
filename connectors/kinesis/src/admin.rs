//! Stream helpers for the tests and load tests: create a stream, wait for it, put records, reshard.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::StreamStatus;
use aws_sdk_kinesis::Client;

/// A client for an emulator (moto_server, kinesalite) at `endpoint`: region us-east-1, keys `testing`.
pub async fn emulator_client(endpoint: &str) -> Client {
    crate::client("us-east-1", Some(endpoint), Some(("testing", "testing"))).await
}

/// Creates a stream with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(client: &Client, stream: &str, shards: i32) -> Result<(), String> {
    client.create_stream().stream_name(stream).shard_count(shards).send().await.map_err(|e| e.to_string())?;
    wait_active(client, stream).await
}

/// Waits (up to a minute) until the stream is ACTIVE.
pub async fn wait_active(client: &Client, stream: &str) -> Result<(), String> {
    for _ in 0..600 {
        let out = client.describe_stream_summary().stream_name(stream).send().await.map_err(|e| e.to_string())?;
        if out.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("stream {stream} did not become ACTIVE"))
}

/// Puts one record; returns the shard it landed on and its sequence number.
pub async fn put_record(client: &Client, stream: &str, key: &str, data: &[u8]) -> Result<(String, String), String> {
    let out = client
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok((out.shard_id().to_string(), out.sequence_number().to_string()))
}

/// Splits every open shard at the middle of its hash-key range (SplitShard, one at a time, waiting
/// until the stream is ACTIVE after each), doubling the open shards. Returns the ids of the shards
/// that were split, which are now closed. This is how an emulator without UpdateShardCount
/// (kinesalite) reshards 2 → 4.
pub async fn split_open_shards(client: &Client, stream: &str) -> Result<Vec<String>, String> {
    let shards = client.list_shards().stream_name(stream).send().await.map_err(|e| e.to_string())?;
    let open: Vec<(String, u128, u128)> = shards
        .shards()
        .iter()
        .filter(|s| s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_none())
        .map(|s| {
            let range = s.hash_key_range().ok_or_else(|| format!("shard {} has no hash-key range", s.shard_id()))?;
            let parse = |v: &str| v.parse::<u128>().map_err(|e| format!("shard {} hash key {v}: {e}", s.shard_id()));
            Ok((s.shard_id().to_string(), parse(range.starting_hash_key())?, parse(range.ending_hash_key())?))
        })
        .collect::<Result<_, String>>()?;
    for (shard, start, end) in &open {
        let middle = start + (end - start) / 2 + 1;
        client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard)
            .new_starting_hash_key(middle.to_string())
            .send()
            .await
            .map_err(|e| format!("split {shard}: {e}"))?;
        wait_active(client, stream).await?;
    }
    Ok(open.into_iter().map(|(shard, _, _)| shard).collect())
}
