//! One worker's upstream HTTP connections, per endpoint and routing
//! priority: a stack of idle HTTP/1.1 keep-alive connections
//! ([`h1::EndpointPool`]), or multiplexed HTTP/2 connections, as few as
//! the stream limits allow.
//!
//! Everything here lives on the worker (`Rc`, `RefCell`, `spawn_local`):
//! taking a connection is a `Vec::pop`, with no lock and no task. An
//! HTTP/1.1 connection is driven by the request using it and goes back on
//! the stack as soon as its response is complete (see [`h1`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::HeaderValue;
use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, Version};
use hyper::client::conn::{http1, http2};
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

impl SendError {
    /// The same error for another request that met it: the requests that
    /// waited for one HTTP/2 connection to open each get its failure.
    fn again(&self) -> SendError {
        match self {
            SendError::Connect(ConnectError::Failed(at, e)) => SendError::Connect(
                ConnectError::Failed(*at, std::io::Error::new(e.kind(), e.to_string())),
            ),
            SendError::Connect(ConnectError::Timeout(at)) => {
                SendError::Connect(ConnectError::Timeout(*at))
            }
            SendError::Connect(ConnectError::NoHealthyUpstream) => {
                SendError::Connect(ConnectError::NoHealthyUpstream)
            }
            SendError::Upstream(e) => SendError::Upstream(e.to_string().into()),
            SendError::Overflow => SendError::Overflow,
        }
    }
}

/// Connections by endpoint and routing priority: as in Envoy, a route of
/// high priority has connections of its own, so that it never waits
/// behind the default priority's requests for one. Looked up once per
/// request: hashed with foldhash, not SipHash.
type ByEndpoint<T> = HashMap<(SocketAddr, Priority), T, foldhash::fast::RandomState>;

/// A worker's connections to every endpoint of one cluster.
pub struct Pools {
    cluster: Rc<WorkerCluster>,
    h1: RefCell<ByEndpoint<Rc<h1::EndpointPool>>>,
    h2: RefCell<ByEndpoint<Vec<H2Conn>>>,
}

/// An endpoint's HTTP/2 connection, open or being opened: how many
/// streams it has carried, and what its streams share.
struct H2Conn {
    carried: u32,
    shared: Rc<H2Shared>,
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
        let upgrade = match req.extensions().get() {
            Some(super::h1::Upgrade(upgrade)) => Some(Some(upgrade.clone())),
            None if req.method() == http::Method::CONNECT => Some(None),
            None => None,
        };
        if let Some(upgrade) = upgrade {
            // Rare: behind a dynamic call, so that none of it is inlined
            // into (and widens) every request's path.
            let upgrade: Pin<Box<dyn Future<Output = _> + '_>> =
                Box::pin(self.send_upgrade(endpoint, req, request, upgrade));
            return upgrade.await;
        }
        // The router set the version the cluster's settings call for.
        if req.version() == Version::HTTP_2 {
            return self.send_h2(endpoint, req, request).await;
        }
        let priority = request.priority();
        let pool = self
            .h1
            .borrow_mut()
            .entry((endpoint.address, priority))
            .or_insert_with(|| {
                Rc::new(h1::EndpointPool::new(
                    &self.cluster.cluster.settings.upstream_http,
                ))
            })
            .clone();
        let mut upload = h1::Upload::new(req);
        // A request not served by an idle connection is pending until it
        // has one, as in Envoy: within `max_pending_requests`.
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
        let priority = request.priority();
        let mut stream = H2Stream::new(request, self.h2_with_room(endpoint, priority));
        let mut sender = match stream.shared.outcome() {
            Some(outcome) => outcome?,
            // A request waiting for its connection to open is pending, as
            // in Envoy: within `max_pending_requests`.
            None => {
                let _pending = self
                    .cluster
                    .try_hold(Breaker::PendingRequests, priority)
                    .ok_or(SendError::Overflow)?;
                stream.shared.sender().await?
            }
        };
        let req = std::mem::replace(req, Request::new(Body::empty()));
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        stream.request.answered = true;
        Ok(resp.map(|b| Body::UpstreamH2(b, stream)))
    }

    /// An HTTP/2 connection to `endpoint` for one more stream, open or
    /// being opened: the first with room under both wasp's
    /// `max_concurrent_streams` and the upstream's (unknown until it
    /// opens), as Envoy picks; so a burst of requests to an endpoint shares
    /// the connection the first of them opens. When all are full, a new
    /// one if `max_connections` allows it, else the least busy (hyper holds
    /// the stream until the upstream takes it). The first connection is
    /// opened regardless, as a pool's first always is.
    fn h2_with_room(&self, endpoint: &Arc<Endpoint>, priority: Priority) -> Rc<H2Shared> {
        let settings = &self.cluster.cluster.settings.upstream_http;
        let own_max = settings
            .http2
            .max_concurrent_streams
            .map_or(usize::MAX, |m| m as usize);
        let mut h2 = self.h2.borrow_mut();
        let conns = h2.entry((endpoint.address, priority)).or_default();
        conns.retain(|c| c.shared.usable());
        let room =
            |c: &H2Conn| (c.shared.active.get() as usize) < own_max.min(c.shared.peer_max.get());
        let at = match conns.iter().position(room) {
            Some(at) => at,
            None => {
                let held = match self.try_connection(endpoint, priority) {
                    Some(held) => Some(held),
                    None if conns.is_empty() => {
                        Some(self.cluster.hold(Breaker::Connections, priority))
                    }
                    None => None,
                };
                match held {
                    Some(held) => {
                        let shared = H2Shared::opening();
                        tokio::task::spawn_local(open_h2(
                            self.cluster.clone(),
                            endpoint.clone(),
                            Slot::new(held, endpoint),
                            shared.clone(),
                        ));
                        conns.push(H2Conn { carried: 0, shared });
                        conns.len() - 1
                    }
                    None => (0..conns.len())
                        .min_by_key(|&at| conns[at].shared.active.get())
                        .unwrap_or(0),
                }
            }
        };
        let c = &mut conns[at];
        c.carried += 1;
        let taken = c.shared.clone();
        // A connection that has carried max_requests_per_connection streams
        // takes no new ones: it leaves the pool (and closes once its
        // streams are done), and the next request opens another.
        if settings.spent(c.carried) {
            conns.remove(at);
            self.cluster.stats.upstream_cx_max_requests.inc();
        }
        taken
    }

    /// Sends a request that asks to switch protocols (WebSocket, ...), or
    /// a CONNECT (`upgrade` `None`), on a new HTTP/1.1 connection of its
    /// own, whatever the cluster's protocol: hyper's client makes the
    /// exchange and, if the upstream switches (101) or takes the CONNECT
    /// (2xx), hands the connection over for the downstream side to tunnel
    /// to (see `h1::server`). Its stats, and the request's place in
    /// flight, last as long as the tunnel.
    async fn send_upgrade(
        &self,
        endpoint: &Arc<Endpoint>,
        req: &mut Request<Body>,
        request: InFlight,
        upgrade: Option<HeaderValue>,
    ) -> Result<Response<Body>, SendError> {
        let held = self
            .try_connection(endpoint, request.priority())
            .ok_or(SendError::Overflow)?;
        let slot = Slot::new(held, endpoint);
        let io = connect_counted(&self.cluster, endpoint).await?;
        let opened = Opened::new(&self.cluster, endpoint, slot, Version::HTTP_11);
        let (mut sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection failed");
            }
        });
        let mut req = std::mem::replace(req, Request::new(Body::empty()));
        *req.version_mut() = Version::HTTP_11;
        match upgrade {
            Some(upgrade) => {
                // An HTTP/1.1 request line, whatever the router made for
                // HTTP/2.
                if let Some(path) = req.uri().path_and_query().cloned() {
                    *req.uri_mut() = path.into();
                }
                let headers = req.headers_mut();
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(UPGRADE, upgrade);
            }
            // A CONNECT names its target as an authority alone: its Host
            // (the router has made the URI a path).
            None => {
                let authority = req
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                    .ok_or_else(|| {
                        SendError::Upstream("a CONNECT without a host:port target".into())
                    })?;
                *req.uri_mut() = http::Uri::from(authority);
            }
        }
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Upstream(e.into()))?;
        let tunnel = Tunnel {
            _request: request.answered(),
            _opened: opened,
        };
        Ok(resp.map(|b| Body::Upgraded(b, Box::new(tunnel))))
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<TcpStream, SendError> {
        self.cluster
            .connect_to(endpoint)
            .await
            .map_err(SendError::Connect)
    }
}

/// A new connection to `endpoint` for hyper's client, its bytes counted
/// in the cluster's stats as it goes (HTTP/1.1 connections of the pool
/// count them themselves).
async fn connect_counted(
    cluster: &WorkerCluster,
    endpoint: &Endpoint,
) -> Result<TokioIo<CountedIo>, SendError> {
    let io = cluster
        .connect_to(endpoint)
        .await
        .map_err(SendError::Connect)?;
    let stats = &cluster.stats;
    Ok(TokioIo::new(CountedIo::new(
        Bytes::new(),
        io,
        stats.upstream_cx_rx_bytes_total.clone(),
        stats.upstream_cx_tx_bytes_total.clone(),
    )))
}

/// Opens an HTTP/2 connection to `endpoint`, tells the requests waiting
/// for it how it went, then drives it until it ends or idles out. A task
/// of its own, so that no request's end (a timeout, a client gone) leaves
/// the others waiting.
async fn open_h2(
    cluster: Rc<WorkerCluster>,
    endpoint: Arc<Endpoint>,
    slot: Slot,
    shared: Rc<H2Shared>,
) {
    let handshake = async {
        let io = connect_counted(&cluster, &endpoint).await?;
        let mut builder = http2::Builder::new(LocalExec);
        builder.timer(TokioTimer::new());
        cluster
            .cluster
            .settings
            .upstream_http
            .http2
            .client(&mut builder);
        builder
            .handshake(io)
            .await
            .map_err(|e| SendError::Upstream(e.into()))
    };
    let conn = match handshake.await {
        Ok((sender, conn)) => {
            shared.opened(Ok(sender));
            conn
        }
        Err(e) => return shared.opened(Err(e)),
    };
    let opened = Opened::new(&cluster, &endpoint, slot, Version::HTTP_2);
    let idle_timeout = cluster.cluster.settings.upstream_http.idle_timeout;
    // Held weakly from here: once the pool has let go of the connection
    // (spent) and its last stream is done, the sender goes with them, and
    // hyper closes the connection.
    let shared = Rc::downgrade(&shared);
    let mut conn = std::pin::pin!(conn);
    loop {
        // While streams are open it cannot idle out sooner than a whole
        // timeout from now: look again then.
        let since = shared.upgrade().map(|s| match s.active.get() {
            0 => s.idle_since.get(),
            _ => Instant::now(),
        });
        let idle = async {
            match since.and_then(|s| s.checked_add(idle_timeout)) {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // The upstream's stream limit, as its SETTINGS give it.
        let polled = std::future::poll_fn(|cx| {
            let ended = conn.as_mut().poll(cx);
            if let Some(s) = shared.upgrade() {
                s.peer_max.set(conn.current_max_send_streams());
            }
            ended
        });
        tokio::select! {
            ended = polled => {
                if let Err(e) = ended {
                    tracing::debug!(endpoint = %endpoint.address, error = %e, "upstream connection ended");
                }
                break;
            }
            () = idle => if shared.upgrade().is_some_and(|s| s.active.get() == 0
                && s.idle_since.get().elapsed() >= idle_timeout)
            {
                // Dropping the connection closes it; the pool finds its
                // sender closed and opens another when needed.
                opened.idled();
                break;
            },
        }
    }
}

/// What the streams of one HTTP/2 connection share: how requests go on it
/// once it is open, how many are in flight or waiting for it to open, and
/// since when it has had none (an idle connection is one with no streams).
pub struct H2Shared {
    /// Unset while the connection is being opened; then how requests go on
    /// it, or why it could not be opened.
    opened: std::cell::OnceCell<Result<http2::SendRequest<Body>, SendError>>,
    ready: tokio::sync::Notify,
    active: Cell<u32>,
    idle_since: Cell<Instant>,
    /// How many streams the upstream allows at once: as many as wasp's own
    /// limit allows until its SETTINGS say.
    peer_max: Cell<usize>,
}

impl H2Shared {
    fn opening() -> Rc<Self> {
        Rc::new(H2Shared {
            opened: std::cell::OnceCell::new(),
            ready: tokio::sync::Notify::new(),
            active: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            peer_max: Cell::new(usize::MAX),
        })
    }

    /// Whether it takes new streams: it is being opened, or is open.
    fn usable(&self) -> bool {
        match self.opened.get() {
            None => true,
            Some(Ok(sender)) => !sender.is_closed(),
            Some(Err(_)) => false,
        }
    }

    fn opened(&self, outcome: Result<http2::SendRequest<Body>, SendError>) {
        let _ = self.opened.set(outcome);
        self.ready.notify_waiters();
    }

    /// How a request goes on the connection, or why it cannot: `None`
    /// while it is being opened.
    fn outcome(&self) -> Option<Result<http2::SendRequest<Body>, SendError>> {
        self.opened.get().map(|opened| match opened {
            Ok(sender) => Ok(sender.clone()),
            Err(e) => Err(e.again()),
        })
    }

    /// How a request goes on the connection, once it is open.
    async fn sender(&self) -> Result<http2::SendRequest<Body>, SendError> {
        loop {
            // Made before the look, so that no notice falls between.
            let ready = self.ready.notified();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            ready.await;
        }
    }
}

/// What the answer to an upgrade request holds until it is done (with its
/// tunnel, if there is one): the request in flight and its connection's
/// stats.
pub struct Tunnel {
    _request: InFlight,
    _opened: Opened,
}

/// What a request's HTTP/2 stream holds until its response body is done:
/// the request in flight, and its place among its connection's streams.
pub struct H2Stream {
    request: InFlight,
    shared: Rc<H2Shared>,
}

impl H2Stream {
    fn new(request: InFlight, shared: Rc<H2Shared>) -> Self {
        shared.active.set(shared.active.get() + 1);
        H2Stream { request, shared }
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let active = self.shared.active.get() - 1;
        self.shared.active.set(active);
        if active == 0 {
            self.shared.idle_since.set(Instant::now());
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
