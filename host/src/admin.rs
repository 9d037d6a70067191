//! The admin interface, on its own listener on the main thread: Envoy's
//! endpoints in Envoy's formats.

mod render;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::cluster::ClusterManager;
use crate::config::NodeConfig;
use crate::server::logging::{self, LogControl};
use crate::server::options::Options;
use crate::stats::{Gauge, Store};

/// What the admin endpoints read and control.
pub struct AdminState {
    pub stats: Arc<Store>,
    pub clusters: Arc<ClusterManager>,
    /// The bootstrap as JSON, for /config_dump.
    pub config: serde_json::Value,
    /// (name, bound address) of every listener.
    pub listeners: Vec<(String, SocketAddr)>,
    pub options: Options,
    pub node: NodeConfig,
    pub concurrency: usize,
    pub started: SystemTime,
    pub shutdown: watch::Sender<bool>,
    pub draining: AtomicBool,
    pub log: LogControl,
    server: ServerGauges,
}

/// `server.*` gauges, refreshed when stats are read.
struct ServerGauges {
    uptime: Gauge,
    live: Gauge,
    state: Gauge,
    concurrency: Gauge,
    memory_physical_size: Gauge,
    total_connections: Gauge,
}

impl AdminState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stats: Arc<Store>,
        clusters: Arc<ClusterManager>,
        config: serde_json::Value,
        listeners: Vec<(String, SocketAddr)>,
        options: Options,
        node: NodeConfig,
        concurrency: usize,
        shutdown: watch::Sender<bool>,
        log: LogControl,
    ) -> Arc<Self> {
        let s = stats.root().child("server");
        let server = ServerGauges {
            uptime: s.gauge("uptime"),
            live: s.gauge("live"),
            state: s.gauge("state"),
            concurrency: s.gauge("concurrency"),
            memory_physical_size: s.gauge("memory_physical_size"),
            total_connections: s.gauge("total_connections"),
        };
        let state = AdminState {
            stats,
            clusters,
            config,
            listeners,
            options,
            node,
            concurrency,
            started: SystemTime::now(),
            shutdown,
            draining: AtomicBool::new(false),
            log,
            server,
        };
        state.refresh();
        Arc::new(state)
    }

    fn uptime(&self) -> std::time::Duration {
        self.started.elapsed().unwrap_or_default()
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Brings the computed `server.*` gauges up to date.
    fn refresh(&self) {
        let g = &self.server;
        g.uptime.set(self.uptime().as_secs() as i64);
        g.live.set(i64::from(!self.is_draining()));
        // Envoy: 0 LIVE, 1 DRAINING.
        g.state.set(i64::from(self.is_draining()));
        g.concurrency.set(self.concurrency as i64);
        g.memory_physical_size.set(resident_bytes() as i64);
        let open: i64 = self
            .stats
            .samples()
            .iter()
            .filter(|s| {
                s.name.starts_with("listener.")
                    && s.name.ends_with(".downstream_cx_active")
                    && !s.name.contains(".worker_")
            })
            .map(|s| s.value)
            .sum();
        g.total_connections.set(open);
    }

    /// Starts draining: workers stop accepting and finish open connections.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }
}

/// The process's resident set size, from /proc.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Serves the admin interface on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-cache, max-age=0")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    reply(status, "text/plain; charset=UTF-8", body)
}

fn json(value: &serde_json::Value) -> Reply {
    let body = serde_json::to_string_pretty(value).unwrap_or_default();
    reply(StatusCode::OK, "application/json", body + "\n")
}

/// The query parameters of `req`, undecoded but for `+` and `%XX`.
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const ENDPOINTS: &[(&str, &str, bool)] = &[
    ("/", "Admin home page", false),
    ("/clusters", "upstream cluster status (?format=json)", false),
    ("/config_dump", "dump current Envoy configs", false),
    ("/help", "print out list of admin commands", false),
    ("/listeners", "print listener info (?format=json)", false),
    ("/logging", "query/change logging levels (?level=)", true),
    (
        "/quitquitquit",
        "exit the server (after draining open connections)",
        true,
    ),
    (
        "/ready",
        "print server state, return 200 if LIVE, otherwise return 503",
        false,
    ),
    (
        "/server_info",
        "print server version/status information",
        false,
    ),
    (
        "/stats",
        "print server stats (?filter=REGEX, ?usedonly, ?format=json|prometheus)",
        false,
    ),
    (
        "/stats/prometheus",
        "print server stats in prometheus format",
        false,
    ),
];

fn handle(state: &AdminState, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let Some((_, _, mutating)) = ENDPOINTS.iter().find(|(p, _, _)| *p == path) else {
        let mut body = format!("invalid path. {}", help());
        body.insert(0, '\n');
        return text(StatusCode::NOT_FOUND, body.trim_start().to_string());
    };
    if *mutating && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "This endpoint requires POST; use e.g. `curl -X POST`.\n",
        );
    }
    let params = query(&req);
    let has = |k: &str| params.iter().any(|(key, _)| key == k);
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match path.as_str() {
        "/" | "/help" => text(StatusCode::OK, help()),
        "/ready" => {
            if state.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else {
                text(StatusCode::OK, "LIVE\n")
            }
        }
        "/stats" => {
            state.refresh();
            let filter = match param("filter").map(regex::Regex::new).transpose() {
                Ok(f) => f,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid regex: {e}\n")),
            };
            let samples: Vec<_> = state
                .stats
                .samples()
                .into_iter()
                .filter(|s| filter.as_ref().is_none_or(|f| f.is_match(&s.name)))
                .filter(|s| !has("usedonly") || s.used)
                .collect();
            match param("format") {
                Some("json") => json(&render::stats_json(&samples)),
                Some("prometheus") => prometheus_reply(render::prometheus(&samples)),
                None | Some("text") => text(StatusCode::OK, render::stats_text(&samples)),
                Some(other) => text(
                    StatusCode::BAD_REQUEST,
                    format!("usage: unknown format `{other}`\n"),
                ),
            }
        }
        "/stats/prometheus" => {
            state.refresh();
            let samples: Vec<_> = state
                .stats
                .samples()
                .into_iter()
                .filter(|s| !has("usedonly") || s.used)
                .collect();
            prometheus_reply(render::prometheus(&samples))
        }
        "/clusters" => match param("format") {
            Some("json") => json(&render::clusters_json(&state.clusters)),
            _ => text(StatusCode::OK, render::clusters_text(&state.clusters)),
        },
        "/listeners" => match param("format") {
            Some("json") => json(&serde_json::json!({
                "listener_statuses": state.listeners.iter().map(|(name, addr)| serde_json::json!({
                    "name": name,
                    "local_address": {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}},
                })).collect::<Vec<_>>()
            })),
            _ => text(
                StatusCode::OK,
                state
                    .listeners
                    .iter()
                    .map(|(name, addr)| format!("{name}::{addr}\n"))
                    .collect::<String>(),
            ),
        },
        "/config_dump" => json(&render::config_dump(&state.config, state.started)),
        "/server_info" => json(&render::server_info(state)),
        "/quitquitquit" => {
            tracing::info!("shutdown requested through /quitquitquit");
            state.begin_shutdown();
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => {
            if let Some(level) = param("level") {
                match logging::parse_level(level) {
                    Some(l) => {
                        state.log.set_level(l);
                    }
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "error: unknown logger level `{level}`; use trace, debug, info, warning, error, critical or off\n"
                            ),
                        );
                    }
                }
            }
            let level = state
                .log
                .level()
                .map_or_else(|| "unknown".to_string(), |l| l.to_string().to_lowercase());
            text(
                StatusCode::OK,
                format!("active loggers:\n  wasp: {level}\n"),
            )
        }
        _ => text(StatusCode::NOT_FOUND, help()),
    }
}

fn prometheus_reply(body: String) -> Reply {
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=UTF-8",
        body,
    )
}

fn help() -> String {
    let mut s = String::from("admin commands are:\n");
    for (path, what, post) in ENDPOINTS {
        let method = if *post { " (POST)" } else { "" };
        s.push_str(&format!("  {path}{method}: {what}\n"));
    }
    s
}
