//! The ceiling: the sink driven by a plain keep-alive HTTP/1.1 load generator, `concurrency`
//! requests in flight, each a POST of a stamped body, for a fixed time. No dispatcher that makes one
//! request per message can deliver faster than this to the same sink on the same machine. It uses
//! reqwest, the daemon's own HTTP client, so the ratio isolates what the dispatcher adds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::payload;

/// Requests per second answered 2xx over `duration`, after a one-second warm-up.
pub async fn measure(url: &str, concurrency: usize, size: usize, duration: Duration) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let ok = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, url, ok, counting, stop) =
            (client.clone(), url.to_string(), ok.clone(), counting.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = client.post(&url).body(payload::stamped(size)).send().await;
                if matches!(&sent, Ok(r) if r.status().is_success()) && counting.load(Ordering::Relaxed) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let done = ok.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    Ok(done as f64 / elapsed)
}
