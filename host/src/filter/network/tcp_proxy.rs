//! `envoy.filters.network.tcp_proxy`: connects each downstream connection
//! to an endpoint of a cluster and copies bytes both ways.
//!
//! Reading from the downstream starts only once the upstream is connected (as
//! Envoy does), connect failures move on to a new endpoint up to
//! `max_connect_attempts`, each direction half-closes on its own, and an idle
//! connection is closed after `idle_timeout` (one hour by default).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::access_log::{AccessLog, AccessLogSettings, ResponseFlags, StreamInfo};
use crate::cluster::{
    Breaker, ConnectError, LbContext, Priority, WorkerCluster, WorkerClusters, lb,
};
use crate::config::path::{index, join};
use crate::config::{TcpProxyConfig, ValidationError};
use crate::stats::{Counter, Scope};

use super::{Downstream, io};

/// A validated tcp_proxy config.
#[derive(Debug, Clone)]
pub struct TcpProxySettings {
    pub stat_prefix: String,
    /// (cluster, weight); one entry with weight 1 for `cluster:`.
    pub clusters: Vec<(String, u32)>,
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: u32,
    pub max_downstream_connection_duration: Option<Duration>,
    pub access_logs: Vec<AccessLogSettings>,
    pub hash_source_ip: bool,
}

impl TcpProxySettings {
    pub fn validate(
        c: &TcpProxyConfig,
        path: &str,
        known: &HashSet<String>,
    ) -> Result<Self, ValidationError> {
        crate::config::path::non_empty(&c.stat_prefix, path, "stat_prefix")?;
        let unknown =
            |at: String, name: &str| ValidationError::new(at, format!("unknown cluster `{name}`"));
        let clusters = match (&c.cluster, &c.weighted_clusters) {
            (Some(name), None) => {
                if !known.contains(name) {
                    return Err(unknown(join(path, "cluster"), name));
                }
                vec![(name.clone(), 1)]
            }
            (None, Some(w)) => {
                let base = join(&join(path, "weighted_clusters"), "clusters");
                if w.clusters.is_empty() {
                    return Err(ValidationError::new(
                        base,
                        "at least one cluster is required",
                    ));
                }
                for (i, wc) in w.clusters.iter().enumerate() {
                    if !known.contains(&wc.name) {
                        return Err(unknown(join(&index(&base, i), "name"), &wc.name));
                    }
                }
                if w.clusters.iter().all(|wc| wc.weight == 0) {
                    return Err(ValidationError::new(
                        base,
                        "cluster weights must not all be zero",
                    ));
                }
                w.clusters
                    .iter()
                    .map(|wc| (wc.name.clone(), wc.weight))
                    .collect()
            }
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    join(path, "weighted_clusters"),
                    "set either `cluster` or `weighted_clusters`, not both",
                ));
            }
            (None, None) => {
                return Err(ValidationError::new(
                    join(path, "cluster"),
                    "one of `cluster` or `weighted_clusters` is required",
                ));
            }
        };
        let max_connect_attempts = c.max_connect_attempts.unwrap_or(1);
        if max_connect_attempts == 0 {
            return Err(ValidationError::new(
                join(path, "max_connect_attempts"),
                "max_connect_attempts must be at least 1",
            ));
        }
        let idle_timeout = match c.idle_timeout {
            None => Some(Duration::from_secs(3600)),
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d.0),
        };
        let access_logs = c
            .access_log
            .iter()
            .enumerate()
            .map(|(i, l)| AccessLogSettings::validate(l, &index(&join(path, "access_log"), i)))
            .collect::<Result<_, _>>()?;
        Ok(TcpProxySettings {
            stat_prefix: c.stat_prefix.clone(),
            clusters,
            idle_timeout,
            max_connect_attempts,
            max_downstream_connection_duration: c
                .max_downstream_connection_duration
                .map(|d| d.0)
                .filter(|d| !d.is_zero()),
            access_logs,
            hash_source_ip: c.hash_policy.iter().any(|h| h.source_ip.is_some()),
        })
    }
}

/// Envoy's `tcp.<stat_prefix>.*` stats (one worker's shards).
struct TcpStats {
    downstream_cx_total: Counter,
    downstream_cx_no_route: Counter,
    downstream_cx_rx_bytes_total: Counter,
    downstream_cx_tx_bytes_total: Counter,
    idle_timeout: Counter,
    max_downstream_connection_duration: Counter,
}

/// One worker's tcp_proxy.
pub struct TcpProxy {
    settings: Arc<TcpProxySettings>,
    clusters: Vec<(Rc<WorkerCluster>, Arc<str>, u32)>,
    logs: Vec<Arc<AccessLog>>,
    stats: TcpStats,
    rng: RefCell<fastrand::Rng>,
}

impl TcpProxy {
    pub fn new(
        settings: Arc<TcpProxySettings>,
        logs: Vec<Arc<AccessLog>>,
        clusters: &WorkerClusters,
        stats: &Scope,
    ) -> Self {
        let scope = stats.tagged("tcp", "envoy_tcp_prefix", &settings.stat_prefix);
        let clusters: Vec<_> = settings
            .clusters
            .iter()
            .filter_map(|(name, w)| Some((clusters.get(name)?, Arc::from(name.as_str()), *w)))
            .collect();
        TcpProxy {
            clusters,
            logs,
            stats: TcpStats {
                downstream_cx_total: scope.counter("downstream_cx_total"),
                downstream_cx_no_route: scope.counter("downstream_cx_no_route"),
                downstream_cx_rx_bytes_total: scope.counter("downstream_cx_rx_bytes_total"),
                downstream_cx_tx_bytes_total: scope.counter("downstream_cx_tx_bytes_total"),
                idle_timeout: scope.counter("idle_timeout"),
                max_downstream_connection_duration: scope
                    .counter("max_downstream_connection_duration"),
            },
            settings,
            rng: RefCell::new(fastrand::Rng::new()),
        }
    }

    pub async fn serve(&self, d: Downstream, mut info: StreamInfo) {
        let buffer_limit = d.buffer_limit;
        let downstream = &d;
        self.stats.downstream_cx_total.inc();
        let picked = lb::pick_weighted(&self.clusters, |c| c.2, |n| self.rng.borrow_mut().u32(..n));
        let Some((cluster, cluster_name, _)) = picked else {
            self.stats.downstream_cx_no_route.inc();
            drop(d);
            return self.finish(info);
        };
        info.upstream_cluster = Some(cluster_name.clone());
        let cx = LbContext {
            hash: self
                .settings
                .hash_source_ip
                .then(|| lb::hash_key(info.downstream_remote.ip().to_string().as_bytes())),
        };

        // Past the cluster's max_connections the client is closed, as
        // Envoy's tcp_proxy closes it; the unit is held while proxying.
        let Some(_slot) = cluster.try_hold(Breaker::Connections, Priority::Default) else {
            info.response_flags.set(ResponseFlags::UPSTREAM_OVERFLOW);
            drop(d);
            return self.finish(info);
        };
        let mut connected = None;
        for _ in 0..self.settings.max_connect_attempts {
            match cluster.connect(cx).await {
                Ok(c) => {
                    connected = Some(c);
                    break;
                }
                Err(ConnectError::NoHealthyUpstream) => {
                    info.response_flags.set(ResponseFlags::NO_HEALTHY_UPSTREAM);
                    break;
                }
                Err(e) => {
                    tracing::debug!(cluster = %cluster_name, error = %e, "upstream connect failed");
                    info.response_flags
                        .set(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
                }
            }
        }
        let Some((endpoint, upstream)) = connected else {
            drop(d);
            return self.finish(info);
        };
        info.upstream_host = Some(endpoint.address);
        info.upstream_local = upstream.local_addr().ok();

        let cs = &cluster.stats;
        cs.upstream_cx_active.inc();
        endpoint.stats.cx_active.fetch_add(1, Ordering::Relaxed);
        // A proxied connection counts as one request on its endpoint, so that
        // LEAST_REQUEST balances TCP connections.
        endpoint.stats.rq_total.fetch_add(1, Ordering::Relaxed);
        endpoint.stats.rq_active.fetch_add(1, Ordering::Relaxed);

        // Each side's reads are bounded by its own limit: the listener's for
        // the downstream, the cluster's for the upstream (as in Envoy).
        let upstream_limit = cluster.cluster.settings.per_connection_buffer_limit_bytes as usize;
        let connected_at = Instant::now();
        let activity = Cell::new(connected_at);
        let (rx, tx) = (Cell::new(0u64), Cell::new(0u64));
        let upstream_counters = [
            &self.stats.downstream_cx_rx_bytes_total,
            &cs.upstream_cx_tx_bytes_total,
        ];
        let downstream_counters = [
            &self.stats.downstream_cx_tx_bytes_total,
            &cs.upstream_cx_rx_bytes_total,
        ];
        let copy = async {
            tokio::try_join!(
                io::pump(
                    downstream,
                    &upstream,
                    buffer_limit,
                    &activity,
                    &rx,
                    &upstream_counters,
                ),
                io::pump(
                    &upstream,
                    downstream,
                    upstream_limit,
                    &activity,
                    &tx,
                    &downstream_counters,
                ),
            )
        };
        let outcome = tokio::select! {
            r = copy => match r {
                Ok(_) => Outcome::Closed,
                Err(_) => Outcome::Reset,
            },
            _ = io::idle(self.settings.idle_timeout, &activity) => Outcome::Idle,
            _ = deadline(self.settings.max_downstream_connection_duration) => Outcome::MaxDuration,
        };
        match outcome {
            Outcome::Idle => self.stats.idle_timeout.inc(),
            Outcome::MaxDuration => {
                self.stats.max_downstream_connection_duration.inc();
                info.response_flags.set(ResponseFlags::DURATION_TIMEOUT);
            }
            Outcome::Closed | Outcome::Reset => {}
        }
        info.bytes_received = rx.get();
        info.bytes_sent = tx.get();

        cs.upstream_cx_active.dec();
        cs.upstream_cx_destroy.inc();
        cs.upstream_cx_length_ms
            .record(connected_at.elapsed().as_millis() as u64);
        endpoint.stats.cx_active.fetch_sub(1, Ordering::Relaxed);
        endpoint.stats.rq_active.fetch_sub(1, Ordering::Relaxed);
        if outcome == Outcome::Closed {
            endpoint.stats.rq_success.fetch_add(1, Ordering::Relaxed);
        } else {
            endpoint.stats.rq_error.fetch_add(1, Ordering::Relaxed);
        }
        drop(upstream);
        drop(d);
        self.finish(info);
    }

    fn finish(&self, mut info: StreamInfo) {
        info.finish();
        for log in &self.logs {
            log.log(&info);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Closed,
    Reset,
    Idle,
    MaxDuration,
}

async fn deadline(limit: Option<Duration>) {
    match limit {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
