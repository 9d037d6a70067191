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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Priority {
    #[default]
    Default,
    High,
}

impl Priority {
    pub const ALL: [Priority; 2] = [Priority::Default, Priority::High];

    pub fn index(self) -> usize {
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub max_connections: u64,
    pub max_pending_requests: u64,
    pub max_requests: u64,
    pub max_retries: u64,
    /// Replaces `max_retries` when set.
    pub retry_budget: Option<RetryBudget>,
    pub track_remaining: bool,
    /// `per_host_thresholds`: each endpoint's own limit on connections.
    pub max_host_connections: Option<u64>,
}

/// Retries in flight limited to a share of the requests in flight and
/// waiting, but never below a floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub percent: f64,
    pub min_concurrency: u64,
}

impl RetryBudget {
    /// How many retries may be in flight while `active` requests are in
    /// flight or waiting (Envoy rounds the share down).
    pub fn limit(&self, active: u64) -> u64 {
        ((self.percent / 100.0 * active as f64) as u64).max(self.min_concurrency)
    }
}

impl Default for Thresholds {
    /// Envoy's defaults.
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            track_remaining: false,
            max_host_connections: None,
        }
    }
}

impl Thresholds {
    /// The retries allowed with no request in flight: `max_retries`, or a
    /// budget's floor (what Envoy's `/clusters` shows at rest).
    pub fn retries_at_rest(&self) -> u64 {
        self.retry_budget.map_or(self.max_retries, |b| b.limit(0))
    }

    /// Each priority's thresholds (indexed by [`Priority`]), with Envoy's
    /// defaults for any priority or field left out. As in Envoy, the first
    /// entry for a priority is the one used.
    pub fn validate(
        c: Option<&CircuitBreakersConfig>,
        path: &str,
    ) -> Result<[Thresholds; 2], ValidationError> {
        let mut chosen = [None; 2];
        let at = join(path, "circuit_breakers.thresholds");
        for (i, t) in c.iter().flat_map(|c| c.thresholds.iter()).enumerate() {
            let slot = &mut chosen[Priority::from(t.priority).index()];
            if slot.is_some() {
                tracing::warn!(at = %format!("{at}[{i}]"), "a second set of thresholds for one priority is ignored, as in Envoy");
                continue;
            }
            let d = Thresholds::default();
            let retry_budget = match &t.retry_budget {
                None => None,
                Some(b) => {
                    let percent = b.budget_percent.map_or(20.0, |p| p.value);
                    if !(0.0..=100.0).contains(&percent) {
                        return Err(ValidationError::new(
                            format!("{at}[{i}].retry_budget.budget_percent.value"),
                            "must be between 0 and 100",
                        ));
                    }
                    Some(RetryBudget {
                        percent,
                        min_concurrency: b.min_retry_concurrency.map_or(3, u64::from),
                    })
                }
            };
            *slot = Some(Thresholds {
                max_connections: t.max_connections.map_or(d.max_connections, u64::from),
                max_pending_requests: t
                    .max_pending_requests
                    .map_or(d.max_pending_requests, u64::from),
                max_requests: t.max_requests.map_or(d.max_requests, u64::from),
                max_retries: t.max_retries.map_or(d.max_retries, u64::from),
                retry_budget,
                track_remaining: t.track_remaining,
                max_host_connections: None,
            });
        }
        let mut chosen = chosen.map(Option::unwrap_or_default);
        // Per host, Envoy reads only max_connections and max_requests
        // (first entry per priority, as above); wasp does not limit
        // requests per host yet, and says so rather than ignore it.
        let mut seen = [false; 2];
        let per_host = c.iter().flat_map(|c| c.per_host_thresholds.iter());
        for (i, t) in per_host.enumerate() {
            if t.max_requests.is_some() {
                return Err(ValidationError::new(
                    join(
                        path,
                        &format!("circuit_breakers.per_host_thresholds[{i}].max_requests"),
                    ),
                    "a per-host request limit is not supported (max_connections is)",
                ));
            }
            let p = Priority::from(t.priority).index();
            if !std::mem::replace(&mut seen[p], true) {
                chosen[p].max_host_connections = t.max_connections.map(u64::from);
            }
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

    /// `breaker`'s resource and its limit now: a retry budget's moves
    /// with the requests in flight and waiting.
    fn get(&self, breaker: Breaker, priority: Priority) -> (&Resource, u64) {
        let b = &self.0[priority.index()];
        let resource = match breaker {
            Breaker::Connections => &b.connections,
            Breaker::PendingRequests => &b.pending_requests,
            Breaker::Requests => &b.requests,
            Breaker::Retries => &b.retries,
        };
        let max = match (breaker, &b.retry_budget) {
            (Breaker::Retries, Some(budget)) => {
                budget.limit(b.requests.taken() + b.pending_requests.taken())
            }
            _ => resource.max,
        };
        (resource, max)
    }
}

/// One priority's breakers.
struct Breakers {
    connections: Resource,
    pending_requests: Resource,
    requests: Resource,
    retries: Resource,
    retry_budget: Option<RetryBudget>,
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
            // A budget's remaining retries are not tracked (as in Envoy).
            retries: match limits.retry_budget {
                None => resource(limits.max_retries, "rq_retry_open", "remaining_retries"),
                Some(_) => Resource {
                    remaining: None,
                    ..resource(u64::MAX, "rq_retry_open", "")
                },
            },
            retry_budget: limits.retry_budget,
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
    fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }

    /// Takes a unit if fewer than `max` are taken. Each taken unit must be
    /// given back with [`Resource::release`] (the guards that hold them do).
    fn try_acquire(&self, max: u64) -> bool {
        let taken = self
            .taken
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            });
        match taken {
            Ok(before) => {
                self.changed(before + 1, max);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes a unit even past the limit (a pool's first connection, which
    /// Envoy always allows so that a pool cannot wait forever).
    fn acquire(&self, max: u64) {
        let before = self.taken.fetch_add(1, Ordering::Relaxed);
        self.changed(before + 1, max);
    }

    fn release(&self, max: u64) {
        let before = self.taken.fetch_sub(1, Ordering::Relaxed);
        self.changed(before - 1, max);
    }

    /// Keeps the gauges in step with `taken` of `max`; they change only
    /// when the breaker opens or closes (or when asked to track what
    /// remains).
    fn changed(&self, taken: u64, max: u64) {
        if taken + 1 >= max && taken <= max {
            self.open.set(i64::from(taken >= max));
        }
        if let Some(r) = &self.remaining {
            r.set(max.saturating_sub(taken) as i64);
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

    /// The cluster it is a unit of.
    pub fn cluster(&self) -> &WorkerCluster {
        &self.cluster
    }
}

impl WorkerCluster {
    /// Takes a unit of `priority`'s `breaker` if one is left; `None` is an
    /// overflow, counted here, for the caller to answer.
    pub fn try_hold(self: &Rc<Self>, breaker: Breaker, priority: Priority) -> Option<Held> {
        let stats = &self.stats;
        let (resource, max) = self.cluster.breakers.get(breaker, priority);
        if !resource.try_acquire(max) {
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
        let (resource, max) = self.cluster.breakers.get(breaker, priority);
        resource.acquire(max);
        Held {
            cluster: self.clone(),
            breaker,
            priority,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let (resource, max) = self
            .cluster
            .cluster
            .breakers
            .get(self.breaker, self.priority);
        resource.release(max);
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
        let (requests, max) = all.get(Breaker::Requests, Priority::Default);
        let stat = |n: &str| store.value(&format!("cluster.c.circuit_breakers.default.{n}"));
        assert!(requests.try_acquire(max) && requests.try_acquire(max));
        assert!(!requests.try_acquire(max));
        assert_eq!((stat("rq_open"), stat("remaining_rq")), (Some(1), Some(0)));
        requests.release(max);
        assert_eq!(requests.taken(), 1);
        assert_eq!((stat("rq_open"), stat("remaining_rq")), (Some(0), Some(1)));
        let (connections, max) = all.get(Breaker::Connections, Priority::Default);
        connections.acquire(max);
        assert_eq!(stat("cx_open"), Some(0));
    }

    #[test]
    fn a_retry_budget_follows_the_requests_in_flight() {
        let store = Store::new();
        let limits = Thresholds {
            retry_budget: Some(RetryBudget {
                percent: 25.0,
                min_concurrency: 1,
            }),
            max_retries: 100,
            track_remaining: true,
            ..Thresholds::default()
        };
        let all = CircuitBreakers::new(&[limits; 2], &store.root().child("c"));
        let retries = || all.get(Breaker::Retries, Priority::High).1;
        assert_eq!(retries(), 1, "the floor, with nothing in flight");
        let (requests, max) = all.get(Breaker::Requests, Priority::High);
        for _ in 0..8 {
            requests.acquire(max);
        }
        let (pending, max) = all.get(Breaker::PendingRequests, Priority::High);
        for _ in 0..3 {
            pending.acquire(max);
        }
        assert_eq!(retries(), 2, "a quarter of 11, rounded down");
        assert_eq!(all.get(Breaker::Retries, Priority::Default).1, 1);
        assert_eq!(
            store.value("c.circuit_breakers.high.remaining_retries"),
            None
        );
    }

    #[test]
    fn thresholds_default_to_envoys_and_the_first_per_priority_counts() {
        let parse = |y: &str| -> CircuitBreakersConfig { serde_norway::from_str(y).unwrap() };
        let c = parse(
            "thresholds: [{ max_requests: 5 }, { priority: HIGH, max_requests: 9 }, { max_retries: 1 }]\n\
             per_host_thresholds: [{ max_connections: 2, max_retries: 7 }, { max_connections: 3 }]",
        );
        let [d, h] = Thresholds::validate(Some(&c), "clusters[0]").unwrap();
        assert_eq!(
            (d.max_requests, d.max_connections, d.max_retries),
            (5, 1024, 3)
        );
        assert_eq!((h.max_requests, h.max_pending_requests), (9, 1024));
        assert_eq!(
            (d.max_host_connections, h.max_host_connections),
            (Some(2), None)
        );
        assert_eq!(d.retry_budget, None);
        let c = parse("thresholds: [{ retry_budget: {} }]");
        let [d, _] = Thresholds::validate(Some(&c), "clusters[0]").unwrap();
        assert_eq!(
            d.retry_budget,
            Some(RetryBudget {
                percent: 20.0,
                min_concurrency: 3
            })
        );
        let c = parse("per_host_thresholds: [{ max_requests: 1 }]");
        let e = Thresholds::validate(Some(&c), "clusters[0]").unwrap_err();
        assert!(
            e.to_string()
                .contains("per_host_thresholds[0].max_requests"),
            "{e}"
        );
        let c = parse("thresholds: [{ retry_budget: { budget_percent: { value: 101 } } }]");
        let e = Thresholds::validate(Some(&c), "clusters[0]").unwrap_err();
        assert!(
            e.to_string()
                .contains("thresholds[0].retry_budget.budget_percent.value"),
            "{e}"
        );
    }
}
