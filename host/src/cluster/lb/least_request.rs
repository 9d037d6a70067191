use std::sync::atomic::Ordering;

use super::EndpointSet;

/// LEAST_REQUEST: draw `choice_count` random candidates and keep the best.
/// With equal weights the best has the fewest active requests (power of two
/// choices); with unequal weights candidates are drawn by weight and scored
/// `weight / (active + 1)^bias`, Envoy's weighted form.
pub fn choose(
    set: &EndpointSet,
    choice_count: u32,
    bias: f64,
    rng: &mut fastrand::Rng,
) -> Option<usize> {
    let n = set.healthy.len();
    let uniform = set.uniform_weights();
    let mut best: Option<(usize, f64)> = None;
    for _ in 0..choice_count.max(1) {
        let i = if uniform {
            rng.usize(..n)
        } else {
            set.weighted_random(rng)?
        };
        let e = &set.healthy[i];
        let active = e.stats.rq_active.load(Ordering::Relaxed) as f64;
        let score = if uniform {
            -active
        } else {
            f64::from(e.weight) / (active + 1.0).powf(bias)
        };
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}
