//! The function fixture: an HTTP server on loopback that answers with a scripted [`Behaviour`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;

/// One request a function received.
#[derive(Debug, Clone)]
pub struct Received {
    pub key: String,
    pub body: String,
    pub headers: HashMap<String, String>,
}

/// How a function answers.
#[derive(Clone)]
pub enum Behaviour {
    Ok,
    /// Answers 200 after this long.
    Slow(Duration),
    /// Answers each status in turn for every new body, then 200.
    FailFirst(Vec<u16>),
    /// Always answers this status.
    Status(u16),
    /// Answers 503 to this body until [`Function::heal`], 200 to every other.
    Poison(String),
}

/// An HTTP function on loopback that records what it receives.
pub struct Function {
    pub url: String,
    state: Arc<FnState>,
}

struct FnState {
    behaviour: Behaviour,
    received: Mutex<Vec<Received>>,
    /// Requests answered 2xx.
    delivered: AtomicUsize,
    /// Requests being handled (a handler dropped mid-way counts down too).
    in_flight: AtomicUsize,
    /// Requests seen per body, for FailFirst.
    attempts: Mutex<HashMap<String, usize>>,
    healed: std::sync::atomic::AtomicBool,
}

/// Counts a request as in flight until its handler ends or is dropped.
struct InFlight(Arc<FnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(State(s): State<Arc<FnState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    s.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(s.clone());
    let body = String::from_utf8_lossy(&body).into_owned();
    let status = match &s.behaviour {
        Behaviour::Ok => 200,
        Behaviour::Slow(d) => {
            tokio::time::sleep(*d).await;
            200
        }
        Behaviour::Status(code) => *code,
        Behaviour::Poison(poison) if *poison == body && !s.healed.load(Ordering::SeqCst) => 503,
        Behaviour::Poison(_) => 200,
        Behaviour::FailFirst(script) => {
            let mut attempts = s.attempts.lock().expect("lock");
            let n = attempts.entry(body.clone()).or_default();
            *n += 1;
            script.get(*n - 1).copied().unwrap_or(200)
        }
    };
    let headers: HashMap<String, String> =
        headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    let key = headers.get("event-key").cloned().unwrap_or_default();
    s.received.lock().expect("lock").push(Received { key, body, headers });
    if (200..300).contains(&status) {
        s.delivered.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

impl Function {
    pub async fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(FnState {
            behaviour,
            received: Mutex::new(Vec::new()),
            delivered: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            attempts: Mutex::new(HashMap::new()),
            healed: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // No request size limit: tests send bodies of many MiB.
        let app =
            Router::new().fallback(handle).with_state(state.clone()).layer(axum::extract::DefaultBodyLimit::disable());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, state }
    }

    /// Everything received, in arrival order (failed attempts included).
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    /// How many times each body arrived.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut c = HashMap::new();
        for r in self.state.received.lock().expect("lock").iter() {
            *c.entry(r.body.clone()).or_default() += 1;
        }
        c
    }

    /// Requests that arrived and are not yet answered (or abandoned).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// A [`Behaviour::Poison`] function accepts its poison from now on.
    pub fn heal(&self) {
        self.state.healed.store(true, Ordering::SeqCst);
    }

    pub fn delivered(&self) -> usize {
        self.state.delivered.load(Ordering::SeqCst)
    }
}
