//! Network (L4) filters.
//!
//! A listener's filter chain is zero or more non-terminal filters
//! ([`chain::NetworkFilter`]: connection_limit, wasm) followed by one
//! terminal filter that owns the connection: tcp_proxy, redis_proxy,
//! http_connection_manager, echo or direct_response. Each filter has three forms: validated settings (pure
//! data, all `--mode validate` needs), a factory built once on the main
//! thread (opening access logs, creating cross-worker counters), and what
//! each worker instantiates from it (cluster handles, stat shards).

pub mod chain;
pub mod connection_limit;
pub mod direct_response;
pub mod echo;
pub mod gated;
pub mod http_connection_manager;
pub mod io;
pub mod redis_proxy;
pub mod tcp_proxy;
pub mod wasm;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::access_log::{self, StreamInfo};
use crate::cluster::WorkerClusters;
use crate::config::path::join;
use crate::config::{Extension, NetworkFilterConfig, ValidationError};
use crate::stats::Scope;

use chain::{FilterChain, NetworkFilter};
use connection_limit::{
    ConnectionLimit, ConnectionLimitSettings, ConnectionLimitStats, SharedCount,
};

pub use http_connection_manager::{HcmSettings, HttpConnectionManager};
pub use redis_proxy::{RedisProxy, RedisProxySettings};
pub use tcp_proxy::{TcpProxy, TcpProxySettings};

/// A validated network filter.
#[derive(Debug, Clone)]
pub enum NetworkFilterSettings {
    TcpProxy(Arc<TcpProxySettings>),
    RedisProxy(Arc<RedisProxySettings>),
    HttpConnectionManager(Arc<HcmSettings>),
    Echo,
    DirectResponse(Bytes),
    ConnectionLimit(ConnectionLimitSettings),
    Wasm(Arc<crate::wasm::PluginSettings>),
}

impl NetworkFilterSettings {
    pub fn validate(
        config: &Extension<NetworkFilterConfig>,
        path: &str,
        clusters: &HashSet<String>,
    ) -> Result<Self, ValidationError> {
        let at = join(path, "typed_config");
        Ok(match &config.config {
            NetworkFilterConfig::TcpProxy(c) => NetworkFilterSettings::TcpProxy(Arc::new(
                TcpProxySettings::validate(c, &at, clusters)?,
            )),
            NetworkFilterConfig::RedisProxy(c) => NetworkFilterSettings::RedisProxy(Arc::new(
                RedisProxySettings::validate(c, &at, clusters)?,
            )),
            NetworkFilterConfig::HttpConnectionManager(c) => {
                NetworkFilterSettings::HttpConnectionManager(Arc::new(HcmSettings::validate(
                    c, &at, clusters,
                )?))
            }
            NetworkFilterConfig::Echo => NetworkFilterSettings::Echo,
            NetworkFilterConfig::DirectResponse(c) => {
                let bytes = match &c.response {
                    Some(source) => source
                        .load()
                        .map_err(|m| ValidationError::new(join(&at, "response"), m))?,
                    None => Vec::new(),
                };
                NetworkFilterSettings::DirectResponse(bytes.into())
            }
            NetworkFilterConfig::ConnectionLimit(c) => {
                NetworkFilterSettings::ConnectionLimit(ConnectionLimitSettings::validate(c, &at)?)
            }
            NetworkFilterConfig::Wasm(c) => NetworkFilterSettings::Wasm(
                crate::wasm::PluginSettings::validate(&c.config, &join(&at, "config"), clusters)?,
            ),
        })
    }
}

/// A network filter ready to be instantiated on each worker.
pub enum FilterFactory {
    TcpProxy {
        settings: Arc<TcpProxySettings>,
        logs: Vec<Arc<access_log::AccessLog>>,
    },
    RedisProxy(Arc<RedisProxySettings>),
    HttpConnectionManager {
        settings: Arc<HcmSettings>,
        logs: Vec<Arc<access_log::AccessLog>>,
    },
    Echo,
    DirectResponse(Bytes),
    ConnectionLimit {
        settings: ConnectionLimitSettings,
        count: Arc<SharedCount>,
    },
    Wasm(Arc<crate::wasm::PluginSettings>),
}

impl FilterFactory {
    /// Creates what the filter shares across workers (access log files,
    /// counters).
    pub fn build(settings: &NetworkFilterSettings) -> std::io::Result<Self> {
        Ok(match settings {
            NetworkFilterSettings::TcpProxy(s) => FilterFactory::TcpProxy {
                logs: access_log::open_all(&s.access_logs)?,
                settings: s.clone(),
            },
            NetworkFilterSettings::RedisProxy(s) => FilterFactory::RedisProxy(s.clone()),
            NetworkFilterSettings::HttpConnectionManager(s) => {
                FilterFactory::HttpConnectionManager {
                    logs: access_log::open_all(&s.access_logs)?,
                    settings: s.clone(),
                }
            }
            NetworkFilterSettings::Echo => FilterFactory::Echo,
            NetworkFilterSettings::DirectResponse(b) => FilterFactory::DirectResponse(b.clone()),
            NetworkFilterSettings::ConnectionLimit(s) => FilterFactory::ConnectionLimit {
                settings: s.clone(),
                count: Arc::default(),
            },
            NetworkFilterSettings::Wasm(p) => FilterFactory::Wasm(p.clone()),
        })
    }
}

/// A worker's per-connection maker of one non-terminal filter.
enum WorkerFilter {
    ConnectionLimit {
        settings: ConnectionLimitSettings,
        count: Arc<SharedCount>,
        stats: ConnectionLimitStats,
    },
    Wasm(crate::wasm::PluginHandle),
}

impl WorkerFilter {
    fn new_filter(&self, info: &StreamInfo) -> Box<dyn NetworkFilter> {
        match self {
            WorkerFilter::Wasm(plugin) => Box::new(wasm::WasmNetworkFilter::new(
                plugin.clone(),
                crate::wasm::ConnectionFacts {
                    id: info.connection_id,
                    source: info.downstream_remote,
                    destination: info.downstream_local,
                    direction: 0,
                },
            )),
            WorkerFilter::ConnectionLimit {
                settings,
                count,
                stats,
            } => Box::new(ConnectionLimit::new(settings, count.clone(), stats.clone())),
        }
    }
}

/// The filter that owns a connection once accepted.
#[derive(Clone)]
pub enum TerminalFilter {
    TcpProxy(Rc<TcpProxy>),
    RedisProxy(Rc<RedisProxy>),
    HttpConnectionManager(Rc<HttpConnectionManager>),
    Echo,
    DirectResponse(Bytes),
}

/// One listener's filter chain as a worker runs it.
pub struct WorkerChain {
    filters: Vec<WorkerFilter>,
    terminal: TerminalFilter,
}

impl WorkerChain {
    /// Instantiates `factories` (validated: non-terminal filters, then one
    /// terminal filter) for one worker.
    pub fn new(
        factories: &[FilterFactory],
        clusters: &WorkerClusters,
        stats: &Scope,
    ) -> Option<Self> {
        let (last, rest) = factories.split_last()?;
        let filters = rest
            .iter()
            .filter_map(|f| match f {
                FilterFactory::ConnectionLimit { settings, count } => {
                    Some(WorkerFilter::ConnectionLimit {
                        stats: ConnectionLimitStats::new(settings, stats),
                        settings: settings.clone(),
                        count: count.clone(),
                    })
                }
                FilterFactory::Wasm(p) => Some(WorkerFilter::Wasm(crate::wasm::plugin_on_worker(
                    p, clusters, stats,
                ))),
                _ => None,
            })
            .collect();
        let terminal = match last {
            FilterFactory::TcpProxy { settings, logs } => TerminalFilter::TcpProxy(Rc::new(
                TcpProxy::new(settings.clone(), logs.clone(), clusters, stats),
            )),
            FilterFactory::RedisProxy(settings) => TerminalFilter::RedisProxy(Rc::new(
                RedisProxy::new((**settings).clone(), clusters, stats),
            )),
            FilterFactory::HttpConnectionManager { settings, logs } => {
                TerminalFilter::HttpConnectionManager(Rc::new(HttpConnectionManager::new(
                    settings.clone(),
                    logs.clone(),
                    clusters,
                    stats,
                )))
            }
            FilterFactory::Echo => TerminalFilter::Echo,
            FilterFactory::DirectResponse(b) => TerminalFilter::DirectResponse(b.clone()),
            FilterFactory::ConnectionLimit { .. } | FilterFactory::Wasm(_) => return None,
        };
        Some(WorkerChain { filters, terminal })
    }

    /// Serves an accepted connection until it closes.
    pub async fn serve(
        &self,
        stream: TcpStream,
        info: StreamInfo,
        buffer_limit: usize,
        draining: tokio::sync::watch::Receiver<bool>,
    ) {
        let chain = if self.filters.is_empty() {
            None
        } else {
            let mut chain =
                FilterChain::new(self.filters.iter().map(|f| f.new_filter(&info)).collect());
            if !chain.on_new_connection() {
                if let Some(delay) = chain.close_delay() {
                    tokio::time::sleep(delay).await;
                }
                return;
            }
            Some(RefCell::new(chain))
        };
        let downstream = Downstream {
            stream,
            buffer_limit,
            draining,
            chain,
            read_eof: Cell::new(false),
            scratch: Cell::default(),
        };
        if let (TerminalFilter::HttpConnectionManager(h), Some(_)) =
            (&self.terminal, &downstream.chain)
        {
            // Boxed: rare, and inline it would widen every connection's task.
            return Box::pin(serve_http_behind_filters(h.clone(), downstream, info)).await;
        }
        match &self.terminal {
            TerminalFilter::TcpProxy(p) => p.serve(downstream, info).await,
            TerminalFilter::RedisProxy(p) => p.serve(downstream).await,
            TerminalFilter::HttpConnectionManager(h) => h.clone().serve(downstream, info).await,
            TerminalFilter::Echo => echo::serve(downstream).await,
            TerminalFilter::DirectResponse(b) => direct_response::serve(downstream, b).await,
        }
    }
}

/// Serves HTTP on a connection whose bytes pass network filters first.
///
/// The connection manager's codecs read and write their socket directly
/// (the HTTP/1.1 one polls its readiness and lends buffers around it), so
/// instead of teaching them the filter chain, the manager gets one end of
/// a Unix socket pair and the filtered connection is pumped through the
/// other: two more copies and syscalls per read, paid only by listeners
/// that put filters in front of HTTP. The pair's ends are typed as
/// `TcpStream`, which only reads, writes, polls and shuts down on them.
async fn serve_http_behind_filters(
    hcm: Rc<HttpConnectionManager>,
    outer: Downstream,
    info: StreamInfo,
) {
    let pair = std::os::unix::net::UnixStream::pair().and_then(|(a, b)| {
        let tcp = |s: std::os::unix::net::UnixStream| {
            s.set_nonblocking(true)?;
            TcpStream::from_std(std::net::TcpStream::from(std::os::fd::OwnedFd::from(s)))
        };
        Ok((tcp(a)?, tcp(b)?))
    });
    let (inner, bridge) = match pair {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "no socket pair for a filtered HTTP connection");
            return;
        }
    };
    let served = Downstream {
        stream: inner,
        buffer_limit: outer.buffer_limit,
        draining: outer.draining.clone(),
        chain: None,
        read_eof: Cell::new(false),
        scratch: Cell::default(),
    };
    let limit = outer.buffer_limit;
    let (activity, copied_in, copied_out) = (
        Cell::new(tokio::time::Instant::now()),
        Cell::new(0),
        Cell::new(0),
    );
    let mut http = std::pin::pin!(hcm.serve(served, info));
    let mut inbound = std::pin::pin!(io::pump(&outer, &bridge, limit, &activity, &copied_in, &[]));
    let mut outbound = std::pin::pin!(io::pump(
        &bridge,
        &outer,
        limit,
        &activity,
        &copied_out,
        &[]
    ));
    let (mut http_done, mut inbound_done) = (false, false);
    loop {
        tokio::select! {
            () = &mut http, if !http_done => http_done = true,
            r = &mut inbound, if !inbound_done => match r {
                Ok(()) => inbound_done = true,
                // A filter closed the connection, or the client reset it.
                Err(_) => return,
            },
            // The manager closed its end and all it wrote went out (or
            // writing to the client failed).
            _ = &mut outbound => return,
        }
    }
}

/// An accepted downstream connection as the terminal filter sees it: reads
/// and writes pass through the connection's non-terminal filters, if any.
pub struct Downstream {
    pub stream: TcpStream,
    /// The listener's per_connection_buffer_limit_bytes.
    pub buffer_limit: usize,
    /// Becomes true when the server starts draining: protocols that can end
    /// a connection politely (HTTP) do so.
    pub draining: tokio::sync::watch::Receiver<bool>,
    chain: Option<RefCell<FilterChain>>,
    read_eof: Cell<bool>,
    /// Room for a filtered `read_buf`'s raw read, made on the first one:
    /// an array in the future would widen every connection's task (the
    /// chain's `serve` future is as large as its largest terminal's).
    scratch: Cell<Vec<u8>>,
}

fn closed_by_filter() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed by a network filter",
    )
}

impl io::Source for Downstream {
    async fn readable(&self) -> std::io::Result<()> {
        match &self.chain {
            Some(c) if c.borrow().has_read() => Ok(()),
            _ => self.stream.readable().await,
        }
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(chain) = &self.chain else {
            return io::Source::read(&self.stream, buf).await;
        };
        loop {
            {
                let mut c = chain.borrow_mut();
                let n = c.take_read(buf);
                if n > 0 {
                    return Ok(n);
                }
                if c.is_closed() {
                    return Err(closed_by_filter());
                }
                if self.read_eof.get() {
                    return Ok(0);
                }
            }
            // `buf` doubles as the scratch space for the raw read.
            let n = io::Source::read(&self.stream, buf).await?;
            self.read_eof.set(n == 0);
            chain.borrow_mut().on_data(&buf[..n], n == 0);
        }
    }

    async fn read_buf(&self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match &self.chain {
            None => io::Source::read_buf(&self.stream, buf).await,
            // Filtered reads go through the chain's buffers anyway.
            Some(_) => self.read_filtered_buf(buf).await,
        }
    }
}

impl Downstream {
    async fn read_filtered_buf(&self, buf: &mut BytesMut) -> std::io::Result<usize> {
        let mut chunk = self.scratch.take();
        if chunk.is_empty() {
            chunk = vec![0; 16 * 1024];
        }
        let read = io::Source::read(self, &mut chunk).await;
        if let Ok(n) = read {
            buf.extend_from_slice(&chunk[..n]);
        }
        self.scratch.set(chunk);
        read
    }
}

impl io::Sink for Downstream {
    async fn write_all(&self, data: &[u8]) -> std::io::Result<()> {
        let Some(chain) = &self.chain else {
            return io::Sink::write_all(&self.stream, data).await;
        };
        let out = chain.borrow_mut().on_write(data, false);
        if chain.borrow().is_closed() {
            return Err(closed_by_filter());
        }
        match out {
            Some(bytes) => io::Sink::write_all(&self.stream, &bytes).await,
            None => Ok(()),
        }
    }

    async fn close_write(&self) {
        if let Some(chain) = &self.chain {
            // Ending a connection the client has not ended is a local close.
            if !self.read_eof.get() {
                chain.borrow_mut().closing_locally();
            }
            let out = chain.borrow_mut().on_write(&[], true);
            if let Some(bytes) = out.filter(|b| !b.is_empty()) {
                let _ = io::Sink::write_all(&self.stream, &bytes).await;
            }
        }
        io::Sink::close_write(&self.stream).await;
    }
}
