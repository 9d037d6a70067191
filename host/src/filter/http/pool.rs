//! One worker's upstream HTTP connections, per endpoint: a stack of idle
//! HTTP/1.1 keep-alive connections ([`h1::EndpointPool`]), or one multiplexed
//! HTTP/2 connection.
//!
//! Everything here lives on the worker (`Rc`, `RefCell`, `spawn_local`):
//! taking a connection is a `Vec::pop`, with no lock and no task. An
//! HTTP/1.1 connection is driven by the request using it and goes back on
//! the stack as soon as its response is complete (see [`h1`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, Version};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{Body, BoxError};
use super::codec::CountedIo;
use super::h1::client as h1;
use crate::cluster::{Breaker, ConnectError, Endpoint, Held, Priority, WorkerCluster};

/// Why a request got no response.
pub enum SendError {
    Connect(ConnectError),
    /// The connection failed or was reset before the response head.
    Upstream(BoxError),
    /// A circuit breaker refused it (counted where it did).
    Overflow,
}

/// Looked up once per request: hashed with foldhash, not SipHash.
type ByEndpoint<T> = HashMap<SocketAddr, T, foldhash::fast::RandomState>;

/// A worker's connections to every endpoint of one cluster.
pub struct Pools {
    cluster: Rc<WorkerCluster>,
    h1: RefCell<ByEndpoint<Rc<h1::EndpointPool>>>,
    h2: RefCell<ByEndpoint<Vec<H2Conn>>>,
}

/// An endpoint's HTTP/2 connection: how requests go on it, how many it has
/// carried, and its streams in flight.
struct H2Conn {
    sender: http2::SendRequest<Body>,
    carried: u32,
    streams: Rc<H2Streams>,
}

/// Keeps Envoy's connection stats for one upstream connection while it is
/// open.
pub struct Opened {
    cluster: Rc<WorkerCluster>,
    endpoint: Arc<Endpoint>,
    at: Instant,
    _slot: Slot,
}

/// A request to an endpoint from when it is sent until its response is
/// complete (or it fails): its unit of the cluster's `max_requests`, and
/// its place in the cluster's and the endpoint's requests in flight
/// (`upstream_rq_active`, which a least-request balancer reads). A
/// response's time (`upstream_rq_time`) runs to its end, as in Envoy.
pub struct InFlight {
    /// Also names the cluster whose counts these are.
    held: Held,
    endpoint: Arc<Endpoint>,
    began: Instant,
    answered: bool,
}

impl InFlight {
    /// Counts a request to `endpoint` in flight from `began`.
    pub fn new(held: Held, endpoint: &Arc<Endpoint>, began: Instant) -> Self {
        held.cluster().stats.upstream_rq_active.inc();
        endpoint.stats.rq_active.fetch_add(1, Ordering::Relaxed);
        InFlight {
            held,
            endpoint: endpoint.clone(),
            began,
            answered: false,
        }
    }

    fn priority(&self) -> Priority {
        self.held.priority()
    }

    /// Marks the response head as come: its time is recorded at the end.
    fn answered(mut self) -> Self {
        self.answered = true;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let cluster = self.held.cluster();
        cluster.stats.upstream_rq_active.dec();
        self.endpoint
            .stats
            .rq_active
            .fetch_sub(1, Ordering::Relaxed);
        if self.answered {
            cluster.record_rq_time(self.began.elapsed());
        }
    }
}

/// A connection's units of the cluster's and of its endpoint's
/// `max_connections`, taken before it opens and given back when it closes.
struct Slot {
    _cluster: Held,
    endpoint: Arc<Endpoint>,
}

impl Slot {
    fn new(cluster: Held, endpoint: &Arc<Endpoint>) -> Self {
        endpoint.connections.fetch_add(1, Ordering::Relaxed);
        Slot {
            _cluster: cluster,
            endpoint: endpoint.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Opened {
    fn new(
        cluster: &Rc<WorkerCluster>,
        endpoint: &Arc<Endpoint>,
        slot: Slot,
        version: Version,
    ) -> Self {
        match version {
            Version::HTTP_2 => cluster.stats.upstream_cx_http2_total.inc(),
            _ => cluster.stats.upstream_cx_http1_total.inc(),
        }
        cluster.stats.upstream_cx_active.inc();
        endpoint.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        Opened {
            cluster: cluster.clone(),
            endpoint: endpoint.clone(),
            at: Instant::now(),
            _slot: slot,
        }
    }

    /// Counts the connection as closed for having carried
    /// max_requests_per_connection requests.
    pub fn retired(&self) {
        self.cluster.stats.upstream_cx_max_requests.inc();
    }

    /// Counts the connection as closed for idling `idle_timeout`.
    pub fn idled(&self) {
        self.cluster.stats.upstream_cx_idle_timeout.inc();
    }

    /// Counts bytes read from the upstream.
    pub fn received(&self, bytes: usize) {
        self.cluster
            .stats
            .upstream_cx_rx_bytes_total
            .add(bytes as u64);
    }

    /// Counts bytes written to the upstream.
    pub fn sent(&self, bytes: usize) {
        self.cluster
            .stats
            .upstream_cx_tx_bytes_total
            .add(bytes as u64);
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let stats = &self.cluster.stats;
        stats.upstream_cx_active.dec();
        stats.upstream_cx_destroy.inc();
        stats
            .upstream_cx_length_ms
            .record(self.at.elapsed().as_millis() as u64);
        self.endpoint
            .stats
            .cx_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pools {
    pub fn new(cluster: Rc<WorkerCluster>) -> Self {
        Pools {
            cluster,
            h1: RefCell::default(),
            h2: RefCell::default(),
        }
    }

    /// Sends `req` to `endpoint` over a pooled connection or a new one.
    /// On HTTP/1.1 the URI is sent as it is (origin form, with the Host
    /// header); on HTTP/2 it must carry scheme and authority. `request` is
    /// kept in flight until the response is complete.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        req: &mut Request<Body>,
        request: InFlight,
    ) -> Result<Response<Body>, SendError> {
        // The router set the version the cluster's settings call for.
        if req.version() == Version::HTTP_2 {
            return self.send_h2(endpoint, req, request).await;
        }
        let pool = self
            .h1
            .borrow_mut()
            .entry(endpoint.address)
            .or_insert_with(|| {
                Rc::new(h1::EndpointPool::new(
                    &self.cluster.cluster.settings.upstream_http,
                ))
            })
            .clone();
        let mut upload = h1::Upload::new(req);
        // A request not served by an idle connection is pending until it
        // has one, as in Envoy: within `max_pending_requests`.
        let priority = request.priority();
        let mut pending = None;
        loop {
            let (conn, reused) = match pool.checkout() {
                Some(conn) => (conn, true),
                None => {
                    if pending.is_none() {
                        pending = Some(
                            self.cluster
                                .try_hold(Breaker::PendingRequests, priority)
                                .ok_or(SendError::Overflow)?,
                        );
                    }
                    let Some(slot) = self.connection_slot(endpoint, &pool, priority) else {
                        pool.wait_freed().await;
                        continue;
                    };
                    // Boxed: a connect's future is large and would
                    // otherwise be part of every request's.
                    let io = Box::pin(self.connect(endpoint)).await?;
                    let opened = Opened::new(&self.cluster, endpoint, slot, Version::HTTP_11);
                    (h1::Conn::new(io, opened, &pool), false)
                }
            };
            pending = None;
            match h1::exchange(conn, upload, &pool).await {
                Ok(mut resp) => {
                    let request = request.answered();
                    if let Body::Upstream(b) = resp.body_mut() {
                        b.hold(request);
                    }
                    return Ok(resp);
                }
                // A kept-alive connection the upstream closed as the
                // request went out: try the next one, as Envoy does.
                Err(h1::Failed {
                    retry: Some(again), ..
                }) if reused => upload = again,
                Err(failed) => return Err(SendError::Upstream(failed.error.into())),
            }
        }
    }

    /// Units of the cluster's and the endpoint's `max_connections` for a
    /// new connection of `pool` to `endpoint`; `None` if either breaker is
    /// open and the pool has connections to wait for. A pool with none
    /// opens one regardless, as Envoy's do, so that no request waits on
    /// connections that do not exist.
    fn connection_slot(
        &self,
        endpoint: &Arc<Endpoint>,
        pool: &h1::EndpointPool,
        priority: Priority,
    ) -> Option<Slot> {
        let held = self.try_connection(endpoint, priority).or_else(|| {
            (pool.open() == 0).then(|| self.cluster.hold(Breaker::Connections, priority))
        })?;
        Some(Slot::new(held, endpoint))
    }

    /// A unit of the cluster's `max_connections` for one more connection
    /// to `endpoint`, unless that or the endpoint's own limit
    /// (`per_host_thresholds`) is reached: an overflow, counted.
    fn try_connection(&self, endpoint: &Endpoint, priority: Priority) -> Option<Held> {
        let limits = &self.cluster.cluster.settings.circuit_breakers[priority.index()];
        let host_full = limits
            .max_host_connections
            .is_some_and(|max| endpoint.connections.load(Ordering::Relaxed) >= max);
        if host_full {
            self.cluster.stats.upstream_cx_overflow.inc();
            return None;
        }
        self.cluster.try_hold(Breaker::Connections, priority)
    }

    async fn send_h2(
        &self,
        endpoint: &Arc<Endpoint>,
        req: &mut Request<Body>,
        request: InFlight,
    ) -> Result<Response<Body>, SendError> {
        let (mut sender, streams) = match self.h2_with_room(endpoint, request.priority()) {
            Ok(conn) => conn,
            Err(slot) => {
                let (sender, streams) = Box::pin(self.connect_h2(endpoint, slot)).await?;
                if self.cluster.cluster.settings.upstream_http.spent(1) {
                    self.cluster.stats.upstream_cx_max_requests.inc();
                } else {
                    let conn = H2Conn {
                        sender: sender.clone(),
                        carried: 1,
                        streams: streams.clone(),
                    };
                    let mut h2 = self.h2.borrow_mut();
                    h2.entry(endpoint.address).or_default().push(conn);
                }
                (sender, streams)
            }
        };
        let mut stream = H2Stream::new(request, streams);
        let req = std::mem::replace(req, Request::new(Body::empty()));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        stream.request.answered = true;
        Ok(resp.map(|b| Body::UpstreamH2(b, stream)))
    }

    /// An open HTTP/2 connection to `endpoint` for one more stream: the
    /// first with room under both wasp's `max_concurrent_streams` and the
    /// upstream's, as Envoy picks. When all are full, the units of
    /// `max_connections` to open another; when a breaker allows none, the
    /// least busy (hyper holds the stream until the upstream takes it).
    /// The first connection is opened regardless, as a pool's first
    /// always is.
    fn h2_with_room(
        &self,
        endpoint: &Arc<Endpoint>,
        priority: Priority,
    ) -> Result<(http2::SendRequest<Body>, Rc<H2Streams>), Slot> {
        let settings = &self.cluster.cluster.settings.upstream_http;
        let own_max = settings
            .http2
            .max_concurrent_streams
            .map_or(usize::MAX, |m| m as usize);
        let mut h2 = self.h2.borrow_mut();
        let conns = h2.entry(endpoint.address).or_default();
        conns.retain(|c| !c.sender.is_closed());
        let room =
            |c: &H2Conn| (c.streams.active.get() as usize) < own_max.min(c.streams.peer_max.get());
        let at = match conns.iter().position(room) {
            Some(at) => at,
            None => match self.try_connection(endpoint, priority) {
                Some(held) => return Err(Slot::new(held, endpoint)),
                None if conns.is_empty() => {
                    let held = self.cluster.hold(Breaker::Connections, priority);
                    return Err(Slot::new(held, endpoint));
                }
                None => (0..conns.len())
                    .min_by_key(|&at| conns[at].streams.active.get())
                    .unwrap_or(0),
            },
        };
        let c = &mut conns[at];
        c.carried += 1;
        let taken = (c.sender.clone(), c.streams.clone());
        // A connection that has carried max_requests_per_connection streams
        // takes no new ones: it leaves the pool (and closes once its
        // streams are done), and the next request opens another.
        if settings.spent(c.carried) {
            conns.remove(at);
            self.cluster.stats.upstream_cx_max_requests.inc();
        }
        Ok(taken)
    }

    async fn connect_h2(
        &self,
        endpoint: &Arc<Endpoint>,
        slot: Slot,
    ) -> Result<(http2::SendRequest<Body>, Rc<H2Streams>), SendError> {
        let stats = &self.cluster.stats;
        let io = TokioIo::new(CountedIo::new(
            Bytes::new(),
            self.connect(endpoint).await?,
            stats.upstream_cx_rx_bytes_total.clone(),
            stats.upstream_cx_tx_bytes_total.clone(),
        ));
        let mut builder = http2::Builder::new(LocalExec);
        builder.timer(TokioTimer::new());
        self.cluster
            .cluster
            .settings
            .upstream_http
            .http2
            .client(&mut builder);
        let (sender, conn) = builder
            .handshake(io)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        let opened = Opened::new(&self.cluster, endpoint, slot, Version::HTTP_2);
        let address = endpoint.address;
        let streams = Rc::new(H2Streams {
            active: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            peer_max: Cell::new(conn.current_max_send_streams()),
        });
        let watched = streams.clone();
        let idle_timeout = self.cluster.cluster.settings.upstream_http.idle_timeout;
        tokio::task::spawn_local(async move {
            let mut conn = std::pin::pin!(conn);
            loop {
                // While streams are open it cannot idle out sooner than a
                // whole timeout from now: look again then.
                let since = match watched.active.get() {
                    0 => watched.idle_since.get(),
                    _ => Instant::now(),
                };
                let idle = async {
                    match since.checked_add(idle_timeout) {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                // The upstream's stream limit, as its SETTINGS give it.
                let polled = std::future::poll_fn(|cx| {
                    let ended = conn.as_mut().poll(cx);
                    watched.peer_max.set(conn.current_max_send_streams());
                    ended
                });
                tokio::select! {
                    ended = polled => {
                        if let Err(e) = ended {
                            tracing::debug!(endpoint = %address, error = %e, "upstream connection ended");
                        }
                        break;
                    }
                    () = idle => if watched.active.get() == 0
                        && watched.idle_since.get().elapsed() >= idle_timeout
                    {
                        // Dropping the connection closes it; the pool finds
                        // its sender closed and opens another when needed.
                        opened.idled();
                        break;
                    },
                }
            }
            drop(opened);
        });
        Ok((sender, streams))
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, SendError> {
        self.cluster
            .connect_to(endpoint)
            .await
            .map_err(SendError::Connect)
    }
}

/// One HTTP/2 connection's streams in flight, and since when it has had
/// none (an idle connection is one with no streams).
pub struct H2Streams {
    active: Cell<u32>,
    idle_since: Cell<Instant>,
    /// How many streams the upstream allows at once.
    peer_max: Cell<usize>,
}

/// What a request's HTTP/2 stream holds until its response body is done:
/// the request in flight, and its place among its connection's streams.
pub struct H2Stream {
    request: InFlight,
    streams: Rc<H2Streams>,
}

impl H2Stream {
    fn new(request: InFlight, streams: Rc<H2Streams>) -> Self {
        streams.active.set(streams.active.get() + 1);
        H2Stream { request, streams }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let active = self.streams.active.get() - 1;
        self.streams.active.set(active);
        if active == 0 {
            self.streams.idle_since.set(Instant::now());
        }
    }
}

/// Runs hyper's HTTP/2 stream tasks on the worker's `LocalSet`.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}
