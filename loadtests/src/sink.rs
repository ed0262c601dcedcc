//! The sink stands in for functions: a keep-alive HTTP/1.1 server that answers every POST/GET on
//! any path after a configurable latency, fails a configurable share with 500, and records receive
//! counts per path and end-to-end latency (receive time − the send time stamped in the body) in an
//! HDR histogram. `GET /_stats` reports; `POST /_reset?latency_ms=&error_rate=` clears and
//! reconfigures between scenarios.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::payload;

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Behaviour {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub error_rate: f64,
}

struct Sink {
    behaviour: Mutex<Behaviour>,
    received: AtomicU64,
    failed: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    per_path: Mutex<HashMap<String, u64>>,
    latency_us: Mutex<Histogram<u64>>,
}

/// What `GET /_stats` answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Requests answered 2xx.
    pub received: u64,
    /// Requests answered 500 (the configured error rate).
    pub failed: u64,
    /// Receive time of the first and the last request, µs since the epoch (0: none yet).
    pub first_us: u64,
    pub last_us: u64,
    pub per_path: HashMap<String, u64>,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Stats {
    /// Requests per second between the first and the last one.
    pub fn rate(&self) -> f64 {
        let span = self.last_us.saturating_sub(self.first_us) as f64 / 1e6;
        if self.received < 2 || span <= 0.0 {
            return 0.0;
        }
        (self.received - 1) as f64 / span
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant figures.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
}

pub async fn serve(addr: SocketAddr, behaviour: Behaviour) -> anyhow::Result<()> {
    let sink = Arc::new(Sink {
        behaviour: Mutex::new(behaviour),
        received: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_us: AtomicU64::new(0),
        last_us: AtomicU64::new(0),
        per_path: Mutex::new(HashMap::new()),
        latency_us: Mutex::new(histogram()),
    });
    let app =
        Router::new().route("/_stats", get(stats)).route("/_reset", post(reset)).fallback(receive).with_state(sink);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("sink listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn receive(State(sink): State<Arc<Sink>>, uri: Uri, body: Bytes) -> StatusCode {
    let now = payload::now_micros();
    let behaviour = *sink.behaviour.lock().unwrap_or_else(|e| e.into_inner());
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    if behaviour.error_rate > 0.0 && rand::random::<f64>() < behaviour.error_rate {
        sink.failed.fetch_add(1, Ordering::Relaxed);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if let Some(sent) = payload::sent_micros(&body) {
        let mut h = sink.latency_us.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(now.saturating_sub(sent).max(1));
    }
    {
        let mut paths = sink.per_path.lock().unwrap_or_else(|e| e.into_inner());
        match paths.get_mut(uri.path()) {
            Some(n) => *n += 1,
            None => {
                paths.insert(uri.path().to_string(), 1);
            }
        }
    }
    let _ = sink.first_us.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    sink.last_us.fetch_max(now, Ordering::Relaxed);
    sink.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

async fn stats(State(sink): State<Arc<Sink>>) -> Json<Stats> {
    let h = sink.latency_us.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Json(Stats {
        received: sink.received.load(Ordering::Relaxed),
        failed: sink.failed.load(Ordering::Relaxed),
        first_us: sink.first_us.load(Ordering::Relaxed),
        last_us: sink.last_us.load(Ordering::Relaxed),
        per_path: sink.per_path.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    })
}

async fn reset(State(sink): State<Arc<Sink>>, Query(behaviour): Query<Behaviour>) -> StatusCode {
    *sink.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    sink.received.store(0, Ordering::Relaxed);
    sink.failed.store(0, Ordering::Relaxed);
    sink.first_us.store(0, Ordering::Relaxed);
    sink.last_us.store(0, Ordering::Relaxed);
    sink.per_path.lock().unwrap_or_else(|e| e.into_inner()).clear();
    sink.latency_us.lock().unwrap_or_else(|e| e.into_inner()).reset();
    StatusCode::NO_CONTENT
}
