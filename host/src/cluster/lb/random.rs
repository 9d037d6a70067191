use super::EndpointSet;

/// RANDOM: a weighted random pick.
pub fn choose(set: &EndpointSet, rng: &mut fastrand::Rng) -> Option<usize> {
    if set.uniform_weights() {
        return Some(rng.usize(..set.healthy.len()));
    }
    set.weighted_random(rng)
}
