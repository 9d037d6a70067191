//! One worker's upstream HTTP connections, per endpoint: a stack of idle
//! HTTP/1.1 keep-alive connections, or one multiplexed HTTP/2 connection.
//!
//! Everything here lives on the worker (`Rc`, `RefCell`, `spawn_local`):
//! taking a connection is a `Vec::pop`, with no lock and no task. An
//! HTTP/1.1 connection goes back on the stack when the response body that
//! came over it is dropped (the downstream has sent it, or gave up on it —
//! hyper then closes the connection and the next checkout skips it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use super::body::Body;
use crate::cluster::{ConnectError, Endpoint, WorkerCluster};

/// How long an idle HTTP/1.1 connection is kept for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle HTTP/1.1 connections kept per endpoint; more are closed. As many
/// as Envoy's default circuit breaker lets a cluster have: with fewer, a
/// load of more concurrent requests closes and reopens connections (a limit
/// of 64 at wrk -c 200 reconnected for ~3% of requests, and p99 went from
/// ~11 ms to ~14 ms).
const MAX_IDLE: usize = 1024;

/// Why a request got no response.
pub enum SendError {
    Connect(ConnectError),
    /// The connection failed or was reset before the response head.
    Upstream(hyper::Error),
}

/// A worker's connections to every endpoint of one cluster.
pub struct Pools {
    cluster: Rc<WorkerCluster>,
    by_endpoint: RefCell<HashMap<SocketAddr, Rc<EndpointPool>>>,
}

#[derive(Default)]
struct EndpointPool {
    /// Most recently used last, each with when it became idle.
    idle: RefCell<Vec<(http1::SendRequest<Body>, Instant)>>,
    h2: RefCell<Option<http2::SendRequest<Body>>>,
}

/// Puts an HTTP/1.1 connection back in its pool when dropped: rides in
/// the response body that came over the connection.
pub struct Checkin {
    pool: Rc<EndpointPool>,
    sender: Option<http1::SendRequest<Body>>,
}

impl Drop for Checkin {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.pool.idle.borrow_mut();
        // The oldest are first: close those that have idled too long.
        let stale = idle.partition_point(|(_, since)| now - *since > IDLE_TIMEOUT);
        idle.drain(..stale);
        if idle.len() < MAX_IDLE {
            idle.push((sender, now));
        }
    }
}

impl Pools {
    pub fn new(cluster: Rc<WorkerCluster>) -> Self {
        Pools {
            cluster,
            by_endpoint: RefCell::default(),
        }
    }

    fn pool(&self, endpoint: &Endpoint) -> Rc<EndpointPool> {
        self.by_endpoint
            .borrow_mut()
            .entry(endpoint.address)
            .or_default()
            .clone()
    }

    /// Sends `req` to `endpoint` over a pooled connection or a new one.
    /// On HTTP/1.1 the URI is sent as it is (origin form, with the Host
    /// header); on HTTP/2 it must carry scheme and authority.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let pool = self.pool(endpoint);
        if self.cluster.cluster.settings.http2 {
            return self.send_h2(endpoint, &pool, req).await;
        }
        loop {
            let reused = pool.idle.borrow_mut().pop();
            let (mut sender, fresh) = match reused {
                Some((mut s, since)) => {
                    if since.elapsed() > IDLE_TIMEOUT || s.ready().await.is_err() {
                        continue;
                    }
                    (s, false)
                }
                None => (Box::pin(self.connect_h1(endpoint)).await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let checkin = Checkin {
                        pool,
                        sender: Some(sender),
                    };
                    return Ok(resp.map(|b| Body::Upstream(b, checkin)));
                }
                // A kept-alive connection the upstream closed before it
                // took the request: try the next one, as Envoy does.
                Err(mut e) if !fresh => match e.take_message() {
                    Some(r) => req = r,
                    None => return Err(SendError::Upstream(e.into_error())),
                },
                Err(e) => return Err(SendError::Upstream(e.into_error())),
            }
        }
    }

    async fn send_h2(
        &self,
        endpoint: &Arc<Endpoint>,
        pool: &EndpointPool,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let current = pool.h2.borrow().clone().filter(|s| !s.is_closed());
        let mut sender = match current {
            Some(s) => s,
            None => {
                // Boxed, like the HTTP/1.1 connect: a handshake's future is
                // large and would otherwise be part of every request's.
                let s = Box::pin(self.connect_h2(endpoint)).await?;
                *pool.h2.borrow_mut() = Some(s.clone());
                s
            }
        };
        let resp = sender
            .send_request(req)
            .await
            .map_err(SendError::Upstream)?;
        Ok(resp.map(Body::Incoming))
    }

    async fn connect_h1(
        &self,
        endpoint: &Arc<Endpoint>,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.connect(endpoint).await?;
        let (sender, conn) = http1::handshake(io).await.map_err(SendError::Upstream)?;
        self.run(endpoint, conn);
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        endpoint: &Arc<Endpoint>,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let io = self.connect(endpoint).await?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(SendError::Upstream)?;
        self.run(endpoint, conn);
        Ok(sender)
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
    ) -> Result<TokioIo<tokio::net::TcpStream>, SendError> {
        let stream = self
            .cluster
            .connect_to(endpoint)
            .await
            .map_err(SendError::Connect)?;
        Ok(TokioIo::new(stream))
    }

    /// Drives a connection on the worker, keeping Envoy's connection stats.
    fn run<C>(&self, endpoint: &Arc<Endpoint>, conn: C)
    where
        C: std::future::Future<Output = hyper::Result<()>> + 'static,
    {
        let (cluster, endpoint) = (self.cluster.clone(), endpoint.clone());
        let stats = &cluster.stats;
        stats.upstream_cx_active.inc();
        endpoint.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        let opened = Instant::now();
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %endpoint.address, error = %e, "upstream connection ended");
            }
            let stats = &cluster.stats;
            stats.upstream_cx_active.dec();
            stats.upstream_cx_destroy.inc();
            stats
                .upstream_cx_length_ms
                .record(opened.elapsed().as_millis() as u64);
            endpoint.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        });
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
