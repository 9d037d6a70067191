use std::sync::Arc;

use super::{Endpoint, hash_key};

/// RING_HASH (Ketama-style) as Envoy builds it: each endpoint gets a number
/// of points proportional to its weight, scaled so the smallest weight still
/// gets `minimum_ring_size * share` points and the ring stays under
/// `maximum_ring_size`; point `i` of an endpoint hashes `"<ip:port>_<i>"`.
#[derive(Debug)]
pub struct Ring {
    /// (hash, index into the healthy endpoints), sorted by hash.
    points: Vec<(u64, usize)>,
}

impl Ring {
    pub fn build(endpoints: &[Arc<Endpoint>], min_size: u64, max_size: u64) -> Ring {
        let total: f64 = endpoints.iter().map(|e| f64::from(e.weight)).sum();
        let min_share = endpoints
            .iter()
            .map(|e| f64::from(e.weight) / total)
            .fold(f64::INFINITY, f64::min);
        let scale = ((min_share * min_size as f64).ceil() / min_share).min(max_size as f64);
        let mut points = Vec::with_capacity(scale as usize + endpoints.len());
        let (mut target, mut placed) = (0.0f64, 0.0f64);
        for (index, e) in endpoints.iter().enumerate() {
            let key = e.hash_key();
            target += scale * f64::from(e.weight) / total;
            let mut i = 0u64;
            while placed < target {
                points.push((hash_key(format!("{key}_{i}").as_bytes()), index));
                i += 1;
                placed += 1.0;
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first point at or after `hash`, wrapping around.
    pub fn lookup(&self, hash: u64) -> usize {
        let i = self.points.partition_point(|(h, _)| *h < hash);
        self.points[if i == self.points.len() { 0 } else { i }].1
    }
}
