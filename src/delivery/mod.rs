//! Delivery of one message to one function: POST, classify, retry with backoff, dead-letter, ack.
//!
//! A delivery holds its in-flight slot across retries, so retrying messages cannot pile up beyond
//! `maxInFlight`. It resolves the message's ack only when the message is finished: delivered, or
//! dead-lettered (or, with no dead-letter destination, logged and counted). A dead-letter write
//! that fails is retried and the message is never acknowledged before it succeeds.

pub mod event;
pub mod http;
pub mod retry;
pub mod route;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ::http::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use ::http::{Method, Request, Uri};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::Full;
use kubeless_connector::{error_chain, DeadLetter, DeadLetterReason, DeadLetterSink, Message, Outcome};
use tokio_util::sync::CancellationToken;

pub use self::http::HttpClient;
use crate::resources::RetryPolicy;
use crate::telemetry::events::{
    DeadLetterWriteFailed, DeadLettered, Delivered, Dropped, Emit, LastAttempt, MessageAt, RequestFinished,
    RetryScheduled, Stale,
};
use crate::telemetry::ConsumerMetrics;
use retry::{backoff, classify, Verdict};

/// Where and how one consumer delivers.
pub struct Target {
    /// `namespace/trigger`, for logs and dead letters.
    pub trigger: String,
    pub function: String,
    /// Without credentials: those of the configured URL are in `authorization`.
    pub url: Uri,
    /// `Basic` credentials from the URL's user info (`http://user:pass@host/`), sent on every
    /// request and never printed.
    pub authorization: Option<HeaderValue>,
    /// A local function's route: the address is looked up on each attempt and `url` is unused.
    pub route: Option<Arc<route::Route>>,
    pub timeout: Duration,
    pub event_namespace: &'static str,
    pub style: event::EventStyle,
    /// POST, or GET for cron ticks without a payload (as Kubeless).
    pub method: Method,
    pub retry: RetryPolicy,
    /// Retries go back to the source as `Outcome::Redeliver` (JetStream NAK with delay) instead of
    /// waiting here: the broker keeps the message, not our memory.
    pub redeliver_via_source: bool,
}

/// Why a function URL cannot be used; the URL is named with its credentials redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("function URL {url:?} is not valid: {reason}")]
pub struct BadUrl {
    pub url: String,
    pub reason: String,
}

/// A function URL as requests use it: without user info, whose credentials become a `Basic`
/// `Authorization` header (as curl does), so they never show in a request line, a log or an error.
pub fn function_target(raw: &str) -> Result<(Uri, Option<HeaderValue>), BadUrl> {
    use base64::Engine as _;
    let bad = |reason: String| BadUrl { url: kubeless_connector::redact_url(raw), reason };
    let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let authorization = if url.username().is_empty() && url.password().is_none() {
        None
    } else {
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = decode(url.username());
        let password = url.password().map(decode).unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {token}")).map_err(|e| bad(e.to_string()))?;
        value.set_sensitive(true);
        url.set_username("").map_err(|()| bad("cannot remove the user name".to_string()))?;
        url.set_password(None).map_err(|()| bad("cannot remove the password".to_string()))?;
        Some(value)
    };
    let uri = url.as_str().parse::<Uri>().map_err(|e| bad(e.to_string()))?;
    Ok((uri, authorization))
}

/// Delivers messages for one (trigger, function). Shared by all its in-flight deliveries.
/// One request in flight on the gauge, for as long as this lives.
struct InFlight<'a>(&'a metrics::Gauge);

impl<'a> InFlight<'a> {
    fn start(gauge: &'a metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

pub struct Deliverer {
    client: HttpClient,
    target: Target,
    dead_letter: Option<Arc<dyn DeadLetterSink>>,
    limiter: Option<DefaultDirectRateLimiter>,
    metrics: ConsumerMetrics,
}

/// The User-Agent every delivery carries.
static AGENT: HeaderValue = HeaderValue::from_static(concat!("kubeless-broker/", env!("CARGO_PKG_VERSION")));

/// What one attempt ended in.
struct Attempt {
    verdict: Verdict,
    status: Option<u16>,
    error: String,
}

impl Attempt {
    /// This attempt, the `attempts`th, as events report it.
    fn last(&self, attempts: u32) -> LastAttempt<'_> {
        LastAttempt { attempts, status: self.status, error: &self.error }
    }
}

impl Deliverer {
    pub fn new(
        client: HttpClient,
        target: Target,
        dead_letter: Option<Arc<dyn DeadLetterSink>>,
        rate_limit: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,
        metrics: ConsumerMetrics,
    ) -> Self {
        let limiter = rate_limit.map(|(rate, burst)| RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
        Self { client, target, dead_letter, limiter, metrics }
    }

    pub fn metrics(&self) -> &ConsumerMetrics {
        &self.metrics
    }

    /// Reports `event` through this consumer's handles.
    pub fn emit(&self, event: impl Emit) {
        event.emit(&self.metrics);
    }

    /// The trigger (`namespace/name`) and function this deliverer serves.
    pub fn consumer(&self) -> (&str, &str) {
        (&self.target.trigger, &self.target.function)
    }

    fn at<'a>(&'a self, msg: &'a Message) -> MessageAt<'a> {
        MessageAt { trigger: &self.target.trigger, function: &self.target.function, origin: &msg.origin }
    }

    /// Delivers `msg` until it is finished, or until `abort` or its partition is revoked (then the
    /// message is released unfinished and will be delivered again, by this consumer or the next owner).
    pub async fn deliver(&self, msg: Message, abort: &CancellationToken) {
        self.deliver_noting_retries(msg, abort, &|| {}).await;
    }

    /// [`Self::deliver`], calling `retrying` each time an attempt failed and another will follow
    /// here (not when the source redelivers).
    pub async fn deliver_noting_retries(&self, msg: Message, abort: &CancellationToken, retrying: &(dyn Fn() + Sync)) {
        let received = Instant::now();
        // Every attempt carries the same headers: built again from the same inputs rather than
        // cloned for a retry that almost never comes.
        let now = SystemTime::now();
        // Attempts made before this delivery (JetStream redeliveries) count towards maxAttempts.
        let mut attempts = msg.attempt.saturating_sub(1);
        loop {
            attempts += 1;
            if !msg.ack.is_current() {
                self.emit(Stale);
                return msg.ack.release();
            }
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    () = limiter.until_ready() => {}
                    () = abort.cancelled() => return msg.ack.release(),
                }
            }
            let attempt = tokio::select! {
                a = self.attempt(&msg, now) => Some(a),
                () = abort.cancelled() => None,
            };
            let Some(attempt) = attempt else { return msg.ack.release() };
            let retry_after = match attempt.verdict {
                Verdict::Success => {
                    self.emit(Delivered { received });
                    msg.ack.finish(Outcome::Delivered);
                    return;
                }
                Verdict::Reject => {
                    return self
                        .dead_letter(msg, DeadLetterReason::Rejected, &attempt, attempts, received, abort)
                        .await;
                }
                Verdict::Retry { after } => after,
            };
            let retry = &self.target.retry;
            if retry.max_attempts.is_some_and(|max| attempts >= max) {
                return self
                    .dead_letter(msg, DeadLetterReason::RetriesExhausted, &attempt, attempts, received, abort)
                    .await;
            }
            if let (Some(max_age), Some(ts)) = (retry.max_record_age, msg.origin.timestamp_ms) {
                let age_ms = chrono::Utc::now().timestamp_millis().saturating_sub(ts);
                if u128::try_from(age_ms).unwrap_or(0) > max_age.as_millis() {
                    return self
                        .dead_letter(msg, DeadLetterReason::RecordTooOld, &attempt, attempts, received, abort)
                        .await;
                }
            }
            let delay = retry_after.unwrap_or_else(|| backoff(retry, attempts, &mut rand::rng()));
            let by_broker = self.target.redeliver_via_source;
            self.emit(RetryScheduled { at: self.at(&msg), last: attempt.last(attempts), delay, by_broker });
            if by_broker {
                msg.ack.finish(Outcome::Redeliver { after: delay });
                return;
            }
            retrying();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = abort.cancelled() => return msg.ack.release(),
            }
        }
    }

    async fn attempt(&self, msg: &Message, now: SystemTime) -> Attempt {
        let t = &self.target;
        // A local function's process, held until the attempt ends so a replaced one is drained.
        let endpoint = match &t.route {
            None => None,
            Some(route) => match route.current() {
                Some(endpoint) => Some(endpoint),
                None => {
                    let error = "the function's local process is not serving (starting or restarting)".to_string();
                    return Attempt { verdict: Verdict::Retry { after: None }, status: None, error };
                }
            },
        };
        let mut request = Request::new(Full::new(msg.payload.clone()));
        *request.method_mut() = t.method.clone();
        *request.uri_mut() = endpoint.as_ref().map_or_else(|| t.url.clone(), |e| e.uri.clone());
        let headers = request.headers_mut();
        *headers = event::event_headers(msg, t.event_namespace, t.style, now);
        headers.insert(USER_AGENT, AGENT.clone());
        if let Some(credentials) = &t.authorization {
            headers.insert(AUTHORIZATION, credentials.clone());
        }
        let started = Instant::now();
        // Counted down when the attempt ends, or when it is dropped mid-way (a stop aborting it).
        let _in_flight = InFlight::start(&self.metrics.in_flight);
        let result = self.client.send(request, t.timeout).await;
        let attempt = match result {
            Ok(reply) => {
                let status = reply.status;
                let verdict = classify(status, reply.retry_after.as_deref(), SystemTime::now());
                let error = if verdict == Verdict::Success {
                    String::new()
                } else {
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&reply.snippet))
                };
                Attempt { verdict, status: Some(status), error }
            }
            Err(e) => Attempt { verdict: Verdict::Retry { after: None }, status: None, error: error_chain(&e) },
        };
        self.emit(RequestFinished { took: started.elapsed() });
        attempt
    }

    async fn dead_letter(
        &self,
        msg: Message,
        reason: DeadLetterReason,
        last: &Attempt,
        attempts: u32,
        received: Instant,
        abort: &CancellationToken,
    ) {
        let t = &self.target;
        let Some(sink) = &self.dead_letter else {
            let (at, last) = (self.at(&msg), last.last(attempts));
            self.emit(Dropped { at, last, reason: reason.as_str(), received });
            msg.ack.finish(Outcome::DeadLettered);
            return;
        };
        let mut tries = 0u32;
        loop {
            tries += 1;
            let letter = DeadLetter {
                message: &msg,
                reason,
                status: last.status,
                attempts,
                error: &last.error,
                trigger: &t.trigger,
                function: &t.function,
            };
            let written = tokio::select! {
                r = sink.send(letter) => Some(r),
                () = abort.cancelled() => None,
            };
            let Some(written) = written else { return msg.ack.release() };
            match written {
                Ok(()) => {
                    let destination = sink.describe();
                    let (at, last) = (self.at(&msg), last.last(attempts));
                    self.emit(DeadLettered { at, last, reason: reason.as_str(), destination: &destination, received });
                    msg.ack.finish(Outcome::DeadLettered);
                    return;
                }
                Err(e) => {
                    self.emit(DeadLetterWriteFailed { at: self.at(&msg), error: &e, tries });
                    let delay = backoff(&t.retry, tries, &mut rand::rng());
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = abort.cancelled() => return msg.ack.release(),
                    }
                }
            }
        }
    }
}
