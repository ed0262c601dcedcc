//! The HTTP client every delivery shares: hyper's pooled keep-alive HTTP/1.1 client, no redirects
//! (a POST turned into a GET would lose the body), a per-request deadline for the status line and
//! headers, and responses read without buffering more than an error snippet. The status is the
//! function's answer: a body that never ends, trickles past the deadline or breaks off is read only
//! so far (up to `DRAIN_LIMIT`, within the same deadline), then the connection is dropped instead of
//! reused — a 200 followed by an endless body is still delivered, once.
//!
//! `https://` function URLs are verified against the system's trusted CAs (rustls-native-certs:
//! the OS store, or the bundle `SSL_CERT_FILE` / `SSL_CERT_DIR` name); `http://` ones are plain.
//!
//! hyper directly rather than reqwest: on the load tests' 2 cores reqwest spent 27 µs of CPU per
//! request against hyper's 14 µs (URL re-parsing, header merging and a second request type), and
//! the dispatcher makes one request per message.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::RETRY_AFTER;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::warn;

/// How much of a response body is kept, to explain a failure in logs and dead letters.
const SNIPPET: usize = 200;
/// Response bytes read so that the connection can be reused; a longer body costs the connection.
const DRAIN_LIMIT: usize = 8 << 20;

/// Idle keep-alive connections kept per function host.
const MAX_IDLE_PER_HOST: usize = 256;
/// How long an idle keep-alive connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Pooled = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One generation of pooled connections, used for new requests until it expires.
struct Generation {
    client: Pooled,
    expires: Option<tokio::time::Instant>,
}

/// A pooled HTTP/1.1 client; cheap to clone.
///
/// With a connection lifetime, the pool is replaced by a fresh one when it reaches that age: new
/// requests open new connections (which kube-proxy spreads over the pods that exist now), requests
/// in flight finish on the old ones, which then close.
#[derive(Clone)]
pub struct HttpClient {
    current: Arc<arc_swap::ArcSwap<Generation>>,
    connector: HttpsConnector<HttpConnector>,
    lifetime: Option<Duration>,
}

/// What a function answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The first bytes of a failure's body (the rest, and a success's whole body, is read and
    /// dropped, so the connection goes back to the pool).
    pub snippet: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
}

impl HttpClient {
    /// A client trusting the system's CAs for `https://` functions.
    pub fn new() -> Self {
        Self::with_roots(system_roots())
    }

    /// A client trusting exactly `roots` for `https://` functions.
    pub fn with_roots(roots: rustls::RootCertStore) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        // The TLS layer below hands it https URIs too.
        connector.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            // ring supports every safe default version; this cannot fail.
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|err| unreachable!("ring lacks TLS 1.2/1.3: {err}"));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let first = generation(&connector, None);
        Self { current: Arc::new(arc_swap::ArcSwap::from_pointee(first)), connector, lifetime: None }
    }

    /// Connections are reused for `lifetime` at most (none: for ever).
    pub fn with_connection_lifetime(self, lifetime: Option<Duration>) -> Self {
        let first = generation(&self.connector, lifetime);
        Self { current: Arc::new(arc_swap::ArcSwap::from_pointee(first)), lifetime, ..self }
    }

    /// The pool new requests use: the current one, or a fresh one if it has expired.
    fn pool(&self) -> arc_swap::Guard<Arc<Generation>> {
        let current = self.current.load();
        if current.expires.is_none_or(|at| tokio::time::Instant::now() < at) {
            return current;
        }
        // Whoever swaps first wins; the others use the winner's pool.
        let fresh = Arc::new(generation(&self.connector, self.lifetime));
        let _ = self.current.compare_and_swap(&*current, fresh);
        self.current.load()
    }

    /// Sends `request`; the status line and headers must arrive within `timeout`, and the body is
    /// read (to reuse the connection) only within the same deadline and up to `DRAIN_LIMIT`.
    pub async fn send(&self, request: Request<Full<Bytes>>, timeout: Duration) -> Result<Reply, SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let pending = self.pool().client.request(request);
        let response = tokio::time::timeout_at(deadline, pending)
            .await
            .map_err(|_| SendError::Timeout(timeout))?
            .map_err(SendError::Request)?;
        let (parts, mut body) = response.into_parts();
        let retry_after = parts.headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
        // A success needs no explanation: its body is only drained.
        let keep = if parts.status.is_success() { 0 } else { SNIPPET };
        let mut snippet = BytesMut::new();
        let drain = async {
            let mut read = 0usize;
            // A body error after the status line only costs the connection: the answer stands.
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    let room = keep.saturating_sub(snippet.len());
                    snippet.extend_from_slice(&data[..data.len().min(room)]);
                    read += data.len();
                    if read > DRAIN_LIMIT {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, drain).await;
        Ok(Reply { status: parts.status.as_u16(), retry_after, snippet: snippet.freeze() })
    }
}

/// A pool whose connections are reused until `lifetime` from now.
fn generation(connector: &HttpsConnector<HttpConnector>, lifetime: Option<Duration>) -> Generation {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_timer(TokioTimer::new())
        .build(connector.clone());
    Generation { client, expires: lifetime.map(|l| tokio::time::Instant::now() + l) }
}

impl HttpClient {
    /// Sends `request` and hands the response back as it arrives (its status line and headers
    /// within `timeout`, its body streamed): for the local gateway, which relays it.
    pub async fn forward(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, SendError> {
        let pending = self.pool().client.request(request);
        tokio::time::timeout(timeout, pending)
            .await
            .map_err(|_| SendError::Timeout(timeout))?
            .map_err(SendError::Request)
    }

    /// Sends `request` and reads the whole body (up to `limit` bytes, else an error), all within
    /// `timeout`: for the CLI, which shows what a function answered and downloads code.
    pub async fn fetch(
        &self,
        request: Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<(u16, Bytes), FetchError> {
        let work = async {
            let pending = self.pool().client.request(request);
            let response = pending.await.map_err(|e| FetchError::Request(error_chain(&e)))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut out = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| FetchError::Request(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(FetchError::TooLarge(limit));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok((status, out.freeze()))
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| FetchError::Timeout(timeout))?
    }
}

/// Why [`HttpClient::fetch`] got no whole answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Request(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// An error and its sources ("client error (Connect): tcp connect error: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The OS's trusted CAs, or the bundle `SSL_CERT_FILE` / `SSL_CERT_DIR` name. Certificates that
/// cannot be read are reported and skipped; with none at all only `https://` deliveries fail.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        warn!(error = %err, "Could not load a trusted CA certificate for https functions.");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        warn!(ignored, "Some system CA certificates could not be parsed; https functions will not trust them.");
    }
    if roots.is_empty() {
        warn!("No trusted CA certificates found (set SSL_CERT_FILE); deliveries to https functions will fail.");
    }
    roots
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::extract::ConnectInfo;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use http::Method;

    use super::*;

    /// A function with one route per behaviour; records each request's (client address, User-Agent).
    async fn serve(seen: Arc<Mutex<Vec<(SocketAddr, String)>>>) -> String {
        let record = move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| {
            let agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            seen.lock().expect("lock").push((peer, agent));
        };
        let (r1, r2, r3) = (record.clone(), record.clone(), record);
        let app = Router::new()
            .route(
                "/big",
                get(move |c, h| async move {
                    r1(c, h);
                    vec![b'o'; 4 << 20]
                }),
            )
            .route(
                "/fail",
                get(move |c, h| async move {
                    r2(c, h);
                    (StatusCode::SERVICE_UNAVAILABLE, "e".repeat(1000))
                }),
            )
            .route(
                "/moved",
                get(move |c, h| async move {
                    r3(c, h);
                    (StatusCode::TEMPORARY_REDIRECT, [("location", "/big")]).into_response()
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await },
        );
        format!("http://{addr}")
    }

    fn get_request(url: String) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = url.parse().expect("uri");
        request.headers_mut().insert(http::header::USER_AGENT, http::HeaderValue::from_static("test-agent"));
        request
    }

    #[tokio::test]
    async fn bodies_are_drained_so_one_connection_serves_every_request_and_failures_keep_a_snippet() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let base = serve(seen.clone()).await;
        let client = HttpClient::new();
        let big = client.send(get_request(format!("{base}/big")), Duration::from_secs(30)).await.expect("big");
        assert_eq!((big.status, big.snippet.len()), (200, 0), "a success keeps nothing of its 4 MiB body");
        let fail = client.send(get_request(format!("{base}/fail")), Duration::from_secs(30)).await.expect("fail");
        assert_eq!(fail.status, 503);
        assert_eq!(fail.snippet, Bytes::from("e".repeat(SNIPPET)), "a failure keeps the first {SNIPPET} bytes");
        let moved = client.send(get_request(format!("{base}/moved")), Duration::from_secs(30)).await.expect("moved");
        assert_eq!(moved.status, 307, "a redirect is the function's answer, not followed");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 3, "/big was requested once (the redirect was not followed): {seen:?}");
        assert!(seen.iter().all(|(peer, _)| *peer == seen[0].0), "all on one kept-alive connection: {seen:?}");
        assert!(seen.iter().all(|(_, agent)| agent == "test-agent"), "headers are sent as given: {seen:?}");
    }

    #[tokio::test]
    async fn a_function_that_does_not_answer_in_time_is_a_timeout_and_a_closed_port_a_request_error() {
        let base = serve(Arc::default()).await;
        let client = HttpClient::new();
        let slow = client.send(get_request(format!("{base}/slow")), Duration::from_millis(200)).await;
        assert!(matches!(slow, Err(SendError::Timeout(d)) if d == Duration::from_millis(200)), "{slow:?}");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let refused = client.send(get_request(format!("http://127.0.0.1:{port}/")), Duration::from_secs(5)).await;
        let Err(SendError::Request(e)) = refused else { panic!("expected a request error, got {refused:?}") };
        assert!(e.is_connect(), "a refused connection is a connect error: {e:?}");
    }
}
