use std::sync::Arc;

use super::Endpoint;

/// MAGLEV: a lookup table of prime size filled from each endpoint's
/// permutation (offset and skip from two hashes of its address), weighted by
/// letting heavier endpoints take their turn more often, as Envoy does.
#[derive(Debug)]
pub struct MaglevTable {
    table: Vec<u32>,
}

impl MaglevTable {
    pub fn build(endpoints: &[Arc<Endpoint>], size: u64) -> MaglevTable {
        let m = size;
        let max_weight = endpoints.iter().map(|e| e.weight).max().unwrap_or(1) as f64;
        struct Entry {
            offset: u64,
            skip: u64,
            weight: f64,
            target: f64,
            next: u64,
        }
        let mut entries: Vec<Entry> = endpoints
            .iter()
            .map(|e| {
                let key = e.hash_key();
                Entry {
                    offset: xxhash_rust::xxh64::xxh64(key.as_bytes(), 0) % m,
                    skip: xxhash_rust::xxh64::xxh64(key.as_bytes(), 1) % (m - 1) + 1,
                    weight: f64::from(e.weight) / max_weight,
                    target: 0.0,
                    next: 0,
                }
            })
            .collect();
        let mut table = vec![u32::MAX; m as usize];
        let mut filled = 0u64;
        let mut iteration = 1u64;
        while filled < m {
            for (index, entry) in entries.iter_mut().enumerate() {
                if (iteration as f64) * entry.weight < entry.target {
                    continue;
                }
                entry.target += 1.0;
                let mut c = (entry.offset + entry.skip * entry.next) % m;
                while table[c as usize] != u32::MAX {
                    entry.next += 1;
                    c = (entry.offset + entry.skip * entry.next) % m;
                }
                table[c as usize] = index as u32;
                entry.next += 1;
                filled += 1;
                if filled == m {
                    break;
                }
            }
            iteration += 1;
        }
        MaglevTable { table }
    }

    pub fn lookup(&self, hash: u64) -> usize {
        self.table[(hash % self.table.len() as u64) as usize] as usize
    }
}
