//! The router: sends a request to an endpoint of its route's cluster and
//! streams the response back, answering Envoy's way when it cannot.
//!
//! Each worker keeps one hyper client per cluster (HTTP/1.1 keep-alive, or
//! HTTP/2 when the cluster sets `http2_protocol_options`). wasp's own load
//! balancer picks the endpoint, and the request's URI is pointed at it, so
//! the client's pool (keyed by authority) keeps per-endpoint connections.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use tokio::time::Instant;

use super::route::RetryPolicy;
use crate::cluster::{LbContext, WorkerCluster};

pub use super::body::Body;

/// A response wasp makes itself.
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
    r
}

/// The endpoint a response came from (a response extension, for access
/// logs).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamHost(pub std::net::SocketAddr);

/// One worker's client for one cluster.
pub struct Upstream {
    pub cluster: Rc<WorkerCluster>,
    client: Client<HttpConnector, Body>,
}

impl Upstream {
    pub fn new(cluster: Rc<WorkerCluster>) -> Self {
        let settings = &cluster.cluster.settings;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(settings.http2)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Upstream { cluster, client }
    }

    /// Sends `req` (its URI holding only path and query) to an endpoint and
    /// waits for the response head, within `timeout` over all attempts,
    /// retrying as `retry` says (on another endpoint, if the balancer picks
    /// one). A retried request's body is buffered first, up to
    /// [`MAX_RETRY_BODY`].
    pub async fn forward(
        &self,
        req: Request<Body>,
        timeout: Option<Duration>,
        retry: Option<&RetryPolicy>,
        hash: Option<u64>,
        auto_host: bool,
    ) -> Response<Body> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let Some(retry) = retry else {
            let per_try = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            return self
                .attempt(req, per_try, hash, auto_host)
                .await
                .into_response();
        };
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_RETRY_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return local(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
        };
        let mut retries = 0;
        loop {
            let mut attempt = Request::new(Body::full(body.clone()));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.headers_mut() = parts.headers.clone();
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let per_try = match (retry.per_try_timeout, remaining) {
                (Some(p), Some(r)) => Some(p.min(r)),
                (p, r) => p.or(r),
            };
            let outcome = self.attempt(attempt, per_try, hash, auto_host).await;
            let time_left = remaining.is_none_or(|r| !r.is_zero())
                && deadline.is_none_or(|d| Instant::now() < d);
            if retries < retry.num_retries && time_left && outcome.retriable(retry) {
                retries += 1;
                self.cluster.stats.upstream_rq_retry.inc();
                continue;
            }
            if retries > 0
                && matches!(&outcome, Attempt::Response(r) if !r.status().is_server_error())
            {
                self.cluster.stats.upstream_rq_retry_success.inc();
            }
            return outcome.into_response();
        }
    }

    /// Sends a request wasp made (an http_call) to an endpoint, once.
    /// `None` if it could not be sent or the upstream reset; like Envoy's
    /// async client, an unreachable or empty cluster is a 503 answer.
    pub async fn call(&self, req: Request<Full<Bytes>>) -> Option<Response<Body>> {
        match self.attempt(req.map(Body::Full), None, None, false).await {
            a @ (Attempt::Response(_) | Attempt::NoHealthyUpstream | Attempt::ConnectFailure) => {
                Some(a.into_response())
            }
            Attempt::BadRequest | Attempt::Reset | Attempt::Timeout => None,
        }
    }

    async fn attempt(
        &self,
        mut req: Request<Body>,
        timeout: Option<Duration>,
        hash: Option<u64>,
        auto_host: bool,
    ) -> Attempt {
        let stats = &self.cluster.stats;
        let Some(endpoint) = self.cluster.choose(LbContext { hash }) else {
            stats.upstream_cx_none_healthy.inc();
            return Attempt::NoHealthyUpstream;
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = match format!("http://{}{path}", endpoint.address).parse() {
            Ok(u) => u,
            Err(_) => return Attempt::BadRequest,
        };
        *req.uri_mut() = uri;
        if auto_host && !endpoint.hostname.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&endpoint.hostname) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        if self.cluster.cluster.settings.http2 {
            // hyper derives :authority from the URI, which names the chosen
            // endpoint so that its pool keeps per-endpoint connections; a
            // Host header beside it would contradict :authority.
            // TODO(issue 4): carry the client's authority on HTTP/2 too,
            // with a per-endpoint pool of our own.
            req.headers_mut().remove(http::header::HOST);
            *req.version_mut() = http::Version::HTTP_2;
        } else {
            *req.version_mut() = http::Version::HTTP_11;
        }
        stats.upstream_rq_total.inc();
        stats.upstream_rq_active.inc();
        endpoint.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        endpoint.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        let sent = self.client.request(req);
        let result = match timeout {
            Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
            None => Ok(sent.await),
        };
        stats.upstream_rq_active.dec();
        endpoint.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok(mut resp)) => {
                endpoint.stats.rq_success.fetch_add(1, Ordering::Relaxed);
                resp.extensions_mut().insert(UpstreamHost(endpoint.address));
                Attempt::Response(resp)
            }
            Ok(Err(e)) => {
                endpoint.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cluster = %self.cluster.cluster.name(), endpoint = %endpoint.address, error = %e, "upstream request failed");
                if e.is_connect() {
                    stats.upstream_cx_connect_fail.inc();
                    Attempt::ConnectFailure
                } else {
                    Attempt::Reset
                }
            }
            Err(()) => {
                endpoint.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                stats.upstream_rq_timeout.inc();
                Attempt::Timeout
            }
        }
    }
}

/// Largest request body buffered so that it can be retried.
pub const MAX_RETRY_BODY: usize = 1024 * 1024;

/// How one try ended.
enum Attempt {
    Response(Response<Incoming>),
    NoHealthyUpstream,
    BadRequest,
    ConnectFailure,
    Reset,
    Timeout,
}

impl Attempt {
    fn retriable(&self, p: &RetryPolicy) -> bool {
        match self {
            Attempt::Response(r) => {
                let s = r.status().as_u16();
                (p.on_5xx && s >= 500)
                    || (p.on_gateway_error && matches!(s, 502..=504))
                    || p.retriable_status_codes.contains(&s)
            }
            Attempt::ConnectFailure => p.on_5xx || p.on_gateway_error || p.on_connect_failure,
            Attempt::Reset => p.on_5xx || p.on_reset,
            Attempt::Timeout => p.on_5xx || p.on_gateway_error,
            Attempt::NoHealthyUpstream | Attempt::BadRequest => false,
        }
    }

    /// The response the client gets: the upstream's, or Envoy's local one.
    fn into_response(self) -> Response<Body> {
        match self {
            Attempt::Response(r) => r.map(Body::Incoming),
            Attempt::NoHealthyUpstream => {
                local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }
            Attempt::BadRequest => local(StatusCode::BAD_REQUEST, "bad request path"),
            Attempt::ConnectFailure => local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            Attempt::Reset => local(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: remote reset",
            ),
            Attempt::Timeout => local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
        }
    }
}
