//! The router: sends a request to an endpoint of its route's cluster and
//! streams the response back, answering Envoy's way when it cannot.
//!
//! wasp's own load balancer picks the endpoint; the worker's pool for it
//! ([`Pools`]) has the connection (HTTP/1.1 keep-alive, or HTTP/2 when the
//! cluster sets `http2_protocol_options`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tokio::time::Instant;

use super::mutation::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS;
use super::pool::{InFlight, Pools, SendError};
use super::replay::Replay;
use super::retry::{Failure, RetryState};
use super::route::AttemptCount;
use crate::access_log::ResponseFlags;
use crate::cluster::{Breaker, ConnectError, LbContext, Priority, WorkerCluster};

pub use super::body::Body;

/// A response wasp makes itself: marked as a local reply, which a gRPC
/// client gets recast (see [`super::grpc`]).
pub fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let mut r = Response::new(Body::full(body.clone()));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    r.extensions_mut().insert(super::grpc::LocalReply {
        message: body,
        grpc_status: None,
    });
    r
}

/// The endpoint a response came from (a response extension, for access
/// logs and wasm filters; set only when [`Upstream::tag_upstream_host`]
/// says so, since an extension costs two allocations per response).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamHost(pub std::net::SocketAddr);

/// What a route says about how its requests are sent, besides timeouts
/// and retries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sending {
    /// For consistent-hash balancers (`hash_policy`).
    pub hash: Option<u64>,
    /// `auto_host_rewrite`: Host becomes the chosen endpoint's hostname.
    pub auto_host: bool,
    /// Which circuit breakers the request counts against.
    pub priority: Priority,
}

/// One worker's sender for one cluster.
pub struct Upstream {
    pub cluster: Rc<WorkerCluster>,
    pools: Pools,
    /// Whether responses carry an [`UpstreamHost`].
    pub tag_upstream_host: bool,
}

impl Upstream {
    pub fn new(cluster: Rc<WorkerCluster>) -> Self {
        Upstream {
            pools: Pools::new(cluster.clone()),
            cluster,
            tag_upstream_host: false,
        }
    }

    /// Sends `req` (its URI holding only path and query) to an endpoint and
    /// waits for the response head, within `timeout` over all tries,
    /// retrying as `retry` says (see `Self::retried`). `sent` is when the
    /// router took the request: `timeout` and
    /// `x-envoy-upstream-service-time` count from it.
    ///
    /// The request is lent, not given: moving a `Request` through each
    /// layer (and the future of each) cost a 272-byte copy apiece. Its
    /// body is taken; the rest is left as sent.
    pub async fn forward(
        &self,
        req: &mut Request<Body>,
        timeout: Option<Duration>,
        retry: Option<Box<RetryState<'_>>>,
        count: AttemptCount,
        how: Sending,
        sent: Instant,
    ) -> Response<Body> {
        let began = Began {
            request: sent,
            attempt: sent,
        };
        match retry {
            None if !count.on_request && !count.on_response => self
                .attempt(req, timeout, how, began, None)
                .await
                .into_response(),
            None => {
                if count.on_request {
                    req.headers_mut()
                        .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(1));
                }
                let mut resp = self
                    .attempt(req, timeout, how, began, None)
                    .await
                    .into_response();
                if count.on_response {
                    resp.headers_mut()
                        .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(1));
                }
                resp
            }
            Some(retry) => Box::pin(self.retried(req, timeout, retry, count, how, sent)).await,
        }
    }

    /// Tries until a try's outcome is one the policy does not retry, or
    /// its retries, the route's timeout or the cluster's retry budget run
    /// out, waiting a jittered back-off between tries. The body streams
    /// to the first try and is kept (up to [`MAX_RETRY_BODY`]) for the
    /// next; a body that outgrew that is not retried.
    async fn retried(
        &self,
        req: &mut Request<Body>,
        timeout: Option<Duration>,
        mut retry: Box<RetryState<'_>>,
        count: AttemptCount,
        how: Sending,
        sent: Instant,
    ) -> Response<Body> {
        let deadline = timeout.map(|t| sent + t);
        let body = Replay::new(
            std::mem::replace(req.body_mut(), Body::empty()),
            MAX_RETRY_BODY,
        );
        // `previous_hosts`: the endpoints tried, and how many more picks a
        // try may make to find another.
        let avoid = retry.host_selection();
        let mut tried = Vec::new();
        let mut tries: u32 = 1;
        // The retry in flight's unit of the cluster's `max_retries`.
        let mut retrying = None;
        let mut began_try = sent;
        loop {
            let mut attempt = Request::new(body.body());
            *attempt.method_mut() = req.method().clone();
            *attempt.uri_mut() = req.uri().clone();
            *attempt.headers_mut() = req.headers().clone();
            if count.on_request {
                attempt
                    .headers_mut()
                    .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(tries));
            }
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let per_try = match (retry.per_try_timeout(), remaining) {
                (Some(p), Some(r)) => Some(p.min(r)),
                (p, r) => p.or(r),
            };
            // A retry tells the upstream the time it has left, as Envoy's
            // does (the first try's value came with the request's headers).
            if tries > 1
                && attempt
                    .headers()
                    .contains_key(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS)
            {
                if let Some(t) = per_try {
                    let ms = (t.as_millis() as u64).max(1);
                    attempt
                        .headers_mut()
                        .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, HeaderValue::from(ms));
                }
            }
            let began = Began {
                request: sent,
                attempt: began_try,
            };
            let hosts = avoid.map(|n| (&mut tried, n));
            let outcome = self.attempt(&mut attempt, per_try, how, began, hosts).await;
            let time_left = deadline.is_none_or(|d| Instant::now() < d);
            let retriable = time_left && outcome.retriable(&retry);
            if retrying.take().is_some() && !retriable {
                self.cluster.stats.upstream_rq_retry_success.inc();
            }
            if !retriable {
                return counted(outcome.into_response(), count, tries);
            }
            if !body.replayable() {
                self.cluster.stats.retry_or_shadow_abandoned.inc();
                return counted(outcome.into_response(), count, tries);
            }
            if !retry.take() {
                self.cluster.stats.upstream_rq_retry_limit_exceeded.inc();
                let resp = flagged(
                    outcome.into_response(),
                    ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED,
                );
                return counted(resp, count, tries);
            }
            let Some(unit) = self.cluster.try_hold(Breaker::Retries, how.priority) else {
                let resp = flagged(outcome.into_response(), ResponseFlags::UPSTREAM_OVERFLOW);
                return counted(resp, count, tries);
            };
            retrying = Some(unit);
            self.cluster.stats.upstream_rq_retry.inc();
            self.cluster
                .stats
                .upstream_rq_retry_backoff_exponential
                .inc();
            let wake = Instant::now() + retry.backoff();
            if deadline.is_some_and(|d| d <= wake) {
                // The route's timeout passes first: answered as Envoy's
                // global timeout is.
                tokio::time::sleep_until(deadline.expect("checked")).await;
                self.cluster.stats.upstream_rq_timeout.inc();
                self.cluster.charge(StatusCode::GATEWAY_TIMEOUT);
                return counted(Attempt::Timeout.into_response(), count, tries);
            }
            tokio::time::sleep_until(wake).await;
            began_try = Instant::now();
            tries += 1;
        }
    }

    /// Opens the TCP connection a terminated CONNECT tunnels to, or the
    /// answer Envoy gives when it cannot (503, as for a request).
    pub async fn connect(&self, how: Sending) -> Result<tokio::net::TcpStream, Response<Body>> {
        let failed = match self.cluster.connect(LbContext { hash: how.hash }).await {
            Ok((_, stream)) => return Ok(stream),
            Err(ConnectError::NoHealthyUpstream) => Attempt::NoHealthyUpstream,
            Err(ConnectError::Timeout(_)) => Attempt::ConnectTimeout,
            Err(ConnectError::Failed(..)) => Attempt::ConnectFailure,
        };
        Err(failed.into_response())
    }

    /// Sends a request wasp made (an http_call) to an endpoint, once.
    /// `None` if it could not be sent or the upstream reset; like Envoy's
    /// async client, an unreachable or empty cluster is a 503 answer.
    pub async fn call(&self, req: Request<Full<Bytes>>) -> Option<Response<Body>> {
        match self
            .attempt(
                &mut req.map(Body::Full),
                None,
                Sending::default(),
                Began::now(),
                None,
            )
            .await
        {
            a @ (Attempt::Response(_)
            | Attempt::NoHealthyUpstream
            | Attempt::Overflow
            | Attempt::ConnectFailure
            | Attempt::ConnectTimeout) => Some(a.into_response()),
            Attempt::BadRequest | Attempt::Reset | Attempt::Refused | Attempt::Timeout => None,
        }
    }

    /// One try. With `hosts`, the endpoints tried before are avoided
    /// (picking again up to that many times) and this one is added.
    async fn attempt(
        &self,
        req: &mut Request<Body>,
        timeout: Option<Duration>,
        how: Sending,
        began: Began,
        hosts: Option<(&mut Vec<SocketAddr>, u32)>,
    ) -> Attempt {
        let stats = &self.cluster.stats;
        let cx = LbContext { hash: how.hash };
        let Some(mut endpoint) = self.cluster.choose(cx) else {
            stats.upstream_cx_none_healthy.inc();
            return Attempt::NoHealthyUpstream;
        };
        if let Some((tried, picks)) = hosts {
            for _ in 0..picks {
                if !tried.contains(&endpoint.address) {
                    break;
                }
                match self.cluster.choose(cx) {
                    Some(e) => endpoint = e,
                    None => break,
                }
            }
            tried.push(endpoint.address);
        }
        if how.auto_host && !endpoint.hostname.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&endpoint.hostname) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let path = std::mem::take(req.uri_mut())
            .into_parts()
            .path_and_query
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if self
            .cluster
            .cluster
            .settings
            .upstream_http
            .http2(req.version())
        {
            // HTTP/2 carries the authority as `:authority`, taken from the
            // URI; a Host header beside it would contradict it.
            let host = req.headers_mut().remove(http::header::HOST);
            let authority = host
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| {
                    Authority::try_from(endpoint.address.to_string()).expect("ip:port")
                });
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority);
            parts.path_and_query = Some(path);
            match Uri::from_parts(parts) {
                Ok(u) => *req.uri_mut() = u,
                Err(_) => return Attempt::BadRequest,
            }
            *req.version_mut() = http::Version::HTTP_2;
        } else {
            *req.uri_mut() = Uri::from(path);
            *req.version_mut() = http::Version::HTTP_11;
        }
        let Some(held) = self.cluster.try_hold(Breaker::Requests, how.priority) else {
            self.cluster.charge(StatusCode::SERVICE_UNAVAILABLE);
            return Attempt::Overflow;
        };
        stats.upstream_rq_total.inc();
        endpoint.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        let request = InFlight::new(held, &endpoint, began.attempt);
        let sent = std::pin::pin!(self.pools.send(&endpoint, req, request));
        let result = match timeout {
            Some(t) => crate::clock::timeout_at(began.attempt + t, sent)
                .await
                .map_err(|_| ()),
            None => Ok(sent.await),
        };
        let outcome = match result {
            Ok(Ok(mut resp)) => {
                endpoint.stats.rq_success.fetch_add(1, Ordering::Relaxed);
                // Upstream answers only, as in Envoy: not local replies.
                resp.headers_mut().insert(
                    X_ENVOY_UPSTREAM_SERVICE_TIME,
                    milliseconds(began.request.elapsed()),
                );
                if self.tag_upstream_host {
                    resp.extensions_mut().insert(UpstreamHost(endpoint.address));
                }
                Attempt::Response(resp)
            }
            Ok(Err(SendError::Connect(e))) => {
                endpoint.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %self.cluster.cluster.name(), error = %e, "upstream connect failed");
                match e {
                    ConnectError::Timeout(_) => Attempt::ConnectTimeout,
                    _ => Attempt::ConnectFailure,
                }
            }
            Ok(Err(SendError::Overflow)) => Attempt::Overflow,
            Ok(Err(SendError::Upstream(e))) => {
                endpoint.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %self.cluster.cluster.name(), endpoint = %endpoint.address, error = %e, "upstream request failed");
                if refused_stream(&*e) {
                    Attempt::Refused
                } else {
                    Attempt::Reset
                }
            }
            Err(()) => {
                endpoint.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                stats.upstream_rq_timeout.inc();
                Attempt::Timeout
            }
        };
        if let Some(status) = outcome.status() {
            self.cluster.charge(status);
        }
        outcome
    }
}

/// Whether an upstream error is an HTTP/2 REFUSED_STREAM reset, somewhere
/// in its chain of causes.
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        cause = e.source();
    }
    false
}

/// `x-envoy-attempt-count` on a response, if the virtual host asks for it.
fn counted(mut r: Response<Body>, count: AttemptCount, tries: u32) -> Response<Body> {
    if count.on_response {
        r.headers_mut()
            .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(tries));
    }
    r
}

/// Adds `flag` to the response flags an access log prints for `r`.
pub fn flagged<B>(mut r: Response<B>, flag: ResponseFlags) -> Response<B> {
    let flags = r.extensions_mut().get_or_insert_default::<ResponseFlags>();
    flags.set(flag);
    r
}

/// When a request reached the router, and when its current try began
/// (the same for the first try: one clock read).
#[derive(Clone, Copy)]
struct Began {
    request: Instant,
    attempt: Instant,
}

impl Began {
    fn now() -> Self {
        let now = Instant::now();
        Began {
            request: now,
            attempt: now,
        }
    }
}

const X_ENVOY_UPSTREAM_SERVICE_TIME: http::HeaderName =
    http::HeaderName::from_static("x-envoy-upstream-service-time");

/// A duration in whole milliseconds as a header value, without
/// allocating below a second (the text of each is written once per
/// process).
fn milliseconds(d: std::time::Duration) -> HeaderValue {
    /// "0" to "999", one after another.
    static DIGITS: std::sync::LazyLock<&'static str> = std::sync::LazyLock::new(|| {
        let text: String = (0..1000).map(|n: u32| n.to_string()).collect();
        Box::leak(text.into_boxed_str())
    });
    let ms = d.as_millis() as u64;
    let (at, len) = match ms as usize {
        n @ 0..10 => (n, 1),
        n @ 10..100 => (10 + (n - 10) * 2, 2),
        n @ 100..1000 => (190 + (n - 100) * 3, 3),
        _ => return HeaderValue::from(ms),
    };
    HeaderValue::from_static(&DIGITS[at..at + len])
}

const X_ENVOY_ATTEMPT_COUNT: http::HeaderName =
    http::HeaderName::from_static("x-envoy-attempt-count");

/// Set on answers a circuit breaker caused.
const X_ENVOY_OVERLOADED: http::HeaderName = http::HeaderName::from_static("x-envoy-overloaded");

/// How Envoy's answers to a try that failed before a response head begin.
const BEFORE_HEADERS: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: ";

/// Largest request body buffered so that it can be retried.
pub const MAX_RETRY_BODY: usize = 1024 * 1024;

/// How one try ended.
// Short-lived and returned by value: boxing the response would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Response(Response<Body>),
    NoHealthyUpstream,
    BadRequest,
    ConnectFailure,
    ConnectTimeout,
    Reset,
    /// An HTTP/2 upstream refused the stream (REFUSED_STREAM): it did not
    /// process the request.
    Refused,
    Timeout,
    /// A circuit breaker refused the request.
    Overflow,
}

impl Attempt {
    /// The code Envoy charges to the cluster for it: the upstream's, or
    /// that of the answer a failed attempt gets.
    fn status(&self) -> Option<StatusCode> {
        match self {
            Attempt::Response(r) => Some(r.status()),
            Attempt::ConnectFailure
            | Attempt::ConnectTimeout
            | Attempt::Reset
            | Attempt::Refused
            | Attempt::Overflow => Some(StatusCode::SERVICE_UNAVAILABLE),
            Attempt::Timeout => Some(StatusCode::GATEWAY_TIMEOUT),
            Attempt::NoHealthyUpstream | Attempt::BadRequest => None,
        }
    }

    fn retriable(&self, retry: &RetryState<'_>) -> bool {
        match self {
            Attempt::Response(r) => retry.retries_response(r.status(), r.headers()),
            Attempt::ConnectFailure | Attempt::ConnectTimeout => {
                retry.retries_failure(Failure::Connect)
            }
            Attempt::Reset => retry.retries_failure(Failure::Reset),
            Attempt::Refused => retry.retries_failure(Failure::RefusedStream),
            Attempt::Timeout => retry.retries_failure(Failure::Timeout),
            // Never retried, as in Envoy: a retry would only add load.
            Attempt::NoHealthyUpstream | Attempt::BadRequest | Attempt::Overflow => false,
        }
    }

    /// The response the client gets: the upstream's, or Envoy's local one,
    /// which carries the access log's response flag for its cause.
    fn into_response(self) -> Response<Body> {
        let (status, body, flag) = match self {
            Attempt::Response(r) => return r,
            Attempt::BadRequest => return local(StatusCode::BAD_REQUEST, "bad request path"),
            Attempt::NoHealthyUpstream => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream".to_string(),
                ResponseFlags::NO_HEALTHY_UPSTREAM,
            ),
            Attempt::ConnectFailure => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{BEFORE_HEADERS}remote connection failure"),
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            ),
            Attempt::ConnectTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{BEFORE_HEADERS}connection timeout"),
                ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
            ),
            Attempt::Reset => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{BEFORE_HEADERS}remote reset"),
                ResponseFlags::UPSTREAM_REMOTE_RESET,
            ),
            Attempt::Refused => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{BEFORE_HEADERS}remote refused stream reset"),
                ResponseFlags::UPSTREAM_REMOTE_RESET,
            ),
            Attempt::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout".to_string(),
                ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
            ),
            Attempt::Overflow => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{BEFORE_HEADERS}overflow"),
                ResponseFlags::UPSTREAM_OVERFLOW,
            ),
        };
        let mut r = local(status, body);
        if flag == ResponseFlags::UPSTREAM_OVERFLOW {
            r.headers_mut()
                .insert(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
        }
        flagged(r, flag)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn milliseconds_are_whole_numbers() {
        for ms in [0, 7, 9, 10, 42, 99, 100, 512, 999, 1000, 123_456] {
            let v = super::milliseconds(std::time::Duration::from_micros(ms * 1000 + 999));
            assert_eq!(v.to_str().unwrap(), ms.to_string());
        }
    }
}
