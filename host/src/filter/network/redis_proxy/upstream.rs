//! One worker's connections to a cluster's Redis servers: one pipelined
//! connection per endpoint, shared by every client connection on the worker.
//!
//! Requests queue on a channel; the connection's task writes everything
//! queued in one go (so a pipeline becomes few large writes) and matches
//! replies to requests in order. A failed connection fails what it holds and
//! is re-opened on the next request, after a backoff during which requests
//! fail at once instead of piling up.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cluster::{Endpoint, LbContext, WorkerCluster};
use crate::filter::network::io::{Sink, Source};

use super::resp;

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// No healthy endpoint to send it to.
    NoHost,
    /// The connection failed or could not be made.
    Failure,
}

impl UpstreamError {
    /// The error reply Envoy sends for it.
    pub fn reply(self) -> Bytes {
        match self {
            UpstreamError::NoHost => Bytes::from_static(b"-no upstream host\r\n"),
            UpstreamError::Failure => Bytes::from_static(b"-upstream failure\r\n"),
        }
    }
}

pub type ReplyResult = Result<Bytes, UpstreamError>;

struct Op {
    request: Bytes,
    reply: oneshot::Sender<ReplyResult>,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The pipelined connection to one endpoint. Dropping the client closes
/// the connection once its queue is empty (the task holds no sender).
pub struct UpstreamClient {
    target: Rc<Target>,
    sender: RefCell<Option<mpsc::UnboundedSender<Op>>>,
}

/// What the connection task needs: where to connect, and the backoff state
/// it shares with its client.
struct Target {
    endpoint: Arc<Endpoint>,
    cluster: Rc<WorkerCluster>,
    auth: Option<Bytes>,
    retry_at: Cell<Option<Instant>>,
    backoff: Cell<Duration>,
}

impl UpstreamClient {
    fn new(endpoint: Arc<Endpoint>, cluster: Rc<WorkerCluster>, auth: Option<Bytes>) -> Rc<Self> {
        Rc::new(UpstreamClient {
            target: Rc::new(Target {
                endpoint,
                cluster,
                auth,
                retry_at: Cell::new(None),
                backoff: Cell::new(MIN_BACKOFF),
            }),
            sender: RefCell::new(None),
        })
    }

    /// The cluster this client's endpoint belongs to.
    pub fn cluster(&self) -> &WorkerCluster {
        &self.target.cluster
    }

    /// Queues `request`; the receiver gets its reply.
    pub fn send(&self, request: Bytes) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        if self
            .target
            .retry_at
            .get()
            .is_some_and(|t| Instant::now() < t)
        {
            let _ = tx.send(Err(UpstreamError::Failure));
            return rx;
        }
        let mut sender = self.sender.borrow_mut();
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let (s, r) = mpsc::unbounded_channel();
            tokio::task::spawn_local(run(self.target.clone(), r));
            *sender = Some(s);
        }
        if let Some(s) = sender.as_ref() {
            if let Err(mpsc::error::SendError(op)) = s.send(Op { request, reply: tx }) {
                let _ = op.reply.send(Err(UpstreamError::Failure));
            }
        }
        rx
    }
}

impl Target {
    fn failed(&self) {
        let backoff = self.backoff.get();
        self.retry_at.set(Some(Instant::now() + backoff));
        self.backoff.set((backoff * 2).min(MAX_BACKOFF));
    }

    fn connected(&self) {
        self.retry_at.set(None);
        self.backoff.set(MIN_BACKOFF);
    }
}

/// Owns one connection until it fails or its client is gone.
async fn run(client: Rc<Target>, mut ops: mpsc::UnboundedReceiver<Op>) {
    let stats = &client.cluster.stats;
    let stream = match client.cluster.connect_to(&client.endpoint).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "redis upstream connect failed");
            client.failed();
            fail_all(&mut ops, std::iter::empty());
            return;
        }
    };
    client.connected();
    let connected_at = Instant::now();
    stats.upstream_cx_active.inc();
    // Reply slots in request order; `None` is our own AUTH.
    let pending: RefCell<VecDeque<Option<oneshot::Sender<ReplyResult>>>> = RefCell::default();
    if let Some(auth) = &client.auth {
        pending.borrow_mut().push_back(None);
        if stream.write_all(auth).await.is_err() {
            stats.upstream_cx_active.dec();
            client.failed();
            fail_all(&mut ops, std::iter::empty());
            return;
        }
    }
    let writer = async {
        let mut batch = BytesMut::new();
        while let Some(op) = ops.recv().await {
            let take = |op: Op, batch: &mut BytesMut| {
                batch.extend_from_slice(&op.request);
                pending.borrow_mut().push_back(Some(op.reply));
                stats.upstream_rq_total.inc();
            };
            take(op, &mut batch);
            while let Ok(op) = ops.try_recv() {
                take(op, &mut batch);
            }
            stats.upstream_cx_tx_bytes_total.add(batch.len() as u64);
            stream.write_all(&batch).await?;
            batch.clear();
        }
        Ok::<_, std::io::Error>(())
    };
    let reader = async {
        let mut buf = BytesMut::new();
        loop {
            let n = stream.read_buf(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            stats.upstream_cx_rx_bytes_total.add(n as u64);
            while let Some(len) = resp::reply_len(&buf).map_err(std::io::Error::other)? {
                let reply = buf.split_to(len).freeze();
                match pending.borrow_mut().pop_front() {
                    Some(Some(tx)) => {
                        // The client may have given up (op_timeout): fine.
                        let _ = tx.send(Ok(reply));
                    }
                    Some(None) if reply.starts_with(b"+OK") => {}
                    Some(None) => return Err(std::io::Error::other("upstream AUTH failed")),
                    None => return Err(std::io::Error::other("reply without a request")),
                }
            }
        }
    };
    let result = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    if let Err(e) = &result {
        tracing::debug!(endpoint = %client.endpoint.address, error = %e, "redis upstream connection failed");
        client.failed();
    }
    stats.upstream_cx_active.dec();
    stats.upstream_cx_destroy.inc();
    stats
        .upstream_cx_length_ms
        .record(connected_at.elapsed().as_millis() as u64);
    let pending = pending.into_inner();
    fail_all(&mut ops, pending.into_iter().flatten());
}

fn fail_all(
    ops: &mut mpsc::UnboundedReceiver<Op>,
    pending: impl Iterator<Item = oneshot::Sender<ReplyResult>>,
) {
    for tx in pending {
        let _ = tx.send(Err(UpstreamError::Failure));
    }
    ops.close();
    while let Ok(op) = ops.try_recv() {
        let _ = op.reply.send(Err(UpstreamError::Failure));
    }
}

/// A cluster's upstream connections on one worker.
pub struct Upstreams {
    pub cluster: Rc<WorkerCluster>,
    /// Keys hash to Redis Cluster slots.
    pub redis_cluster: bool,
    auth: Option<Bytes>,
    clients: RefCell<HashMap<SocketAddr, Rc<UpstreamClient>>>,
}

impl Upstreams {
    pub fn new(cluster: Rc<WorkerCluster>) -> Rc<Self> {
        let auth = cluster
            .cluster
            .settings
            .redis_auth
            .as_ref()
            .map(|a| a.command());
        Rc::new(Upstreams {
            redis_cluster: cluster.cluster.settings.redis_cluster.is_some(),
            cluster,
            auth,
            clients: RefCell::default(),
        })
    }

    /// The shared client for `addr`, which a redirection named even if the
    /// slot map does not list it yet.
    pub fn client_for(&self, addr: SocketAddr) -> Rc<UpstreamClient> {
        let endpoint = self
            .cluster
            .cluster
            .endpoints()
            .all
            .iter()
            .find(|e| e.address == addr)
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(Endpoint::new(addr, String::new(), 1, 0, Default::default()))
            });
        self.clients
            .borrow_mut()
            .entry(addr)
            .or_insert_with(|| {
                UpstreamClient::new(endpoint, self.cluster.clone(), self.auth.clone())
            })
            .clone()
    }

    /// A connection of its own to the endpoint for `hash`, for a transaction.
    pub fn dedicated(&self, hash: u64) -> Result<Rc<UpstreamClient>, UpstreamError> {
        let endpoint = self
            .cluster
            .choose(LbContext { hash: Some(hash) })
            .ok_or(UpstreamError::NoHost)?;
        Ok(UpstreamClient::new(
            endpoint,
            self.cluster.clone(),
            self.auth.clone(),
        ))
    }

    /// Sends `request` to the endpoint the cluster's balancer picks for
    /// `hash`.
    pub fn send(
        &self,
        hash: u64,
        request: Bytes,
    ) -> Result<oneshot::Receiver<ReplyResult>, UpstreamError> {
        Ok(self.send_to(&self.endpoint(hash)?, request))
    }

    /// The endpoint the cluster's balancer picks for `hash`.
    pub fn endpoint(&self, hash: u64) -> Result<Arc<Endpoint>, UpstreamError> {
        self.cluster
            .choose(LbContext { hash: Some(hash) })
            .ok_or(UpstreamError::NoHost)
    }

    /// Sends `request` to `endpoint` over the worker's shared connection.
    pub fn send_to(
        &self,
        endpoint: &Arc<Endpoint>,
        request: Bytes,
    ) -> oneshot::Receiver<ReplyResult> {
        let client = self
            .clients
            .borrow_mut()
            .entry(endpoint.address)
            .or_insert_with(|| {
                UpstreamClient::new(endpoint.clone(), self.cluster.clone(), self.auth.clone())
            })
            .clone();
        client.send(request)
    }
}
