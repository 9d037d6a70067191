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
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::cluster::{LbContext, WorkerCluster};

/// A response body: the upstream's, streamed, or one wasp wrote.
pub type Body = http_body_util::Either<Incoming, Full<Bytes>>;

/// A response wasp makes itself.
pub fn local(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let mut r = Response::new(http_body_util::Either::Right(Full::new(body.clone())));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    r
}

/// One worker's client for one cluster.
pub struct Upstream {
    pub cluster: Rc<WorkerCluster>,
    client: Client<HttpConnector, Incoming>,
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
    /// waits for the response head, at most `timeout`.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        timeout: Option<Duration>,
    ) -> Response<Body> {
        let stats = &self.cluster.stats;
        let Some(endpoint) = self.cluster.choose(LbContext::default()) else {
            stats.upstream_cx_none_healthy.inc();
            return local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = match format!("http://{}{path}", endpoint.address).parse() {
            Ok(u) => u,
            Err(_) => return local(StatusCode::BAD_REQUEST, "bad request path"),
        };
        *req.uri_mut() = uri;
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
            Ok(Ok(resp)) => {
                endpoint.stats.rq_success.fetch_add(1, Ordering::Relaxed);
                resp.map(http_body_util::Either::Left)
            }
            Ok(Err(e)) => {
                endpoint.stats.rq_error.fetch_add(1, Ordering::Relaxed);
                let reason = if e.is_connect() {
                    stats.upstream_cx_connect_fail.inc();
                    "connection failure"
                } else {
                    "remote reset"
                };
                tracing::debug!(cluster = %self.cluster.cluster.name(), endpoint = %endpoint.address, error = %e, "upstream request failed");
                local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: {reason}"
                    ),
                )
            }
            Err(()) => {
                endpoint.stats.rq_timeout.fetch_add(1, Ordering::Relaxed);
                stats.upstream_rq_timeout.inc();
                local(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
        }
    }
}
