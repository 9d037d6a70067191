//! `envoy.filters.network.http_connection_manager`: HTTP/1.1 (wasp's own
//! codec, [`h1::server`]) and HTTP/2 (h2c, prior knowledge, on hyper),
//! requests matched against the route table and answered directly,
//! redirected, or forwarded by the router.
//!
//! Everything runs on the connection's worker: an HTTP/1.1 connection's
//! requests run on its task, one after another; HTTP/2 streams are
//! spawned with `spawn_local` and the hyper service holds `Rc`s.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::access_log::{AccessLog, AccessLogSettings, HttpInfo, ResponseFlags, StreamInfo};
use crate::clock;
use crate::cluster::WorkerClusters;
use crate::config::path::{index, join};
use crate::config::{CodecType, HttpConnectionManagerConfig, HttpFilterConfig, ValidationError};
use crate::filter::http::body::{BoxError, ResponseBody};
use crate::filter::http::codec::{Codec, CountedIo, detect};
use crate::filter::http::controls::{Controls, controls};
use crate::filter::http::h2::{self, Http2Settings};
use crate::filter::http::local_reply::{LocalReplies, StreamReplies};
use crate::filter::http::mutation::{
    RequestMutation, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_REQUEST_ID,
};
use crate::filter::http::pool::LocalExec;
use crate::filter::http::route::{self, Action, RouteTable, redirect_location};
use crate::filter::http::router::{self, Body, Upstream};
use crate::filter::http::tracing::TraceReason;
use crate::filter::http::tunnel::ConnectTunnel;
use crate::filter::http::wasm::{Stop, WasmStream};
use crate::filter::http::{grpc, h1};
use crate::filter::network::gated::Gated;
use crate::stats::{Counter, Gauge, Histogram, Scope};
use crate::wasm::{ConnectionFacts, PluginHandle, PluginSettings};

use super::Downstream;

/// A validated http_connection_manager.
#[derive(Debug, Clone)]
pub struct HcmSettings {
    pub stat_prefix: String,
    pub codec: CodecType,
    pub routes: Arc<RouteTable>,
    /// What is done to requests before the filters, and to responses.
    pub mutation: RequestMutation,
    pub server_name: HeaderValue,
    pub request_headers_timeout: Option<Duration>,
    /// How long an HTTP/1.1 connection closed with request bytes still
    /// unread waits for the client to close first (`delayed_close_timeout`,
    /// 1 s by default; 0: not at all).
    pub delayed_close_timeout: Option<Duration>,
    /// How long a connection may go without a new request before it is
    /// closed (common_http_protocol_options.idle_timeout; Envoy's default
    /// is an hour).
    pub idle_timeout: Option<Duration>,
    /// The longest a request may wait for its response to start: the
    /// shorter of request_timeout and stream_idle_timeout (Envoy's default
    /// stream idle timeout is 5 minutes).
    pub response_deadline: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration`: how long a
    /// stream may last, unless its route says otherwise.
    pub max_stream_duration: Option<Duration>,
    /// `stream_idle_timeout` alone: how long an upgraded connection's
    /// tunnel may carry nothing either way before it is closed.
    pub stream_idle_timeout: Option<Duration>,
    pub max_request_headers_bytes: usize,
    /// After this many requests an HTTP/1.x connection is closed
    /// (`connection: close` on the last answer). Envoy (1.40) does not
    /// limit an HTTP/2 connection's streams by it, and neither does wasp.
    pub max_requests_per_connection: Option<u32>,
    /// Whether HTTP/1.0 requests are served rather than answered 426, and
    /// the Host given to those without one.
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<HeaderValue>,
    /// `http2_protocol_options`, for HTTP/2 clients.
    pub http2: Http2Settings,
    /// `upgrade_configs`: the protocols an HTTP/1.1 request may switch its
    /// connection to (type, enabled unless a route says).
    pub upgrades: Vec<(String, bool)>,
    /// Clusters routes forward to.
    pub clusters: Vec<String>,
    pub access_logs: Vec<AccessLogSettings>,
    /// The wasm HTTP filters before the router, in order.
    pub wasm_filters: Vec<Arc<PluginSettings>>,
    /// `local_reply_config`.
    pub local_replies: Option<LocalReplies>,
    /// When some filter is off by default (`disabled`) or some level of
    /// the route table switches one: each wasm filter's name and whether
    /// it is off by default. A request then finds its route before the
    /// filters run, to know which of them do (as Envoy does since 1.26).
    pub filter_switches: Option<Vec<(String, bool)>>,
}

impl HcmSettings {
    pub fn validate(
        c: &HttpConnectionManagerConfig,
        path: &str,
        known: &HashSet<String>,
    ) -> Result<Self, ValidationError> {
        crate::config::path::non_empty(&c.stat_prefix, path, "stat_prefix")?;
        let filters = join(path, "http_filters");
        match c.http_filters.as_slice() {
            [] => {
                return Err(ValidationError::new(
                    filters,
                    "the last HTTP filter must be envoy.filters.http.router",
                ));
            }
            [.., last] => {
                if !matches!(last.config, HttpFilterConfig::Router) {
                    return Err(ValidationError::new(
                        index(&filters, c.http_filters.len() - 1),
                        "the last HTTP filter must be envoy.filters.http.router",
                    ));
                }
                if last.disabled {
                    return Err(ValidationError::new(
                        join(&index(&filters, c.http_filters.len() - 1), "disabled"),
                        "the router, the last HTTP filter, cannot be disabled",
                    ));
                }
            }
        }
        let (mut wasm_filters, mut switches) = (Vec::new(), Vec::new());
        for (i, f) in c.http_filters[..c.http_filters.len() - 1]
            .iter()
            .enumerate()
        {
            switches.push((f.name.clone(), f.disabled));
            match &f.config {
                HttpFilterConfig::Wasm(w) => wasm_filters.push(PluginSettings::validate(
                    &w.config,
                    &join(&join(&index(&filters, i), "typed_config"), "config"),
                    known,
                )?),
                HttpFilterConfig::Router => {
                    return Err(ValidationError::new(
                        index(&filters, i),
                        "envoy.filters.http.router must be the last HTTP filter",
                    ));
                }
            }
        }
        let access_logs = c
            .access_log
            .iter()
            .enumerate()
            .map(|(i, l)| AccessLogSettings::validate(l, &index(&join(path, "access_log"), i)))
            .collect::<Result<Vec<_>, _>>()?;
        let route_config = c.route_config.as_ref().ok_or_else(|| {
            ValidationError::new(
                join(path, "route_config"),
                "route_config is required (RDS is not supported)",
            )
        })?;
        let routes = RouteTable::validate(route_config, &join(path, "route_config"), known)?;
        let filter_switches =
            (routes.switches_filters || switches.iter().any(|s| s.1)).then_some(switches);
        let mut clusters: Vec<String> = route_config
            .virtual_hosts
            .iter()
            .flat_map(|vh| vh.routes.iter())
            .filter_map(|r| r.route.as_ref())
            .flat_map(|a| {
                a.cluster.iter().cloned().chain(
                    a.weighted_clusters
                        .iter()
                        .flat_map(|w| w.clusters.iter().map(|c| c.name.clone())),
                )
            })
            .collect();
        clusters.sort();
        clusters.dedup();
        let server_name = HeaderValue::from_str(c.server_name.as_deref().unwrap_or("wasp"))
            .map_err(|_| {
                ValidationError::new(join(path, "server_name"), "not a valid header value")
            })?;
        let http1 = c.http_protocol_options.as_ref();
        let default_host_for_http_10 = http1
            .and_then(|o| o.default_host_for_http_10.as_deref())
            .map(|h| {
                HeaderValue::from_str(h).map_err(|_| {
                    ValidationError::new(
                        join(
                            &join(path, "http_protocol_options"),
                            "default_host_for_http_10",
                        ),
                        "not a valid host",
                    )
                })
            })
            .transpose()?;
        let upgrades = c
            .upgrade_configs
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let at = index(&join(path, "upgrade_configs"), i);
                if u.filters.is_some() {
                    return Err(ValidationError::new(
                        join(&at, "filters"),
                        "filter chains of their own for upgrades are not supported",
                    ));
                }
                Ok(route::upgrade_entry(&u.upgrade_type, u.enabled))
            })
            .collect::<Result<_, _>>()?;
        Ok(HcmSettings {
            upgrades,
            stat_prefix: c.stat_prefix.clone(),
            codec: c.codec_type,
            routes: Arc::new(routes),
            mutation: RequestMutation::validate(c, path)?,
            server_name,
            request_headers_timeout: c
                .request_headers_timeout
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            delayed_close_timeout: c
                .delayed_close_timeout
                .map_or(Some(Duration::from_secs(1)), |d| Some(d.0))
                .filter(|d| !d.is_zero()),
            idle_timeout: c
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout)
                .map_or(Some(Duration::from_secs(3600)), |d| {
                    Some(d.0).filter(|d| !d.is_zero())
                }),
            max_stream_duration: c
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.max_stream_duration)
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            stream_idle_timeout: Some(
                c.stream_idle_timeout
                    .map_or(Duration::from_secs(300), |d| d.0),
            )
            .filter(|d| !d.is_zero()),
            response_deadline: [
                c.request_timeout.map(|d| d.0),
                Some(
                    c.stream_idle_timeout
                        .map_or(Duration::from_secs(300), |d| d.0),
                ),
            ]
            .into_iter()
            .flatten()
            .filter(|d| !d.is_zero())
            .min(),
            max_request_headers_bytes: c.max_request_headers_kb.unwrap_or(60) as usize * 1024,
            max_requests_per_connection: c
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.max_requests_per_connection)
                .filter(|&n| n > 0),
            accept_http_10: http1.is_some_and(|o| o.accept_http_10),
            http2: match &c.http2_protocol_options {
                Some(h2) => Http2Settings::validate(h2, &join(path, "http2_protocol_options"))?,
                None => Http2Settings::default(),
            },
            default_host_for_http_10,
            clusters,
            access_logs,
            wasm_filters,
            filter_switches,
            local_replies: c
                .local_reply_config
                .as_ref()
                .map(|l| LocalReplies::validate(l, &join(path, "local_reply_config")))
                .transpose()?,
        })
    }
}

/// Envoy's `http.<stat_prefix>.*` stats (one worker's shards).
struct HttpStats {
    downstream_cx_total: Counter,
    downstream_cx_rx_bytes_total: Counter,
    downstream_cx_tx_bytes_total: Counter,
    downstream_cx_active: Gauge,
    downstream_cx_idle_timeout: Counter,
    downstream_cx_max_requests_reached: Counter,
    downstream_rq_total: Counter,
    downstream_rq_active: Gauge,
    downstream_rq_completed: Counter,
    downstream_rq_xx: [Counter; 5],
    downstream_rq_time: Histogram,
    downstream_rq_max_duration_reached: Counter,
    downstream_rq_response_before_rq_complete: Counter,
    /// `tracing.*`, by [`TraceReason::index`].
    tracing: [Counter; 5],
    no_route: Counter,
    rq_direct_response: Counter,
    rq_redirect: Counter,
}

/// One worker's http_connection_manager.
pub struct HttpConnectionManager {
    settings: Arc<HcmSettings>,
    logs: Vec<Arc<AccessLog>>,
    upstreams: HashMap<String, Upstream, foldhash::fast::RandomState>,
    /// This worker's instances of the wasm HTTP filters.
    filters: Vec<PluginHandle>,
    stats: HttpStats,
    h1: h1::server::Settings,
}

impl HttpConnectionManager {
    pub fn new(
        settings: Arc<HcmSettings>,
        logs: Vec<Arc<AccessLog>>,
        clusters: &WorkerClusters,
        stats: &Scope,
    ) -> Self {
        let scope = stats.tagged(
            "http",
            "envoy_http_conn_manager_prefix",
            &settings.stat_prefix,
        );
        let upstreams = settings
            .clusters
            .iter()
            .filter_map(|name| {
                let mut upstream = Upstream::new(clusters.get(name)?);
                upstream.tag_upstream_host = !logs.is_empty() || !settings.wasm_filters.is_empty();
                Some((name.clone(), upstream))
            })
            .collect();
        let http_stats = HttpStats {
            downstream_cx_total: scope.counter("downstream_cx_total"),
            downstream_cx_rx_bytes_total: scope.counter("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: scope.counter("downstream_cx_tx_bytes_total"),
            downstream_cx_active: scope.gauge("downstream_cx_active"),
            downstream_cx_idle_timeout: scope.counter("downstream_cx_idle_timeout"),
            downstream_cx_max_requests_reached: scope.counter("downstream_cx_max_requests_reached"),
            downstream_rq_total: scope.counter("downstream_rq_total"),
            downstream_rq_active: scope.gauge("downstream_rq_active"),
            downstream_rq_completed: scope.counter("downstream_rq_completed"),
            downstream_rq_xx: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|c| scope.counter(&format!("downstream_rq_{c}"))),
            downstream_rq_time: scope.histogram("downstream_rq_time"),
            downstream_rq_max_duration_reached: scope.counter("downstream_rq_max_duration_reached"),
            downstream_rq_response_before_rq_complete: scope
                .counter("downstream_rq_response_before_rq_complete"),
            tracing: TraceReason::STATS.map(|s| scope.counter(&format!("tracing.{s}"))),
            no_route: scope.counter("no_route"),
            rq_direct_response: scope.counter("rq_direct_response"),
            rq_redirect: scope.counter("rq_redirect"),
        };
        HttpConnectionManager {
            filters: settings
                .wasm_filters
                .iter()
                .map(|p| crate::wasm::plugin_on_worker(p, clusters, stats))
                .collect(),
            h1: h1::server::Settings {
                max_head: settings.max_request_headers_bytes,
                headers_timeout: settings.request_headers_timeout,
                server_name: settings.server_name.clone(),
                accept_http_10: settings.accept_http_10,
                default_host_for_http_10: settings.default_host_for_http_10.clone(),
                max_requests: settings.max_requests_per_connection,
                tunnel_idle_timeout: settings.stream_idle_timeout,
                rx_bytes: http_stats.downstream_cx_rx_bytes_total.clone(),
                tx_bytes: http_stats.downstream_cx_tx_bytes_total.clone(),
                max_requests_reached: http_stats.downstream_cx_max_requests_reached.clone(),
                delayed_close_timeout: settings.delayed_close_timeout,
                response_before_rq_complete: http_stats
                    .downstream_rq_response_before_rq_complete
                    .clone(),
            },
            stats: http_stats,
            settings,
            logs,
            upstreams,
        }
    }

    /// Serves one downstream connection.
    pub async fn serve(self: Rc<Self>, d: Downstream, info: StreamInfo) {
        self.stats.downstream_cx_total.inc();
        self.stats.downstream_cx_active.inc();
        let s = &self.settings;
        // When the last request came: the idle timeout counts from it.
        let last_request = Rc::new(Cell::new(Instant::now()));
        let mut draining = d.draining;
        // On drain or idle timeout, requests in flight finish, then the
        // connection closes (GOAWAY on HTTP/2, `connection: close` on
        // HTTP/1.1).
        let mut shutdown = std::pin::pin!(async {
            tokio::select! {
                _ = draining.wait_for(|d| *d) => {}
                () = super::io::idle(s.idle_timeout, &last_request) => {
                    self.stats.downstream_cx_idle_timeout.inc();
                }
            }
        });
        // Waited on beside every request and frame: polled only when woken.
        let mut shutdown = Gated::new(shutdown.as_mut());
        let mut io = d.stream;
        let codec = match s.codec {
            CodecType::Http1 => Codec::Http1(BytesMut::new()),
            CodecType::Http2 => Codec::Http2(BytesMut::new()),
            CodecType::Auto => tokio::select! {
                detected = detect(&mut io) => match detected {
                    Some(codec) => codec,
                    None => return self.stats.downstream_cx_active.dec(),
                },
                () = &mut shutdown => return self.stats.downstream_cx_active.dec(),
            },
        };
        let (Codec::Http1(read) | Codec::Http2(read)) = &codec;
        self.stats
            .downstream_cx_rx_bytes_total
            .add(read.len() as u64);
        match codec {
            Codec::Http1(read) => {
                let handler = |req| self.handle(req, &info, &last_request);
                h1::server::serve(io, read, &self.h1, handler, shutdown).await;
            }
            Codec::Http2(read) => {
                let (hcm, info, last_request) = (self.clone(), Rc::new(info), last_request.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (hcm, info, last) = (hcm.clone(), info.clone(), last_request.clone());
                    async move {
                        let mut req = req.map(Body::Incoming);
                        let tunnel = h2::connect(&mut req);
                        let resp = hcm.handle(req, &info, &last).await?;
                        Ok::<_, BoxError>(match tunnel {
                            Some(client) => {
                                let idle = hcm.settings.stream_idle_timeout;
                                h2::answer_upgrade(resp, client, idle)
                            }
                            None => resp,
                        })
                    }
                });
                let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
                builder.timer(TokioTimer::new());
                self.settings.http2.server(&mut builder);
                let conn = builder.serve_connection(
                    TokioIo::new(CountedIo::new(
                        read.freeze(),
                        io,
                        self.stats.downstream_cx_rx_bytes_total.clone(),
                        self.stats.downstream_cx_tx_bytes_total.clone(),
                    )),
                    service,
                );
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = shutdown => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "http/2 connection ended with an error");
                }
            }
        }
        self.stats.downstream_cx_active.dec();
    }

    /// One request: its response, or an error that resets the stream (a
    /// wasm filter's `proxy_close_stream`).
    async fn handle(
        &self,
        mut req: Request<Body>,
        conn: &StreamInfo,
        last_request: &Cell<Instant>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        // Before filters and routing see the request, as Envoy does.
        let mutation = &self.settings.mutation;
        let readied = mutation.request(&mut req, conn.downstream_remote, conn.downstream_local);
        let client = readied.client;
        let stats = &self.stats;
        if let Some(reason) = readied.traced {
            stats.tracing[reason.index()].inc();
        }
        stats.downstream_rq_total.inc();
        stats.downstream_rq_active.inc();
        let started = Instant::now();
        last_request.set(started);
        let version = req.version();
        let replies = StreamReplies::new(self.settings.local_replies.as_ref(), &req, conn, started);
        // What the access log needs of the request, taken before it moves on.
        // (Boxed: it would otherwise widen every request's future.)
        let log_request = (!self.logs.is_empty()).then(|| {
            let authority = authority(&req);
            Box::new(HttpInfo {
                method: req.method().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
                authority,
                protocol: protocol_name(version),
                request_headers: req.headers().clone(),
                ..HttpInfo::default()
            })
        });
        // Futures are moved by memcpy as they nest, so the common path
        // keeps them small: the wasm one is boxed. Without filters the
        // stream's deadline is the router's to keep (see `route`).
        let deadline = self.settings.response_deadline;
        let result = if !readied.path_accepted {
            let refused = router::local(StatusCode::BAD_REQUEST, "Bad Request");
            Ok(replies.finish(refused).map(ResponseBody::from))
        } else if self.filters.is_empty() {
            let resp = self
                .route(&mut req, client, deadline, started, started)
                .await;
            let mut resp = replies.finish(resp);
            if let Some(id) = mutation.request_id_for_response(req.headers()) {
                resp.headers_mut().insert(X_REQUEST_ID, id);
            }
            h1::recycle(std::mem::take(req.headers_mut()));
            Ok(resp.map(ResponseBody::from))
        } else {
            // (Taken here rather than before the branches, where it would
            // live across the router's await and widen its future.)
            let id = mutation.request_id_for_response(req.headers());
            let filtered = Box::pin(self.filtered(req, conn, client, &replies, started));
            let result = match deadline {
                None => filtered.await,
                Some(limit) => match clock::timeout_at(started + limit, filtered).await {
                    Ok(r) => r,
                    Err(_) => Ok(replies.finish(stream_timeout()).map(ResponseBody::from)),
                },
            };
            result.map(|mut r| {
                if let Some(id) = id {
                    r.headers_mut().insert(X_REQUEST_ID, id);
                }
                r
            })
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                stats.downstream_rq_active.dec();
                return Err(e);
            }
        };
        // Answer in the client's HTTP version, whatever the upstream spoke.
        *resp.version_mut() = version;
        resp.headers_mut()
            .insert(header::SERVER, self.settings.server_name.clone());
        mutation.response(resp.headers_mut());
        let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        stats.downstream_rq_xx[class].inc();
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats
            .downstream_rq_time
            .record(started.elapsed().as_millis() as u64);
        if let Some(&StreamDeadline(at)) = resp.extensions().get() {
            let reached = stats.downstream_rq_max_duration_reached.clone();
            resp = resp.map(|b| b.until(at, reached));
        }
        if let Some(mut http) = log_request {
            self.log(conn, started, client, &mut http, &resp);
        }
        Ok(resp)
    }

    /// A request through the wasm filters, the router, and back.
    async fn filtered(
        &self,
        req: Request<Body>,
        conn: &StreamInfo,
        client: SocketAddr,
        replies: &StreamReplies<'_>,
        started: Instant,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let facts = ConnectionFacts {
            id: conn.connection_id,
            source: client,
            destination: conn.downstream_local,
            direction: 0,
        };
        let protocol = protocol_name(req.version());
        let opened = match self.enabled_filters(&req) {
            None => WasmStream::start(self.filters.iter(), &facts, protocol),
            Some(enabled) => WasmStream::start(enabled.into_iter(), &facts, protocol),
        };
        let stream = match opened {
            Ok(s) => s,
            Err(stop) => return stopped(stop, replies),
        };
        let (parts, body) = req.into_parts();
        let end = hyper::body::Body::is_end_stream(&body);
        let parts = match stream.request_headers(parts, end).await {
            Ok(p) => p,
            // A local reply still passes the response callbacks.
            Err(Stop::Reply(r)) => {
                return self.respond(&stream, replies.finish(*r), replies).await;
            }
            Err(Stop::Reset) => return stopped(Stop::Reset, replies),
        };
        let (body, aborted) = stream.request_body(body);
        let mut req = Request::from_parts(parts, body);
        let route = self.route(&mut req, client, None, started, Instant::now());
        let resp = match aborted {
            None => route.await,
            // A plugin may stop the stream while the body streams up.
            // The stop comes before the upstream request's body fails, and
            // is looked at first, so that its answer wins.
            Some(aborted) => tokio::select! {
                biased;
                Ok(stop) = aborted => match stop {
                    Stop::Reply(r) => *r,
                    Stop::Reset => return stopped(Stop::Reset, replies),
                },
                r = route => r,
            },
        };
        let resp = replies.finish(resp);
        if let Some(u) = resp.extensions().get::<router::UpstreamHost>() {
            stream.set_upstream(u.0);
        }
        self.respond(&stream, resp, replies).await
    }

    /// A response through the wasm filters' response callbacks.
    async fn respond(
        &self,
        stream: &Rc<WasmStream>,
        resp: Response<Body>,
        replies: &StreamReplies<'_>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let (parts, body) = resp.into_parts();
        let end = hyper::body::Body::is_end_stream(&body);
        match stream.response_headers(parts, end).await {
            Ok(parts) => Ok(Response::from_parts(parts, stream.response_body(body))),
            Err(stop) => stopped(stop, replies),
        }
    }

    /// Writes the access log entry of a request once its response head is
    /// ready (durations and byte counts are to that point; bodies stream
    /// on afterwards).
    fn log(
        &self,
        conn: &StreamInfo,
        started: Instant,
        client: SocketAddr,
        http: &mut HttpInfo,
        resp: &Response<ResponseBody>,
    ) {
        let mut info = StreamInfo::new(conn.connection_id, client, conn.downstream_local);
        info.downstream_direct_remote = conn.downstream_remote;
        info.started_at(started);
        let length = |h: &http::HeaderMap| {
            h.get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0)
        };
        info.bytes_received = length(&http.request_headers);
        info.bytes_sent = length(resp.headers());
        info.upstream_host = resp.extensions().get::<router::UpstreamHost>().map(|u| u.0);
        if let Some(flags) = resp.extensions().get::<ResponseFlags>() {
            info.response_flags = *flags;
        }
        http.response_code = resp.status().as_u16();
        http.response_headers = resp.headers().clone();
        info.http = Some(Box::new(std::mem::take(http)));
        info.finish();
        for log in &self.logs {
            log.log(&info);
        }
    }

    /// Routes a request and forwards it, answering 408 if `deadline`
    /// passes before the response head, and 504 if the route's
    /// `max_stream_duration` (from `started`, the stream's start) does
    /// (with one timer: the route's own timeout when it is the shorter,
    /// which then always fires first). `sent` is when the request left for
    /// the router (`started`, when no filter came between).
    async fn route(
        &self,
        req: &mut Request<Body>,
        client: SocketAddr,
        deadline: Option<std::time::Duration>,
        started: Instant,
        sent: Instant,
    ) -> Response<Body> {
        // Owned but cheap: both share the bytes hyper read the request into.
        let host_header = req.headers().get(header::HOST).cloned();
        let host = match &host_header {
            Some(h) => std::borrow::Cow::Borrowed(h.to_str().unwrap_or("")),
            None => authority(req).into(),
        };
        let path_and_query = req.uri().path_and_query().cloned();
        let path = path_and_query.as_ref().map_or("/", |p| p.as_str());
        let matched = self.find_route(req, &host, path);
        let connect = req.method() == Method::CONNECT;
        // A CONNECT needs the CONNECT upgrade enabled.
        if connect {
            if let Some(Action::Forward(fwd)) = matched.as_ref().map(|m| &m.route.action) {
                if !route::upgrade_allowed(&self.settings.upgrades, &fwd.upgrades, "CONNECT") {
                    return router::local(StatusCode::FORBIDDEN, "");
                }
            }
        }
        if let Some(h1::Upgrade(kind)) = req.extensions().get() {
            let by_route = match matched.as_ref().map(|m| &m.route.action) {
                Some(Action::Forward(fwd)) => fwd.upgrades.as_slice(),
                _ => &[],
            };
            let kind = kind.to_str().unwrap_or("");
            if !route::upgrade_allowed(&self.settings.upgrades, by_route, kind) {
                return router::local(StatusCode::FORBIDDEN, "");
            }
        }
        let Some(matched) = matched else {
            self.stats.no_route.inc();
            return router::flagged(
                router::local(StatusCode::NOT_FOUND, ""),
                ResponseFlags::NO_ROUTE_FOUND,
            );
        };
        let route = matched.route;
        let mut resp = match &route.action {
            Action::Direct { status, body } => {
                self.stats.rq_direct_response.inc();
                router::local(*status, body.clone())
            }
            Action::Redirect(r) => {
                self.stats.rq_redirect.inc();
                let (status, location) = redirect_location(r, route, &host, path);
                let mut resp = router::local(status, "");
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            Action::Forward(fwd) => {
                let Some(upstream) = self.upstreams.get(fwd.pick_cluster()) else {
                    return router::local(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
                };
                let hash = fwd.hash(req.headers(), req.uri().query(), client.ip());
                // A CONNECT without connect_config goes on to the cluster,
                // as any request does (see `pool`).
                if connect && fwd.terminate_connect {
                    let how = router::Sending {
                        hash,
                        auto_host: false,
                        priority: fwd.priority,
                    };
                    // Boxed: rare, and inline it would widen every request's future.
                    return match Box::pin(upstream.connect(how)).await {
                        Ok(stream) => {
                            let mut resp = Response::new(Body::empty());
                            resp.extensions_mut().insert(ConnectTunnel::new(stream));
                            resp
                        }
                        Err(answer) => answer,
                    };
                }
                let rewritten = match (&fwd.prefix_rewrite, &fwd.regex_rewrite) {
                    (Some(pr), _) => Some(route.rewrite_path(path, pr)),
                    (None, Some((re, substitution))) => {
                        let (p, q) = path
                            .split_once('?')
                            .map_or((path, None), |(p, q)| (p, Some(q)));
                        let p = re.replace_all(p, substitution.as_str());
                        Some(q.map_or_else(|| p.to_string(), |q| format!("{p}?{q}")))
                    }
                    (None, None) => None,
                };
                if let Some(uri) = rewritten.and_then(|p| p.parse().ok()) {
                    *req.uri_mut() = uri;
                }
                let headers = req.headers_mut();
                // The client's Host goes upstream as it came, unless rewritten
                // (or the client spoke HTTP/2, which has no Host header).
                let new_host = match fwd.host_rewrite.as_deref() {
                    Some(rewrite) => Some(rewrite),
                    None if host_header.is_none() => Some(&*host),
                    None => None,
                };
                if let Some(v) = new_host.and_then(|h| HeaderValue::from_str(h).ok()) {
                    headers.insert(header::HOST, v);
                }
                for level in matched.levels.iter().rev() {
                    level.0.apply(req.headers_mut());
                }
                // Before wasp adds an x-envoy-* header of its own.
                let Controls {
                    retry,
                    timeout,
                    expected,
                } = controls(fwd, req.headers_mut());
                // Envoy tells the upstream how long it will wait.
                if let Some(v) = expected {
                    req.headers_mut().insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, v);
                }
                let how = router::Sending {
                    hash,
                    auto_host: fwd.auto_host_rewrite,
                    priority: fwd.priority,
                };
                let duration = fwd
                    .stream_duration(req.headers(), self.settings.max_stream_duration)
                    .map(|d| started + d);
                let forwarded = std::pin::pin!(upstream.forward(
                    req,
                    timeout,
                    retry,
                    fwd.attempt_count,
                    how,
                    sent
                ));
                // The first of the two deadlines, and whether it is the
                // stream duration's.
                let end = match (deadline.map(|d| sent + d), duration) {
                    (Some(d), Some(m)) if m < d => Some((m, true)),
                    (Some(d), _) => Some((d, false)),
                    (None, m) => m.map(|m| (m, true)),
                };
                let mut resp = match end {
                    Some((at, by_duration)) if timeout.is_none_or(|t| sent + t > at) => {
                        match clock::timeout_at(at, forwarded).await {
                            Ok(r) => r,
                            Err(_) if by_duration => return self.duration_reached(),
                            Err(_) => return stream_timeout(),
                        }
                    }
                    _ => forwarded.await,
                };
                // A response that started in time is cut off if it is
                // still going when the duration is up.
                if let Some(at) = duration {
                    resp.extensions_mut().insert(StreamDeadline(at));
                }
                resp
            }
        };
        // Most specific last, so a route's value wins over its virtual host's.
        for level in matched.levels.iter().rev() {
            level.1.apply(resp.headers_mut());
        }
        resp
    }

    /// Envoy's answer when a stream outlives its `max_stream_duration`
    /// before the response starts (to a gRPC client, DEADLINE_EXCEEDED).
    fn duration_reached(&self) -> Response<Body> {
        self.stats.downstream_rq_max_duration_reached.inc();
        let mut resp = router::local(StatusCode::GATEWAY_TIMEOUT, "downstream duration timeout");
        if let Some(local) = resp.extensions_mut().get_mut::<grpc::LocalReply>() {
            local.grpc_status = Some(4);
        }
        router::flagged(resp, ResponseFlags::DURATION_TIMEOUT)
    }

    /// The route for a request to `host` and `path`. A CONNECT matches only
    /// a route with a `connect_matcher`, as in Envoy.
    fn find_route<'s>(
        &'s self,
        req: &Request<Body>,
        host: &str,
        path: &str,
    ) -> Option<route::Matched<'s>> {
        let routes = &self.settings.routes;
        match req.method() == Method::CONNECT {
            true => routes.find_connect(host, req.headers()),
            false => routes.find(host, path, req.headers()),
        }
    }

    /// Which wasm filters a request runs, when some are off by default or
    /// a route switches some (`HcmSettings::filter_switches`); else
    /// `None`: all of them.
    fn enabled_filters(&self, req: &Request<Body>) -> Option<Vec<&PluginHandle>> {
        let switches = self.settings.filter_switches.as_ref()?;
        let host = match req.headers().get(header::HOST) {
            Some(h) => std::borrow::Cow::Borrowed(h.to_str().unwrap_or("")),
            None => authority(req).into(),
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let matched = self.find_route(req, &host, path);
        self.filters
            .iter()
            .zip(switches)
            .filter(|(_, (name, by_default))| {
                !matched
                    .as_ref()
                    .and_then(|m| m.filter_disabled(name))
                    .unwrap_or(*by_default)
            })
            .map(|(f, _)| f)
            .collect::<Vec<_>>()
            .into()
    }
}

/// When a response must have ended (`max_stream_duration`): a response
/// extension from the router's part to the connection manager's.
#[derive(Debug, Clone, Copy)]
struct StreamDeadline(Instant);

/// Envoy's answer when a stream's deadline (request_timeout or
/// stream_idle_timeout) passes before the response head.
fn stream_timeout() -> Response<Body> {
    router::local(StatusCode::REQUEST_TIMEOUT, "stream timeout")
}

/// What a stream stopped by a wasm filter answers: its reply, or a reset.
fn stopped(stop: Stop, replies: &StreamReplies<'_>) -> Result<Response<ResponseBody>, BoxError> {
    match stop {
        Stop::Reply(r) => Ok(replies.finish(*r).map(ResponseBody::from)),
        Stop::Reset => Err("stream closed by a wasm filter".into()),
    }
}

fn protocol_name(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// The request's authority: Host on HTTP/1.1, `:authority` on HTTP/2.
fn authority<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}
