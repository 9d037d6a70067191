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
    /// Redis Cluster: the hash is the key\'s slot, owned by one master.
    ClusterProvided,
}

impl LbSettings {
    pub fn policy(&self) -> LbPolicy {
        match self {
            LbSettings::RoundRobin => LbPolicy::RoundRobin,
            LbSettings::LeastRequest { .. } => LbPolicy::LeastRequest,
            LbSettings::Random => LbPolicy::Random,
            LbSettings::RingHash { .. } => LbPolicy::RingHash,
            LbSettings::Maglev { .. } => LbPolicy::Maglev,
            LbSettings::ClusterProvided => LbPolicy::ClusterProvided,
        }
    }

    /// Builds the shared table for hash-based policies (for Redis Cluster,
    /// from the slot ranges discovery found).
    pub fn build_table(&self, healthy: &[Arc<Endpoint>], slots: &[SlotRange]) -> Option<HashTable> {
        if healthy.is_empty() {
            return None;
        }
        match *self {
            LbSettings::ClusterProvided => Some(HashTable::Slots(slot_table(healthy, slots))),
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

/// A range of Redis Cluster hash slots and the master that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub master: std::net::SocketAddr,
}

/// Redis Cluster's slot count.
pub const SLOTS: usize = 16384;

/// Slot → index into `healthy` (`u32::MAX`: no healthy master).
fn slot_table(healthy: &[Arc<Endpoint>], slots: &[SlotRange]) -> Vec<u32> {
    let mut table = vec![u32::MAX; SLOTS];
    for range in slots {
        if let Some(i) = healthy.iter().position(|e| e.address == range.master) {
            for slot in range.start..=range.end.min(SLOTS as u16 - 1) {
                table[slot as usize] = i as u32;
            }
        }
    }
    table
}

/// A consistent-hash lookup structure over the healthy endpoints.
#[derive(Debug)]
pub enum HashTable {
    Ring(Ring),
    Maglev(MaglevTable),
    Slots(Vec<u32>),
}

impl HashTable {
    /// The index into `EndpointSet::healthy` that owns `hash`.
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        match self {
            HashTable::Ring(r) => Some(r.lookup(hash)),
            HashTable::Maglev(m) => Some(m.lookup(hash)),
            HashTable::Slots(t) => match t[(hash % SLOTS as u64) as usize] {
                u32::MAX => None,
                i => Some(i as usize),
            },
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its `{tag}` if it has
/// a non-empty one, else of the whole key, modulo 16384.
pub fn redis_slot(key: &[u8]) -> u64 {
    const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
    let mut k = key;
    if let Some(open) = key.iter().position(|&c| c == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&c| c == b'}') {
            if len > 0 {
                k = &key[open + 1..open + 1 + len];
            }
        }
    }
    u64::from(CRC16.checksum(k)) % SLOTS as u64
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
            LbSettings::RingHash { .. }
            | LbSettings::Maglev { .. }
            | LbSettings::ClusterProvided => {
                match (cx.hash, &set.table) {
                    (Some(hash), Some(table)) => table.lookup(hash),
                    // No key: Envoy picks at random.
                    _ => random::choose(set, &mut self.rng),
                }
            }
        }
    }
}

/// Picks one of `items` with probability proportional to `weight`; `draw(n)`
/// returns a random number below `n`. Shared by tcp_proxy's and the HTTP
/// router's weighted clusters.
pub fn pick_weighted<T>(
    items: &[T],
    weight: impl Fn(&T) -> u32,
    draw: impl FnOnce(u32) -> u32,
) -> Option<&T> {
    if items.len() <= 1 {
        return items.first();
    }
    let total: u32 = items.iter().map(&weight).sum();
    let mut point = draw(total.max(1));
    items.iter().find(|item| {
        let w = weight(item);
        if point < w {
            return true;
        }
        point -= w;
        false
    })
}

/// The 64-bit hash load balancers use for keys (xxHash64, seed 0, as Envoy).
pub fn hash_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(key, 0)
}

#[cfg(test)]
mod tests {
    use super::redis_slot;

    #[test]
    fn redis_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on a real Redis 7 server.
        assert_eq!(redis_slot(b"foo"), 12182);
        assert_eq!(redis_slot(b"bar"), 5061);
        assert_eq!(redis_slot(b"{user1000}.following"), 3443);
        // An empty tag hashes the whole key; the first `{` opens the tag.
        assert_eq!(redis_slot(b"foo{}{bar}"), 8363);
        assert_eq!(redis_slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(redis_slot(b""), 0);
    }
}
