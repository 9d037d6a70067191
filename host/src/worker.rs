//! Workers: one OS thread each, running a current-thread tokio runtime.
//!
//! A worker owns its listener sockets, its view of every cluster (load
//! balancer state, stat shards) and every connection it accepts, so nothing
//! on the data path is shared with another thread. On shutdown it stops
//! accepting, lets open connections finish for up to the drain time, then
//! exits, dropping whatever is still open.

use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::clock;
use crate::cluster::{ClusterManager, WorkerClusters};
use crate::filter::network::WorkerChain;
use crate::listener::{ActiveConnections, ConnectionIds, ListenerFactory, WorkerListener};
use crate::stats::Store;

/// What a worker thread is started with.
pub struct WorkerSetup {
    pub index: usize,
    pub workers: usize,
    /// Each listener with this worker's own socket for it.
    pub listeners: Vec<(Arc<ListenerFactory>, std::net::TcpListener)>,
    pub clusters: Arc<ClusterManager>,
    pub stats: Arc<Store>,
    pub shutdown: watch::Receiver<bool>,
    pub drain_time: Duration,
}

/// Starts the worker thread.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wasp-worker-{}", setup.index))
        .spawn(move || run(setup))
}

fn run(setup: WorkerSetup) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(worker = setup.index, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run_here(setup));
}

/// Runs a worker on the current thread's [`LocalSet`](tokio::task::LocalSet)
/// until it has drained: how a worker thread spends its life, and how the
/// main thread runs the only worker of `--concurrency 1`.
pub async fn run_here(setup: WorkerSetup) {
    let ticker = tokio::task::spawn_local(tick_clock());
    serve(setup).await;
    ticker.abort();
}

/// Refreshes the worker's cached time ([`clock`]) every [`clock::TICK`],
/// forever.
///
/// Its timer also saves a syscall per request. When a timer is registered
/// that is due before every other, tokio wakes its I/O driver (an eventfd
/// write, and an extra `epoll_wait` return) so that a parked thread
/// re-arms its timeout: the registering thread is the only one that could
/// be parked here, so that is wasted. Every forwarded request registers
/// one (the route timeout, 15 s by default), and with no other timer in
/// the wheel each did: one syscall per request, measured with strace under
/// wrk. With this timer always sooner, only timeouts shorter than a tick
/// still do.
async fn tick_clock() {
    let mut tick = tokio::time::interval(clock::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        clock::tick();
        crate::spare::trim();
    }
}

async fn serve(setup: WorkerSetup) {
    let clusters = WorkerClusters::new(&setup.clusters);
    let root = setup.stats.root();
    let active = Rc::new(ActiveConnections::default());
    let ids = Rc::new(ConnectionIds::new(setup.index, setup.workers));
    let mut accept_loops = Vec::new();
    for (factory, socket) in setup.listeners {
        let listener = match tokio::net::TcpListener::from_std(socket) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(worker = setup.index, error = %e, "cannot register listener");
                continue;
            }
        };
        // Validation guarantees a terminal filter last.
        let Some(chain) = WorkerChain::new(&factory.filters, &clusters, &root) else {
            continue;
        };
        let worker_listener =
            WorkerListener::new(listener, &factory.settings, chain, setup.index, &root);
        accept_loops.push(tokio::task::spawn_local(worker_listener.run(
            active.clone(),
            ids.clone(),
            setup.shutdown.clone(),
        )));
    }
    let mut shutdown = setup.shutdown;
    let _ = shutdown.wait_for(|s| *s).await;
    for l in accept_loops {
        let _ = l.await;
    }
    if active.get() > 0 {
        tracing::info!(
            worker = setup.index,
            connections = active.get(),
            "draining open connections for up to {:?}",
            setup.drain_time
        );
        let _ = tokio::time::timeout(setup.drain_time, active.wait_idle()).await;
    }
}
