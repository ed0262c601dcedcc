//! The ceiling: the sink driven by a plain keep-alive HTTP/1.1 load generator, `concurrency`
//! requests in flight, each a POST of a stamped body, for a fixed time. No dispatcher that makes one
//! request per message can deliver faster than this to the same sink on the same machine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;

use crate::payload;

/// Which HTTP client drives the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    Reqwest,
    Hyper,
}

/// What a ceiling run measured.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Requests per second answered 2xx.
    pub rate: f64,
    /// CPU this process (the load generator) spent per request, in microseconds.
    pub client_cpu_us: f64,
}

/// Requests per second answered 2xx over `duration`, after a one-second warm-up.
pub async fn measure(
    url: &str,
    concurrency: usize,
    size: usize,
    duration: Duration,
    kind: ClientKind,
) -> anyhow::Result<Measured> {
    let ok = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::with_capacity(concurrency);
    let reqwest = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let hyper = HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(concurrency).build_http();
    let uri: hyper::Uri = url.parse()?;
    for _ in 0..concurrency {
        let (reqwest, hyper, uri, url, ok, counting, stop) =
            (reqwest.clone(), hyper.clone(), uri.clone(), url.to_string(), ok.clone(), counting.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let success = match kind {
                    ClientKind::Reqwest => {
                        let sent = reqwest.post(&url).body(payload::stamped(size)).send().await;
                        match sent {
                            Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                            Err(_) => false,
                        }
                    }
                    ClientKind::Hyper => {
                        let req = hyper::Request::post(uri.clone())
                            .body(Full::new(Bytes::from(payload::stamped(size))))
                            .map_err(anyhow::Error::from);
                        match req {
                            Ok(req) => match hyper.request(req).await {
                                Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                                Err(_) => false,
                            },
                            Err(_) => false,
                        }
                    }
                };
                if success && counting.load(Ordering::Relaxed) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let me = std::process::id() as i32;
    let cpu = crate::procs::cpu_seconds(me)?;
    let start = Instant::now();
    tokio::time::sleep(duration).await;
    let done = ok.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = crate::procs::cpu_seconds(me)? - cpu;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    Ok(Measured { rate: done as f64 / elapsed, client_cpu_us: 1e6 * cpu / (done.max(1) as f64) })
}
