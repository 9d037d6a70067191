use super::EndpointSet;

/// ROUND_ROBIN. With equal weights, a plain rotation; with weights, smooth
/// weighted round robin (each pick raises every endpoint by its weight and
/// lowers the chosen one by the total), which spreads an endpoint's turns
/// evenly instead of in bursts. Each worker starts at a random position so
/// workers do not all hit the first endpoint together.
#[derive(Default)]
pub struct RoundRobin {
    next: usize,
    current: Vec<i64>,
    weighted: bool,
}

impl RoundRobin {
    pub fn reset(&mut self, set: &EndpointSet, rng: &mut fastrand::Rng) {
        self.weighted = !set.uniform_weights();
        self.next = rng.usize(..set.healthy.len().max(1));
        self.current.clear();
        if self.weighted {
            self.current.resize(set.healthy.len(), 0);
        }
    }

    pub fn choose(&mut self, set: &EndpointSet) -> Option<usize> {
        let n = set.healthy.len();
        if !self.weighted {
            let i = self.next % n;
            self.next = self.next.wrapping_add(1);
            return Some(i);
        }
        let total = set.total_weight() as i64;
        let mut best = 0;
        for (i, e) in set.healthy.iter().enumerate() {
            self.current[i] += i64::from(e.weight);
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        Some(best)
    }
}
