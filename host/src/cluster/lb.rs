//! Load balancers. The choice itself runs on a worker with that worker's own
//! state (round-robin position, random generator); anything expensive to
//! build and identical everywhere (hash rings, Maglev tables) is built once per
//! membership snapshot on the main thread and shared.

mod least_request;
mod maglev;
mod random;
mod ring_hash;
mod round_robin;

use std::sync::Arc;

use crate::config::LbPolicy;

use super::endpoint::{Endpoint, EndpointSet};

pub use maglev::MaglevTable;
pub use ring_hash::Ring;

/// The validated load-balancing settings of a cluster.
#[derive(Debug, Clone)]
pub enum LbSettings {
    RoundRobin,
    LeastRequest {
        choice_count: u32,
        active_request_bias: f64,
    },
    Random,
    RingHash {
        minimum_ring_size: u64,
        maximum_ring_size: u64,
    },
    Maglev {
        table_size: u64,
    },
}

impl LbSettings {
    pub fn policy(&self) -> LbPolicy {
        match self {
            LbSettings::RoundRobin => LbPolicy::RoundRobin,
            LbSettings::LeastRequest { .. } => LbPolicy::LeastRequest,
            LbSettings::Random => LbPolicy::Random,
            LbSettings::RingHash { .. } => LbPolicy::RingHash,
            LbSettings::Maglev { .. } => LbPolicy::Maglev,
        }
    }

    /// Builds the shared table for hash-based policies.
    pub fn build_table(&self, healthy: &[Arc<Endpoint>]) -> Option<HashTable> {
        if healthy.is_empty() {
            return None;
        }
        match *self {
            LbSettings::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Some(HashTable::Ring(Ring::build(
                healthy,
                minimum_ring_size,
                maximum_ring_size,
            ))),
            LbSettings::Maglev { table_size } => {
                Some(HashTable::Maglev(MaglevTable::build(healthy, table_size)))
            }
            _ => None,
        }
    }
}

/// A consistent-hash lookup structure over the healthy endpoints.
#[derive(Debug)]
pub enum HashTable {
    Ring(Ring),
    Maglev(MaglevTable),
}

impl HashTable {
    /// The index into `EndpointSet::healthy` that owns `hash`.
    pub fn lookup(&self, hash: u64) -> usize {
        match self {
            HashTable::Ring(r) => r.lookup(hash),
            HashTable::Maglev(m) => m.lookup(hash),
        }
    }
}

/// What a caller knows about the request that a balancer may use.
#[derive(Debug, Default, Clone, Copy)]
pub struct LbContext {
    /// From the filter's hash policy (source IP, redis key, header...).
    pub hash: Option<u64>,
}

/// One worker's balancer for one cluster.
pub struct LoadBalancer {
    settings: LbSettings,
    rng: fastrand::Rng,
    version: Option<u64>,
    round_robin: round_robin::RoundRobin,
}

impl LoadBalancer {
    pub fn new(settings: LbSettings) -> Self {
        LoadBalancer {
            settings,
            rng: fastrand::Rng::new(),
            version: None,
            round_robin: round_robin::RoundRobin::default(),
        }
    }

    /// Picks an endpoint of `set`, or `None` when it has no healthy one.
    pub fn choose(&mut self, set: &EndpointSet, cx: LbContext) -> Option<usize> {
        if set.healthy.is_empty() {
            return None;
        }
        if self.version != Some(set.version) {
            self.version = Some(set.version);
            self.round_robin.reset(set, &mut self.rng);
        }
        match &self.settings {
            LbSettings::RoundRobin => self.round_robin.choose(set),
            LbSettings::LeastRequest {
                choice_count,
                active_request_bias,
            } => least_request::choose(set, *choice_count, *active_request_bias, &mut self.rng),
            LbSettings::Random => random::choose(set, &mut self.rng),
            LbSettings::RingHash { .. } | LbSettings::Maglev { .. } => {
                match (cx.hash, &set.table) {
                    (Some(hash), Some(table)) => Some(table.lookup(hash)),
                    // No key: Envoy picks at random.
                    _ => random::choose(set, &mut self.rng),
                }
            }
        }
    }
}

/// The 64-bit hash load balancers use for keys (xxHash64, seed 0, as Envoy).
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(key, 0)
}
