//! Listeners: validated settings, binding (one socket per worker with
//! SO_REUSEPORT, so the kernel spreads connections and each connection stays
//! on the worker that accepted it) and the accept loop.

use std::cell::Cell;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::access_log::StreamInfo;
use crate::config::path::{index, join};
use crate::config::{ListenerConfig, ValidationError};
use crate::filter::network::{FilterFactory, NetworkFilterSettings, WorkerChain};
use crate::stats::{Counter, Gauge, Histogram, Scope};

const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

/// A validated listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub name: String,
    pub address: SocketAddr,
    /// The `<x>` of `listener.<x>.*` stats: the address with `:` → `_`, or
    /// the configured stat_prefix.
    pub stat_name: String,
    pub buffer_limit: u32,
    pub filters: Vec<NetworkFilterSettings>,
}

impl ListenerSettings {
    pub fn validate(
        c: &ListenerConfig,
        path: &str,
        clusters: &HashSet<String>,
    ) -> Result<Self, ValidationError> {
        let addr_path = join(path, "address");
        let Some(sa) = &c.address.socket_address else {
            return Err(ValidationError::new(
                addr_path,
                "only socket_address listeners are supported",
            ));
        };
        let sa_path = join(&addr_path, "socket_address");
        if sa.protocol == Some(crate::config::Protocol::Udp) {
            return Err(ValidationError::new(
                join(&sa_path, "protocol"),
                "UDP listeners are not supported",
            ));
        }
        let ip: IpAddr = sa.address.parse().map_err(|_| {
            ValidationError::new(
                join(&sa_path, "address"),
                format!(
                    "`{}` is not an IP address (listeners bind to IPs)",
                    sa.address
                ),
            )
        })?;
        let address = SocketAddr::new(ip, sa.port_value);
        if c.enable_reuse_port == Some(false) {
            return Err(ValidationError::new(
                join(path, "enable_reuse_port"),
                "wasp binds every listener once per worker with SO_REUSEPORT; it cannot be disabled",
            ));
        }
        let chains_path = join(path, "filter_chains");
        let chain = match c.filter_chains.as_slice() {
            [one] => one,
            [] => {
                return Err(ValidationError::new(
                    chains_path,
                    "a listener needs a filter chain",
                ));
            }
            _ => {
                return Err(ValidationError::new(
                    index(&chains_path, 1),
                    "only one filter chain per listener is supported (filter_chain_match is not)",
                ));
            }
        };
        let filters_path = join(&index(&chains_path, 0), "filters");
        if chain.filters.is_empty() {
            return Err(ValidationError::new(
                filters_path,
                "a filter chain needs at least one filter",
            ));
        }
        let mut filters = Vec::new();
        for (i, f) in chain.filters.iter().enumerate() {
            let at = index(&filters_path, i);
            let last = i + 1 == chain.filters.len();
            if f.config.is_terminal() != last {
                let message = if last {
                    format!(
                        "the last filter must be a terminal filter; `{}` is not",
                        f.name
                    )
                } else {
                    format!(
                        "`{}` is a terminal filter and must be last in the chain",
                        f.name
                    )
                };
                return Err(ValidationError::new(join(&at, "name"), message));
            }
            filters.push(NetworkFilterSettings::validate(f, &at, clusters)?);
        }
        Ok(ListenerSettings {
            name: c.name.clone().unwrap_or_else(|| address.to_string()),
            address,
            stat_name: c
                .stat_prefix
                .clone()
                .unwrap_or_else(|| address.to_string().replace(':', "_")),
            buffer_limit: c
                .per_connection_buffer_limit_bytes
                .unwrap_or(DEFAULT_BUFFER_LIMIT),
            filters,
        })
    }
}

/// Fails if anything already listens on `addr`. SO_REUSEPORT would let a
/// second wasp (or anything else setting it) share the port silently and
/// split the traffic; a plain bind first makes "address in use" an error.
pub fn ensure_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(addr).map(drop)
}

/// Binds `addr` with SO_REUSEPORT (and SO_REUSEADDR), non-blocking.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A listener ready for the workers: settings plus built filter factories.
pub struct ListenerFactory {
    pub settings: ListenerSettings,
    pub filters: Vec<FilterFactory>,
}

/// Counts of a worker's open connections, for draining.
#[derive(Default)]
pub struct ActiveConnections {
    count: Cell<usize>,
    idle: tokio::sync::Notify,
}

impl ActiveConnections {
    pub fn get(&self) -> usize {
        self.count.get()
    }

    /// Resolves when no connection is open.
    pub async fn wait_idle(&self) {
        while self.count.get() > 0 {
            self.idle.notified().await;
        }
    }
}

struct ConnectionGuard {
    active: Rc<ActiveConnections>,
    stats: Rc<ListenerStats>,
    accepted: tokio::time::Instant,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let n = self.active.count.get() - 1;
        self.active.count.set(n);
        if n == 0 {
            self.active.idle.notify_waiters();
        }
        self.stats.downstream_cx_active.dec();
        self.stats.worker_cx_active.dec();
        self.stats.downstream_cx_destroy.inc();
        self.stats
            .downstream_cx_length_ms
            .record(self.accepted.elapsed().as_millis() as u64);
    }
}

/// Envoy's `listener.<addr>.*` stats, including the per-worker ones.
struct ListenerStats {
    downstream_cx_total: Counter,
    downstream_cx_active: Gauge,
    downstream_cx_destroy: Counter,
    downstream_cx_length_ms: Histogram,
    worker_cx_total: Counter,
    worker_cx_active: Gauge,
}

/// One worker's view of one listener.
pub struct WorkerListener {
    pub listener: tokio::net::TcpListener,
    pub chain: Rc<WorkerChain>,
    pub buffer_limit: usize,
    stats: Rc<ListenerStats>,
}

impl WorkerListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        settings: &ListenerSettings,
        chain: WorkerChain,
        worker: usize,
        stats: &Scope,
    ) -> Self {
        let scope = stats.tagged("listener", "envoy_listener_address", &settings.stat_name);
        let worker_scope = scope.tagged_as(
            &format!("worker_{worker}"),
            "worker",
            "envoy_worker_id",
            &worker.to_string(),
        );
        WorkerListener {
            listener,
            chain: Rc::new(chain),
            buffer_limit: settings.buffer_limit as usize,
            stats: Rc::new(ListenerStats {
                downstream_cx_total: scope.counter("downstream_cx_total"),
                downstream_cx_active: scope.gauge("downstream_cx_active"),
                downstream_cx_destroy: scope.counter("downstream_cx_destroy"),
                downstream_cx_length_ms: scope.histogram("downstream_cx_length_ms"),
                worker_cx_total: worker_scope.counter("downstream_cx_total"),
                worker_cx_active: worker_scope.gauge("downstream_cx_active"),
            }),
        }
    }

    /// Accepts until `shutdown` fires, serving each connection on this
    /// worker's event loop.
    pub async fn run(
        self,
        active: Rc<ActiveConnections>,
        ids: Rc<ConnectionIds>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(5);
                    a
                }
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().unwrap_or(peer);
            self.stats.downstream_cx_total.inc();
            self.stats.worker_cx_total.inc();
            self.stats.downstream_cx_active.inc();
            self.stats.worker_cx_active.inc();
            active.count.set(active.count.get() + 1);
            let guard = ConnectionGuard {
                active: active.clone(),
                stats: self.stats.clone(),
                accepted: tokio::time::Instant::now(),
            };
            let info = StreamInfo::new(ids.next(), peer, local);
            let (chain, buffer_limit) = (self.chain.clone(), self.buffer_limit);
            let draining = shutdown.clone();
            tokio::task::spawn_local(async move {
                chain.serve(stream, info, buffer_limit, draining).await;
                drop(guard);
            });
        }
    }
}

/// Connection ids unique in the process without a shared counter: worker
/// `i` of `n` hands out `i, i + n, i + 2n, ...`.
pub struct ConnectionIds {
    next: Cell<u64>,
    step: u64,
}

impl ConnectionIds {
    pub fn new(worker: usize, workers: usize) -> Self {
        ConnectionIds {
            next: Cell::new(worker as u64),
            step: workers as u64,
        }
    }

    fn next(&self) -> u64 {
        let id = self.next.get();
        self.next.set(id + self.step);
        id
    }
}
