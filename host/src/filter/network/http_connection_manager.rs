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
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::access_log::{AccessLog, AccessLogSettings, HttpInfo, ResponseFlags, StreamInfo};
use crate::clock;
use crate::cluster::WorkerClusters;
use crate::config::path::{index, join};
use crate::config::{
    CodecType, EscapedSlashesAction, ForwardClientCertDetails, HttpConnectionManagerConfig,
    HttpFilterConfig, ValidationError,
};
use crate::filter::http::body::{BoxError, ResponseBody};
use crate::filter::http::codec::{Codec, CountedIo, detect};
use crate::filter::http::h1;
use crate::filter::http::h2::{self, Http2Settings};
use crate::filter::http::path::{self, EscapedSlashes, Normalization};
use crate::filter::http::pool::LocalExec;
use crate::filter::http::retry::{RETRY_HEADERS, RetryState};
use crate::filter::http::route::{self, Action, RouteTable, redirect_location};
use crate::filter::http::router::{self, Body, Upstream};
use crate::filter::http::tunnel::ConnectTunnel;
use crate::filter::http::wasm::{Stop, WasmStream};
use crate::filter::network::gated::Gated;
use crate::stats::{Counter, Gauge, Histogram, Scope};
use crate::wasm::{ConnectionFacts, PluginHandle, PluginSettings};

use super::Downstream;

/// Which port a request's Host loses before filters and routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    Keep,
    /// `strip_any_host_port`.
    Any,
    /// `strip_matching_host_port`: the listener's own port only.
    Matching,
}

/// A validated http_connection_manager.
#[derive(Debug, Clone)]
pub struct HcmSettings {
    pub stat_prefix: String,
    pub codec: CodecType,
    pub routes: Arc<RouteTable>,
    pub use_remote_address: bool,
    /// `internal_address_config.cidr_ranges`: (network, prefix length).
    pub internal_ranges: Vec<(std::net::IpAddr, u8)>,
    pub generate_request_id: bool,
    /// Keep an x-request-id from an external client (else an edge
    /// request gets a new one).
    pub preserve_external_request_id: bool,
    /// Copy the request's x-request-id onto its response.
    pub request_id_in_response: bool,
    /// `skip_xff_append`: use_remote_address without adding to x-forwarded-for.
    pub skip_xff_append: bool,
    /// `via`: appended to the Via of requests and responses.
    pub via: Option<HeaderValue>,
    /// Which Host ports are dropped before routing.
    pub strip_port: StripPort,
    /// How paths are normalized before filters and routing.
    pub paths: Normalization,
    /// `forward_client_cert_details: ALWAYS_FORWARD_ONLY`: the client's
    /// x-forwarded-client-cert goes on (else it is removed).
    pub forward_client_cert: bool,
    pub server_name: HeaderValue,
    pub request_headers_timeout: Option<Duration>,
    /// How long a connection may go without a new request before it is
    /// closed (common_http_protocol_options.idle_timeout; Envoy's default
    /// is an hour).
    pub idle_timeout: Option<Duration>,
    /// The longest a request may wait for its response to start: the
    /// shorter of request_timeout and stream_idle_timeout (Envoy's default
    /// stream idle timeout is 5 minutes).
    pub response_deadline: Option<Duration>,
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
            }
        }
        let mut wasm_filters = Vec::new();
        for (i, f) in c.http_filters[..c.http_filters.len() - 1]
            .iter()
            .enumerate()
        {
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
            use_remote_address: c.use_remote_address,
            internal_ranges: internal_ranges(c.internal_address_config.as_ref(), path)?,
            generate_request_id: c.generate_request_id.unwrap_or(true),
            preserve_external_request_id: c.preserve_external_request_id,
            request_id_in_response: c.always_set_request_id_in_response,
            skip_xff_append: c.skip_xff_append,
            via: match c.via.as_deref() {
                None | Some("") => None,
                Some(v) => Some(HeaderValue::from_str(v).map_err(|_| {
                    ValidationError::new(join(path, "via"), "not a valid header value")
                })?),
            },
            strip_port: match (c.strip_any_host_port, c.strip_matching_host_port) {
                (true, true) => {
                    return Err(ValidationError::new(
                        join(path, "strip_any_host_port"),
                        "set strip_any_host_port or strip_matching_host_port, not both",
                    ));
                }
                (true, false) => StripPort::Any,
                (false, true) => StripPort::Matching,
                (false, false) => StripPort::Keep,
            },
            forward_client_cert: c.forward_client_cert_details
                == ForwardClientCertDetails::AlwaysForwardOnly,
            paths: Normalization {
                dot_segments: c.normalize_path.unwrap_or(false),
                merge_slashes: c.merge_slashes,
                escaped_slashes: match c.path_with_escaped_slashes_action {
                    EscapedSlashesAction::ImplementationSpecificDefault
                    | EscapedSlashesAction::KeepUnchanged => EscapedSlashes::Keep,
                    EscapedSlashesAction::RejectRequest => EscapedSlashes::Reject,
                    EscapedSlashesAction::UnescapeAndForward => EscapedSlashes::Unescape,
                    EscapedSlashesAction::UnescapeAndRedirect => {
                        return Err(ValidationError::new(
                            join(path, "path_with_escaped_slashes_action"),
                            "UNESCAPE_AND_REDIRECT is not supported (UNESCAPE_AND_FORWARD is)",
                        ));
                    }
                },
            },
            server_name,
            request_headers_timeout: c
                .request_headers_timeout
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            idle_timeout: c
                .common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout)
                .map_or(Some(Duration::from_secs(3600)), |d| {
                    Some(d.0).filter(|d| !d.is_zero())
                }),
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

// Consts, so that their names are checked once, at compile time, and not
// on every request.
const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
        let peer = conn.downstream_remote;
        // Before filters and routing see the path, as Envoy does.
        let refused = !self.settings.paths.is_off() && !self.normalize_path(&mut req);
        self.mutate_request_headers(&mut req, peer, conn.downstream_local);
        let stats = &self.stats;
        stats.downstream_rq_total.inc();
        stats.downstream_rq_active.inc();
        let started = Instant::now();
        last_request.set(started);
        let version = req.version();
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
        let result = if refused {
            Ok(router::local(StatusCode::BAD_REQUEST, "Bad Request").map(ResponseBody::from))
        } else if self.filters.is_empty() {
            let mut resp = self.route(&mut req, peer, deadline, started).await;
            if let Some(id) = self.request_id_for_response(req.headers()) {
                resp.headers_mut().insert(X_REQUEST_ID, id);
            }
            h1::recycle(std::mem::take(req.headers_mut()));
            Ok(resp.map(ResponseBody::from))
        } else {
            // (Taken here rather than before the branches, where it would
            // live across the router's await and widen its future.)
            let id = self.request_id_for_response(req.headers());
            let filtered = Box::pin(self.filtered(req, conn));
            let result = match deadline {
                None => filtered.await,
                Some(limit) => match clock::timeout_at(started + limit, filtered).await {
                    Ok(r) => r,
                    Err(_) => Ok(stream_timeout().map(ResponseBody::from)),
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
        if let Some(via) = &self.settings.via {
            append_via(resp.headers_mut(), via);
        }
        let class = (resp.status().as_u16() / 100).clamp(1, 5) as usize - 1;
        stats.downstream_rq_xx[class].inc();
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats
            .downstream_rq_time
            .record(started.elapsed().as_millis() as u64);
        if let Some(mut http) = log_request {
            self.log(conn, &mut http, &resp);
        }
        Ok(resp)
    }

    /// A request through the wasm filters, the router, and back.
    async fn filtered(
        &self,
        req: Request<Body>,
        conn: &StreamInfo,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let facts = ConnectionFacts {
            id: conn.connection_id,
            source: conn.downstream_remote,
            destination: conn.downstream_local,
            direction: 0,
        };
        let protocol = protocol_name(req.version());
        let stream = match WasmStream::start(&self.filters, &facts, protocol) {
            Ok(s) => s,
            Err(stop) => return stopped(stop),
        };
        let (parts, body) = req.into_parts();
        let end = hyper::body::Body::is_end_stream(&body);
        let parts = match stream.request_headers(parts, end).await {
            Ok(p) => p,
            // A local reply still passes the response callbacks.
            Err(Stop::Reply(r)) => return self.respond(&stream, *r).await,
            Err(Stop::Reset) => return stopped(Stop::Reset),
        };
        let (body, aborted) = stream.request_body(body);
        let mut req = Request::from_parts(parts, body);
        let route = self.route(&mut req, conn.downstream_remote, None, Instant::now());
        let resp = match aborted {
            None => route.await,
            // A plugin may stop the stream while the body streams up.
            // The stop comes before the upstream request's body fails, and
            // is looked at first, so that its answer wins.
            Some(aborted) => tokio::select! {
                biased;
                Ok(stop) = aborted => match stop {
                    Stop::Reply(r) => *r,
                    Stop::Reset => return stopped(Stop::Reset),
                },
                r = route => r,
            },
        };
        if let Some(u) = resp.extensions().get::<router::UpstreamHost>() {
            stream.set_upstream(u.0);
        }
        self.respond(&stream, resp).await
    }

    /// A response through the wasm filters' response callbacks.
    async fn respond(
        &self,
        stream: &Rc<WasmStream>,
        resp: Response<Body>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let (parts, body) = resp.into_parts();
        let end = hyper::body::Body::is_end_stream(&body);
        match stream.response_headers(parts, end).await {
            Ok(parts) => Ok(Response::from_parts(parts, stream.response_body(body))),
            Err(stop) => stopped(stop),
        }
    }

    /// Writes the access log entry of a request once its response head is
    /// ready (durations and byte counts are to that point; bodies stream
    /// on afterwards).
    fn log(&self, conn: &StreamInfo, http: &mut HttpInfo, resp: &Response<ResponseBody>) {
        let mut info = StreamInfo::new(
            conn.connection_id,
            conn.downstream_remote,
            conn.downstream_local,
        );
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
    /// passes before the response head (with one timer: the route's own
    /// timeout when it is the shorter, which then always fires first).
    /// `sent` is when the request left for the router (the clock read that
    /// started the stream, when no filter came between).
    async fn route(
        &self,
        req: &mut Request<Body>,
        peer: SocketAddr,
        deadline: Option<std::time::Duration>,
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
        let routes = &self.settings.routes;
        // A CONNECT matches only a route with a `connect_matcher`, as in
        // Envoy, and needs the CONNECT upgrade enabled.
        let connect = req.method() == Method::CONNECT;
        let matched = match connect {
            true => routes.find_connect(&host, req.headers()),
            false => routes.find(&host, path, req.headers()),
        };
        if connect {
            if let Some(Action::Forward(fwd)) = matched.as_ref().map(|m| &m.route.action) {
                // Only ended here: forwarding CONNECT upstream is not
                // supported (a route can only enable it with connect_config).
                if !fwd.terminate_connect
                    || !route::upgrade_allowed(&self.settings.upgrades, &fwd.upgrades, "CONNECT")
                {
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
                let hash = fwd.hash(req.headers(), req.uri().query(), peer.ip());
                if connect {
                    let how = router::Sending {
                        hash,
                        auto_host: false,
                        priority: fwd.priority,
                    };
                    // Boxed: rare, and inline it would widen every request's future.
                    return match Box::pin(upstream.connect(how)).await {
                        Ok(stream) => {
                            let mut resp = router::local(StatusCode::OK, "");
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
                let forwarded = std::pin::pin!(upstream.forward(
                    req,
                    timeout,
                    retry,
                    fwd.attempt_count,
                    how,
                    sent
                ));
                match deadline {
                    Some(d) if timeout.is_none_or(|t| t > d) => {
                        match clock::timeout_at(sent + d, forwarded).await {
                            Ok(r) => r,
                            Err(_) => return stream_timeout(),
                        }
                    }
                    _ => forwarded.await,
                }
            }
        };
        // Most specific last, so a route's value wins over its virtual host's.
        for level in matched.levels.iter().rev() {
            level.1.apply(resp.headers_mut());
        }
        resp
    }

    /// What Envoy's connection manager does to a request before any HTTP
    /// filter sees it: x-forwarded-for and x-envoy-internal or
    /// x-envoy-external-address (with use_remote_address),
    /// x-forwarded-proto and x-request-id. A request is internal when it
    /// came with no x-forwarded-for from a peer in
    /// `internal_address_config` (none unless configured, as in Envoy);
    /// others lose the `x-envoy-*` headers only trusted hops may set.
    fn mutate_request_headers(&self, req: &mut Request<Body>, peer: SocketAddr, local: SocketAddr) {
        let s = &self.settings;
        if s.strip_port != StripPort::Keep {
            strip_host_port(
                req,
                (s.strip_port == StripPort::Matching).then_some(local.port()),
            );
        }
        let headers = req.headers_mut();
        let mut internal = false;
        if s.use_remote_address {
            let ip = peer.ip();
            let ip_text = ip.to_string();
            let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(existing) => format!("{existing},{ip_text}"),
                None => {
                    internal = self.is_internal(ip);
                    ip_text.clone()
                }
            };
            if !s.skip_xff_append {
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    headers.insert(X_FORWARDED_FOR, v);
                }
            }
            if internal {
                headers.insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
            } else if let Ok(v) = HeaderValue::from_str(&ip_text) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
            }
        }
        // A scan of the names, so that requests with no such header (most)
        // pay no hashed removals.
        let (mut envoy, mut client_cert) = (false, false);
        for name in headers.keys() {
            envoy |= name.as_str().starts_with("x-envoy-");
            client_cert |= name == X_FORWARDED_CLIENT_CERT;
        }
        if envoy && !internal {
            for name in EXTERNAL_STRIPPED.iter().chain(&RETRY_HEADERS) {
                headers.remove(name);
            }
        }
        if client_cert && !s.forward_client_cert {
            headers.remove(X_FORWARDED_CLIENT_CERT);
        }
        // One hash each (`entry`), not a lookup and then an insert.
        headers
            .entry(X_FORWARDED_PROTO)
            .or_insert(HeaderValue::from_static("http"));
        if s.generate_request_id {
            // An edge request's id is wasp's own unless told to keep it.
            let edge = s.use_remote_address && !internal;
            if edge && !s.preserve_external_request_id {
                headers.insert(X_REQUEST_ID, request_id());
            } else if let header::Entry::Vacant(slot) = headers.entry(X_REQUEST_ID) {
                slot.insert(request_id());
            }
        }
        if let Some(via) = &s.via {
            append_via(headers, via);
        }
    }

    /// `always_set_request_id_in_response`: the x-request-id a request's
    /// response gets.
    fn request_id_for_response(&self, request: &http::HeaderMap) -> Option<HeaderValue> {
        match self.settings.request_id_in_response {
            true => request.get(X_REQUEST_ID).cloned(),
            false => None,
        }
    }

    /// Normalizes the request's path as configured; false if the path is
    /// refused.
    fn normalize_path(&self, req: &mut Request<Body>) -> bool {
        let Some(pq) = req.uri().path_and_query() else {
            return true;
        };
        let normal = match path::normalize(pq.as_str(), self.settings.paths) {
            Ok(None) => return true,
            Ok(Some(normal)) => normal,
            Err(path::Rejected) => return false,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = normal.parse().ok();
        match Uri::from_parts(parts) {
            Ok(uri) => {
                *req.uri_mut() = uri;
                true
            }
            Err(_) => false,
        }
    }

    fn is_internal(&self, ip: std::net::IpAddr) -> bool {
        self.settings
            .internal_ranges
            .iter()
            .any(|&(net, len)| in_range(ip, net, len))
    }
}

/// Adds `via` to a message's Via list.
fn append_via(headers: &mut http::HeaderMap, via: &HeaderValue) {
    let value = match headers.get(header::VIA) {
        Some(old) => {
            let mut v = old.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(via.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| via.clone())
        }
        None => via.clone(),
    };
    headers.insert(header::VIA, value);
}

/// Drops the port of a request's Host (or HTTP/2 authority): any port, or
/// only `port`.
fn strip_host_port(req: &mut Request<Body>, port: Option<u16>) {
    let strip = |host: &str| -> Option<String> {
        let (name, p) = host.rsplit_once(':')?;
        // An IPv6 literal without a port ("[::1]") has its colons inside.
        if name.is_empty() || p.contains(']') {
            return None;
        }
        let p: u16 = p.parse().ok()?;
        port.is_none_or(|want| want == p).then(|| name.to_string())
    };
    if let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(v) = strip(h).and_then(|h| HeaderValue::from_str(&h).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let stripped = req.uri().authority().and_then(|a| strip(a.as_str()));
    if let Some(authority) = stripped {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = authority.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Whether `ip` is in `net`/`len`.
fn in_range(ip: std::net::IpAddr, net: std::net::IpAddr, len: u8) -> bool {
    use std::net::IpAddr;
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `internal_address_config.cidr_ranges`, validated.
fn internal_ranges(
    c: Option<&crate::config::InternalAddressConfig>,
    path: &str,
) -> Result<Vec<(std::net::IpAddr, u8)>, ValidationError> {
    let Some(c) = c else { return Ok(Vec::new()) };
    let at = join(path, "internal_address_config.cidr_ranges");
    c.cidr_ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let net: std::net::IpAddr = r.address_prefix.parse().map_err(|_| {
                ValidationError::new(
                    join(&index(&at, i), "address_prefix"),
                    format!("`{}` is not an IP address", r.address_prefix),
                )
            })?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let len = r.prefix_len.unwrap_or(max);
            if len > max {
                return Err(ValidationError::new(
                    join(&index(&at, i), "prefix_len"),
                    format!("must be at most {max}"),
                ));
            }
            Ok((net, len as u8))
        })
        .collect()
}

/// What Envoy strips from requests that are not internal, besides the
/// retry headers: `x-envoy-*` headers that would steer this hop or that
/// only Envoy itself may set.
const EXTERNAL_STRIPPED: [HeaderName; 11] = [
    X_ENVOY_INTERNAL,
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
    HeaderName::from_static("x-envoy-original-url"),
];

/// What a request's route and its `x-envoy-*` headers say about its
/// retries and timeouts.
struct Controls<'p> {
    /// Boxed: most requests have none, and inline it would widen every
    /// request's future (and so every connection's task).
    retry: Option<Box<RetryState<'p>>>,
    timeout: Option<Duration>,
    /// `x-envoy-expected-rq-timeout-ms`: the per-try timeout, else the
    /// route's.
    expected: Option<HeaderValue>,
}

/// The controls of a request to `fwd`. Internal requests (the only ones
/// that still have them: [`HttpConnectionManager::mutate_request_headers`]
/// removed them from the others) may steer retries with the
/// `x-envoy-retry-*` headers and set the timeouts with
/// `x-envoy-upstream-rq-timeout-ms` (0: none) and
/// `x-envoy-upstream-rq-per-try-timeout-ms` (ignored unless shorter); none
/// of these go upstream. Requests with no `x-envoy-*` header at all (most)
/// pay a scan of the names and no hashed lookups.
fn controls<'p>(fwd: &'p route::Forward, headers: &mut http::HeaderMap) -> Controls<'p> {
    let mut plain = Controls {
        retry: None,
        timeout: fwd.timeout,
        expected: fwd.expected_timeout.clone(),
    };
    let steered = headers.keys().any(|k| k.as_str().starts_with("x-envoy-"));
    let mut retry = match (&fwd.retry, steered) {
        (None, false) => return plain,
        (policy, _) => RetryState::new(policy.as_deref(), headers, steered).map(Box::new),
    };
    if !steered {
        plain.retry = retry;
        return plain;
    }
    let mut ms = |name: &HeaderName| {
        let v = headers.remove(name)?;
        v.to_str().ok()?.parse().ok().map(Duration::from_millis)
    };
    let (global, per_try) = (
        ms(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS),
        ms(&X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS),
    );
    if global.is_none() && per_try.is_none() {
        plain.retry = retry;
        return plain;
    }
    let timeout = match global {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => fwd.timeout,
    };
    let per_try = per_try
        .or_else(|| fwd.retry.as_ref().and_then(|p| p.per_try_timeout))
        .filter(|p| !p.is_zero() && timeout.is_none_or(|t| *p < t));
    let (retry_per_try, timeout) = match &mut retry {
        Some(r) => {
            r.set_per_try_timeout(per_try);
            (per_try, timeout)
        }
        // A single try: its timeout is the shorter one.
        None => (None, per_try.or(timeout)),
    };
    Controls {
        retry,
        timeout,
        expected: retry_per_try
            .or(timeout)
            .map(|t| t.as_millis() as u64)
            .filter(|&ms| ms > 0)
            .map(HeaderValue::from),
    }
}

/// Envoy's answer when a stream's deadline (request_timeout or
/// stream_idle_timeout) passes before the response head.
fn stream_timeout() -> Response<Body> {
    router::local(StatusCode::REQUEST_TIMEOUT, "stream timeout")
}

/// What a stream stopped by a wasm filter answers: its reply, or a reset.
fn stopped(stop: Stop) -> Result<Response<ResponseBody>, BoxError> {
    match stop {
        Stop::Reply(r) => Ok(r.map(ResponseBody::from)),
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

/// A random (version 4) UUID as a header value. The values are cut from
/// a per-thread block of a few KiB, one allocation per ~100 requests
/// rather than one each.
fn request_id() -> HeaderValue {
    thread_local! {
        static BLOCK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    BLOCK.with_borrow_mut(|block| {
        if block.capacity() < 36 {
            *block = BytesMut::with_capacity(4096);
        }
        block.extend_from_slice(&uuid_v4());
        let id = block.split().freeze();
        HeaderValue::from_maybe_shared(id).expect("hex digits and dashes")
    })
}

/// A random (version 4) UUID, as Envoy's x-request-id, written out
/// without the formatting machinery (this runs for every request).
fn uuid_v4() -> [u8; 36] {
    /// Each byte's two hex digits.
    const HEX: [[u8; 2]; 256] = {
        let digits = b"0123456789abcdef";
        let mut table = [[0; 2]; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = [digits[b >> 4], digits[b & 0xf]];
            b += 1;
        }
        table
    };
    let mut bytes =
        (u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..))).to_be_bytes();
    // 122 random bits, then the version (4) and variant (10) bits.
    bytes[6] = bytes[6] & 0x0f | 0x40;
    bytes[8] = bytes[8] & 0x3f | 0x80;
    let mut out = [b'-'; 36];
    // Where each byte's digits go: groups of 4, 2, 2, 2 and 6 bytes.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (b, at) in bytes.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&HEX[usize::from(*b)]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = super::uuid_v4();
        let s = std::str::from_utf8(&a).unwrap();
        let groups: Vec<&str> = s.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            s.bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(groups[2].starts_with('4'), "{s}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{s}"
        );
        assert_ne!(a, super::uuid_v4());
        let (x, y) = (super::request_id(), super::request_id());
        assert_ne!(x, y);
        assert_eq!((x.len(), y.len()), (36, 36));
    }
}
