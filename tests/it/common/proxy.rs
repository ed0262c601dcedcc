//! A TCP proxy on loopback that can hang: while hung it keeps every connection open and accepts
//! new ones but forwards no byte either way (a half-open connection, as a dead node or a
//! blackholing firewall leaves it).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct HangingProxy {
    pub port: u16,
    hung: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingProxy {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hung = Arc::new(watch::Sender::new(false));
        let task = tokio::spawn({
            let hung = hung.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let hung = hung.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else { return };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(relay(cr, sw, hung.clone()), relay(sr, cw, hung));
                    });
                }
            }
        });
        Self { port, hung, task }
    }

    /// From now on no byte passes, on open connections or new ones.
    pub fn hang(&self) {
        self.hung.send_replace(true);
    }
}

impl Drop for HangingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hung: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let now_hung = *hung.borrow_and_update();
        if now_hung {
            return std::future::pending().await;
        }
        let n = tokio::select! {
            n = from.read(&mut buf) => match n { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = hung.changed() => continue,
        };
        let now_hung = *hung.borrow();
        if now_hung {
            return std::future::pending().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy on loopback handing each new connection to the next of its backends in turn, as
/// kube-proxy spreads connections over a Service's pods; backends ("pods") can be added.
pub struct RoundRobinProxy {
    pub port: u16,
    backends: Arc<std::sync::Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobinProxy {
    pub async fn start(first_backend: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let backends = Arc::new(std::sync::Mutex::new(vec![first_backend]));
        let task = tokio::spawn({
            let backends = backends.clone();
            async move {
                let mut next = 0usize;
                while let Ok((client, _)) = listener.accept().await {
                    let target = {
                        let b = backends.lock().expect("lock");
                        next += 1;
                        b[(next - 1) % b.len()]
                    };
                    tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            }
        });
        Self { port, backends, task }
    }

    /// Another backend: it gets every other new connection from now on.
    pub fn add_backend(&self, port: u16) {
        self.backends.lock().expect("lock").push(port);
    }
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP proxy in front of a Kinesis emulator that answers the `fail`-th `GetRecords` call (and
/// only it) with a 400 the SDK does not retry, as a real error mid-stream would surface.
pub struct KinesisFaults {
    pub endpoint: String,
    pub get_records: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl KinesisFaults {
    pub async fn start(upstream: &str, fail: usize) -> Self {
        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;
        use std::sync::atomic::{AtomicUsize, Ordering};

        struct Fwd {
            upstream: String,
            client: reqwest::Client,
            calls: Arc<AtomicUsize>,
            fail: usize,
        }
        async fn forward(
            State(f): State<Arc<Fwd>>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
            if target.ends_with(".GetRecords") && f.calls.fetch_add(1, Ordering::SeqCst) + 1 == f.fail {
                let body = r#"{"__type":"AccessDeniedException","message":"injected by the test"}"#;
                return (StatusCode::BAD_REQUEST, [("content-type", "application/x-amz-json-1.1")], body)
                    .into_response();
            }
            let url = format!("{}{}", f.upstream, uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
            let mut request = f.client.request(method, url).body(body);
            for (name, value) in &headers {
                if name != "host" && name != "content-length" {
                    request = request.header(name, value);
                }
            }
            let Ok(resp) = request.send().await else { return StatusCode::BAD_GATEWAY.into_response() };
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let content_type =
                resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let body = resp.bytes().await.unwrap_or_default();
            (status, [("content-type", content_type)], body).into_response()
        }

        let calls = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(Fwd {
            upstream: upstream.to_string(),
            client: reqwest::Client::new(),
            calls: calls.clone(),
            fail,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let app = axum::Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, get_records: calls, task }
    }
}

impl Drop for KinesisFaults {
    fn drop(&mut self) {
        self.task.abort();
    }
}
