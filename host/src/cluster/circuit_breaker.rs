//! Envoy's circuit breakers: a cluster's limits on open upstream
//! connections, requests waiting for a connection, requests in flight and
//! retries in flight, counted for every worker together (as Envoy's
//! resource manager counts them) with one atomic counter each.
//!
//! A unit is taken with [`WorkerCluster::try_hold`] and given back when
//! its [`Held`] guard drops. Taking one past the limit is refused and
//! counted as Envoy counts it (`upstream_cx_overflow`, ...); the caller
//! answers as Envoy does (a 503 with `x-envoy-overloaded`, or no retry).

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ValidationError, WorkerCluster};
use crate::config::path::join;
use crate::config::{CircuitBreakersConfig, RoutingPriority};
use crate::stats::{Gauge, Scope};

/// A route's routing priority: each has its own circuit breakers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    #[default]
    Default,
    High,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Default, Priority::High];

    fn index(self) -> usize {
        self as usize
    }

    /// The name in stats (`circuit_breakers.<name>.`) and in `/clusters`
    /// (`<name>_priority::`).
    pub fn name(self) -> &'static str {
        match self {
            Priority::Default => "default",
            Priority::High => "high",
        }
    }
}

impl From<RoutingPriority> for Priority {
    fn from(p: RoutingPriority) -> Self {
        match p {
            RoutingPriority::Default => Priority::Default,
            RoutingPriority::High => Priority::High,
        }
    }
}

/// The limits of one routing priority, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
    pub track_remaining: bool,
}

impl Default for Thresholds {
    /// Envoy's defaults.
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            track_remaining: false,
        }
    }
}

impl Thresholds {
    /// Each priority's thresholds (indexed by [`Priority`]), with Envoy's
    /// defaults for any priority or field left out.
    pub fn validate(
        c: Option<&CircuitBreakersConfig>,
        path: &str,
    ) -> Result<[Thresholds; 2], ValidationError> {
        let mut chosen = [Thresholds::default(); 2];
        let mut seen = [false; 2];
        let at = join(path, "circuit_breakers.thresholds");
        for (i, t) in c.iter().flat_map(|c| c.thresholds.iter()).enumerate() {
            let slot = Priority::from(t.priority).index();
            if std::mem::replace(&mut seen[slot], true) {
                return Err(ValidationError::new(
                    format!("{at}[{i}].priority"),
                    "each priority may have one set of thresholds",
                ));
            }
            let d = Thresholds::default();
            chosen[slot] = Thresholds {
                max_connections: t.max_connections.map_or(d.max_connections, u64::from),
                max_pending_requests: t
                    .max_pending_requests
                    .map_or(d.max_pending_requests, u64::from),
                max_requests: t.max_requests.map_or(d.max_requests, u64::from),
                max_retries: t.max_retries.map_or(d.max_retries, u64::from),
                track_remaining: t.track_remaining,
            };
        }
        Ok(chosen)
    }
}

/// A cluster's breakers for each priority, shared by its workers.
pub struct CircuitBreakers([Breakers; 2]);

impl CircuitBreakers {
    /// Breakers with `limits` (per [`Priority`]), their gauges under
    /// `circuit_breakers.<priority>.` in the cluster's `scope`.
    pub fn new(limits: &[Thresholds; 2], scope: &Scope) -> Self {
        CircuitBreakers(Priority::ALL.map(|p| Breakers::new(limits[p.index()], scope, p)))
    }

    fn get(&self, breaker: Breaker, priority: Priority) -> &Resource {
        let b = &self.0[priority.index()];
        match breaker {
            Breaker::Connections => &b.connections,
            Breaker::PendingRequests => &b.pending_requests,
            Breaker::Requests => &b.requests,
            Breaker::Retries => &b.retries,
        }
    }
}

/// One priority's breakers.
struct Breakers {
    connections: Resource,
    pending_requests: Resource,
    requests: Resource,
    retries: Resource,
}

impl Breakers {
    fn new(limits: Thresholds, scope: &Scope, priority: Priority) -> Self {
        let scope = scope.child("circuit_breakers").child(priority.name());
        let resource = |max, open: &str, remaining: &str| Resource {
            max,
            taken: AtomicU64::new(0),
            open: scope.gauge(open),
            remaining: limits.track_remaining.then(|| {
                let g = scope.gauge(remaining);
                g.set(max as i64);
                g
            }),
        };
        Breakers {
            connections: resource(limits.max_connections, "cx_open", "remaining_cx"),
            pending_requests: resource(
                limits.max_pending_requests,
                "rq_pending_open",
                "remaining_pending",
            ),
            requests: resource(limits.max_requests, "rq_open", "remaining_rq"),
            retries: resource(limits.max_retries, "rq_retry_open", "remaining_retries"),
        }
    }
}

/// One limited resource: how many units are taken of at most `max`.
struct Resource {
    max: u64,
    taken: AtomicU64,
    /// 1 while the breaker is open (every unit taken), as Envoy's gauge.
    open: Gauge,
    /// Units left, when `track_remaining` asks for it.
    remaining: Option<Gauge>,
}

impl Resource {
    /// Whether a unit could be taken now.
    #[cfg(test)]
    fn available(&self) -> bool {
        self.taken.load(Ordering::Relaxed) < self.max
    }

    /// Takes a unit if one is left. Each taken unit must be given back
    /// with [`Resource::release`] (the guards that hold them do).
    fn try_acquire(&self) -> bool {
        let taken = self
            .taken
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(before) => {
                self.changed(before + 1);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes a unit even past the limit (a pool's first connection, which
    /// Envoy always allows so that a pool cannot wait forever).
    fn acquire(&self) {
        let before = self.taken.fetch_add(1, Ordering::Relaxed);
        self.changed(before + 1);
    }

    fn release(&self) {
        let before = self.taken.fetch_sub(1, Ordering::Relaxed);
        self.changed(before - 1);
    }

    /// Keeps the gauges in step; they change only when the breaker opens
    /// or closes (or when asked to track what remains).
    fn changed(&self, taken: u64) {
        if taken + 1 >= self.max && taken <= self.max {
            self.open.set(i64::from(taken >= self.max));
        }
        if let Some(r) = &self.remaining {
            r.set(self.max.saturating_sub(taken) as i64);
        }
    }
}

/// Which of a cluster's circuit breakers a [`Held`] unit is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaker {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

/// A unit of one of a cluster's circuit breakers, given back when
/// dropped.
pub struct Held {
    cluster: Rc<WorkerCluster>,
    breaker: Breaker,
    priority: Priority,
}

impl Held {
    /// The priority of the request it was taken for.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

impl WorkerCluster {
    /// Takes a unit of `priority`'s `breaker` if one is left; `None` is an
    /// overflow, counted here, for the caller to answer.
    pub fn try_hold(self: &Rc<Self>, breaker: Breaker, priority: Priority) -> Option<Held> {
        let stats = &self.stats;
        if !self.cluster.breakers.get(breaker, priority).try_acquire() {
            match breaker {
                Breaker::Connections => stats.upstream_cx_overflow.inc(),
                Breaker::PendingRequests => stats.upstream_rq_pending_overflow.inc(),
                Breaker::Requests => stats.upstream_rq_active_overflow.inc(),
                Breaker::Retries => stats.upstream_rq_retry_overflow.inc(),
            }
            return None;
        }
        if breaker == Breaker::PendingRequests {
            stats.upstream_rq_pending_total.inc();
            stats.upstream_rq_pending_active.inc();
        }
        Some(Held {
            cluster: self.clone(),
            breaker,
            priority,
        })
    }

    /// Takes a unit of `breaker` even past its limit, after
    /// [`WorkerCluster::try_hold`] counted the overflow.
    pub fn hold(self: &Rc<Self>, breaker: Breaker, priority: Priority) -> Held {
        debug_assert_ne!(breaker, Breaker::PendingRequests);
        self.cluster.breakers.get(breaker, priority).acquire();
        Held {
            cluster: self.clone(),
            breaker,
            priority,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let resource = self
            .cluster
            .cluster
            .breakers
            .get(self.breaker, self.priority);
        resource.release();
        if self.breaker == Breaker::PendingRequests {
            self.cluster.stats.upstream_rq_pending_active.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    #[test]
    fn a_resource_refuses_past_its_limit_and_reports_open() {
        let store = Store::new();
        let limits = Thresholds {
            max_requests: 2,
            track_remaining: true,
            ..Thresholds::default()
        };
        let all = CircuitBreakers::new(
            &[limits, Thresholds::default()],
            &store.root().child("cluster").child("c"),
        );
        let b = &all.0[Priority::Default.index()];
        let stat = |n: &str| store.value(&format!("cluster.c.circuit_breakers.default.{n}"));
        assert!(b.requests.try_acquire() && b.requests.try_acquire());
        assert!(!b.requests.try_acquire());
        assert_eq!((stat("rq_open"), stat("remaining_rq")), (Some(1), Some(0)));
        b.requests.release();
        assert!(b.requests.available());
        assert_eq!((stat("rq_open"), stat("remaining_rq")), (Some(0), Some(1)));
        b.connections.acquire();
        assert_eq!(stat("cx_open"), Some(0));
    }

    #[test]
    fn thresholds_default_to_envoys_and_priorities_are_unique() {
        let parse = |y: &str| -> CircuitBreakersConfig { serde_norway::from_str(y).unwrap() };
        let c = parse("thresholds: [{ max_requests: 5 }, { priority: HIGH, max_requests: 9 }]");
        let [d, h] = Thresholds::validate(Some(&c), "clusters[0]").unwrap();
        assert_eq!(
            (d.max_requests, d.max_connections, d.max_retries),
            (5, 1024, 3)
        );
        assert_eq!((h.max_requests, h.max_pending_requests), (9, 1024));
        let c = parse("thresholds: [{ priority: default }, { max_retries: 1 }]");
        let e = Thresholds::validate(Some(&c), "clusters[0]").unwrap_err();
        assert!(e.to_string().contains("thresholds[1].priority"), "{e}");
    }
}
