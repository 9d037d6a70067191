//! `envoy.filters.network.connection_limit`: at most `max_connections`
//! connections through this filter at once, across all workers; the rest
//! are closed (after `delay`, if set).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::path::join;
use crate::config::{ConnectionLimitConfig, ValidationError};
use crate::stats::{Counter, Gauge, Scope};

use super::chain::{FilterContext, FilterStatus, NetworkFilter};

#[derive(Debug, Clone)]
pub struct ConnectionLimitSettings {
    pub stat_prefix: String,
    pub max_connections: u64,
    pub delay: Option<Duration>,
}

impl ConnectionLimitSettings {
    pub fn validate(c: &ConnectionLimitConfig, path: &str) -> Result<Self, ValidationError> {
        crate::config::path::non_empty(&c.stat_prefix, path, "stat_prefix")?;
        if c.max_connections == 0 {
            return Err(ValidationError::new(
                join(path, "max_connections"),
                "max_connections must be at least 1",
            ));
        }
        Ok(ConnectionLimitSettings {
            stat_prefix: c.stat_prefix.clone(),
            max_connections: c.max_connections,
            delay: c.delay.map(|d| d.0).filter(|d| !d.is_zero()),
        })
    }
}

/// The count shared by every worker's instances of one configured filter.
/// One atomic update per connection (not per byte), as in Envoy.
#[derive(Debug, Default)]
pub struct SharedCount(AtomicU64);

/// One worker's stat shards for the filter.
#[derive(Clone)]
pub struct ConnectionLimitStats {
    limited_connections: Counter,
    active_connections: Gauge,
}

impl ConnectionLimitStats {
    pub fn new(settings: &ConnectionLimitSettings, stats: &Scope) -> Self {
        let scope = stats.tagged(
            "connection_limit",
            "envoy_connection_limit_prefix",
            &settings.stat_prefix,
        );
        ConnectionLimitStats {
            limited_connections: scope.counter("limited_connections"),
            active_connections: scope.gauge("active_connections"),
        }
    }
}

/// The filter instance of one connection.
pub struct ConnectionLimit {
    max: u64,
    delay: Option<Duration>,
    count: Arc<SharedCount>,
    stats: ConnectionLimitStats,
    counted: bool,
}

impl ConnectionLimit {
    pub fn new(
        settings: &ConnectionLimitSettings,
        count: Arc<SharedCount>,
        stats: ConnectionLimitStats,
    ) -> Self {
        ConnectionLimit {
            max: settings.max_connections,
            delay: settings.delay,
            count,
            stats,
            counted: false,
        }
    }
}

impl NetworkFilter for ConnectionLimit {
    fn on_new_connection(&mut self, cx: &mut FilterContext) -> FilterStatus {
        let admitted = self
            .count
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.stats.limited_connections.inc();
            match self.delay {
                Some(d) => cx.close_after(d),
                None => cx.close(),
            }
            return FilterStatus::StopIteration;
        }
        self.counted = true;
        self.stats.active_connections.inc();
        FilterStatus::Continue
    }
}

impl Drop for ConnectionLimit {
    fn drop(&mut self) {
        if self.counted {
            self.count.0.fetch_sub(1, Ordering::AcqRel);
            self.stats.active_connections.dec();
        }
    }
}
