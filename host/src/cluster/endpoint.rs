//! Endpoints and the immutable snapshot of a cluster's membership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config::LocalityConfig;

use super::lb::{HashTable, SlotRange};

/// One upstream endpoint. Shared by all workers; its counters are the
/// per-endpoint figures `/clusters` shows (Envoy keeps these shared too).
#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The name it was resolved from (DNS clusters) or the configured hostname.
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    pub locality: LocalityConfig,
    pub stats: EndpointStats,
    /// Cleared by active health checking.
    pub healthy: AtomicBool,
    /// Connections open or opening to it from every worker: what
    /// `per_host_thresholds`' max_connections limits.
    pub connections: AtomicU64,
}

#[derive(Debug, Default)]
pub struct EndpointStats {
    pub cx_total: AtomicU64,
    pub cx_active: AtomicU64,
    pub cx_connect_fail: AtomicU64,
    pub rq_total: AtomicU64,
    pub rq_active: AtomicU64,
    pub rq_success: AtomicU64,
    pub rq_error: AtomicU64,
    pub rq_timeout: AtomicU64,
}

impl Endpoint {
    pub fn new(
        address: SocketAddr,
        hostname: String,
        weight: u32,
        priority: u32,
        locality: LocalityConfig,
    ) -> Self {
        Endpoint {
            address,
            hostname,
            weight: weight.max(1),
            priority,
            locality,
            stats: EndpointStats::default(),
            healthy: AtomicBool::new(true),
            connections: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The string load balancers hash for this endpoint (`ip:port`), so that
    /// every worker and every restart builds the same hash tables.
    pub fn hash_key(&self) -> String {
        self.address.to_string()
    }
}

/// An immutable view of a cluster's membership, published by the main thread
/// and loaded by workers without locking.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// Bumped on every publication; workers reset their balancer state on change.
    pub version: u64,
    pub all: Vec<Arc<Endpoint>>,
    /// The endpoints traffic goes to: the healthy ones of the lowest priority
    /// that has any.
    pub healthy: Vec<Arc<Endpoint>>,
    /// Cumulative weights over `healthy`, for weighted random choice.
    pub cumulative_weights: Vec<u64>,
    /// The consistent-hash table over `healthy` (RING_HASH, MAGLEV, slots).
    pub table: Option<HashTable>,
    /// Redis Cluster only: which master serves which slots.
    pub slots: Arc<Vec<SlotRange>>,
}

impl EndpointSet {
    pub fn total_weight(&self) -> u64 {
        self.cumulative_weights.last().copied().unwrap_or(0)
    }

    /// Whether all healthy endpoints have the same weight.
    pub fn uniform_weights(&self) -> bool {
        self.healthy.windows(2).all(|w| w[0].weight == w[1].weight)
    }

    /// A weighted random choice among the healthy endpoints.
    pub fn weighted_random(&self, rng: &mut fastrand::Rng) -> Option<usize> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let point = rng.u64(..total);
        Some(self.cumulative_weights.partition_point(|&c| c <= point))
    }
}
