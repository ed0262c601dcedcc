//! Stream helpers for the CLI and the tests: create a stream, wait for it, put records, reshard.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{ScalingType, StreamStatus};
use aws_sdk_kinesis::Client;

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

/// Puts one record; returns its sequence number.
pub async fn put_record(client: &Client, stream: &str, key: &str, data: &[u8]) -> Result<String, String> {
    let out = client
        .put_record()
        .stream_name(stream)
        .partition_key(key)
        .data(Blob::new(data))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(out.sequence_number().to_string())
}

/// Reshards to `shards` shards (uniform scaling) and waits until the stream is ACTIVE again.
pub async fn update_shard_count(client: &Client, stream: &str, shards: i32) -> Result<(), String> {
    client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(shards)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    wait_active(client, stream).await
}
