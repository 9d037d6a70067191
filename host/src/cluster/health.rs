//! Active health checking, on the main thread: every `interval` each
//! endpoint is checked (TCP connect, or Redis PING); after
//! `unhealthy_threshold` failures in a row it leaves the healthy set, after
//! `healthy_threshold` successes it comes back, and the cluster republishes
//! its membership so workers' load balancers skip it. As in Envoy, endpoints
//! of a checked cluster start out unhealthy and the first success alone
//! marks them healthy; the server runs that first round before accepting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::path::join;
use crate::config::{HealthCheckConfig, HealthCheckerConfig, ValidationError};
use crate::stats::{Counter, Gauge};

use super::Cluster;

/// A validated health check.
#[derive(Debug, Clone)]
pub struct HealthCheckSettings {
    pub timeout: Duration,
    pub interval: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub checker: Checker,
}

#[derive(Debug, Clone)]
pub enum Checker {
    Tcp,
    /// PING, or `EXISTS key` expecting 0; AUTH first when the cluster has
    /// redis credentials.
    Redis {
        key: Option<String>,
    },
}

impl HealthCheckSettings {
    pub fn validate(c: &HealthCheckConfig, path: &str) -> Result<Self, ValidationError> {
        if c.timeout.is_zero() {
            return Err(ValidationError::new(
                join(path, "timeout"),
                "timeout must be greater than zero",
            ));
        }
        if c.interval.is_zero() {
            return Err(ValidationError::new(
                join(path, "interval"),
                "interval must be greater than zero",
            ));
        }
        let checker = match (&c.custom_health_check, &c.tcp_health_check) {
            (Some(custom), None) => match &custom.config {
                HealthCheckerConfig::Redis(r) => Checker::Redis { key: r.key.clone() },
            },
            (None, Some(_)) => Checker::Tcp,
            _ => {
                return Err(ValidationError::new(
                    path,
                    "a health check needs exactly one of custom_health_check (envoy.health_checkers.redis) or tcp_health_check",
                ));
            }
        };
        Ok(HealthCheckSettings {
            timeout: c.timeout.0,
            interval: c.interval.0,
            unhealthy_threshold: c.unhealthy_threshold.max(1),
            healthy_threshold: c.healthy_threshold.max(1),
            checker,
        })
    }
}

struct Stats {
    attempt: Counter,
    success: Counter,
    failure: Counter,
    network_failure: Counter,
    healthy: Gauge,
}

/// Runs a cluster's health checking: the first round at once (returning when
/// it is done through `first_round`), then forever until `shutdown`.
pub struct HealthChecker {
    cluster: Arc<Cluster>,
    settings: HealthCheckSettings,
    auth: Option<Bytes>,
    stats: Stats,
    /// (consecutive successes, consecutive failures) per endpoint.
    streaks: HashMap<SocketAddr, (u32, u32)>,
}

impl HealthChecker {
    pub fn new(cluster: Arc<Cluster>, settings: HealthCheckSettings) -> Self {
        let scope = cluster.scope().child("health_check");
        let auth = cluster.settings.redis_auth.as_ref().map(|a| a.command());
        for e in cluster.endpoints().all.iter() {
            e.healthy.store(false, Ordering::Relaxed);
        }
        cluster.refresh_health();
        HealthChecker {
            stats: Stats {
                attempt: scope.counter("attempt"),
                success: scope.counter("success"),
                failure: scope.counter("failure"),
                network_failure: scope.counter("network_failure"),
                healthy: scope.gauge("healthy"),
            },
            cluster,
            settings,
            auth,
            streaks: HashMap::new(),
        }
    }

    /// Checks every endpoint once and applies the results.
    pub async fn round(&mut self, first: bool) {
        let endpoints = self.cluster.endpoints().all.clone();
        let checks = endpoints
            .iter()
            .map(|e| check(e.address, &self.settings, self.auth.as_ref()));
        let results = futures_util::future::join_all(checks).await;
        let mut changed = false;
        for (e, result) in endpoints.iter().zip(results) {
            self.stats.attempt.inc();
            let streak = self.streaks.entry(e.address).or_default();
            let healthy = e.is_healthy();
            match result {
                Ok(()) => {
                    self.stats.success.inc();
                    *streak = (streak.0 + 1, 0);
                    if !healthy && (first || streak.0 >= self.settings.healthy_threshold) {
                        e.healthy.store(true, Ordering::Relaxed);
                        changed = true;
                        tracing::info!(cluster = %self.cluster.name(), endpoint = %e.address, "endpoint is healthy");
                    }
                }
                Err(failure) => {
                    self.stats.failure.inc();
                    if failure == Failure::Network {
                        self.stats.network_failure.inc();
                    }
                    *streak = (0, streak.1 + 1);
                    if healthy && streak.1 >= self.settings.unhealthy_threshold {
                        e.healthy.store(false, Ordering::Relaxed);
                        changed = true;
                        tracing::warn!(cluster = %self.cluster.name(), endpoint = %e.address, "endpoint failed health checks");
                    }
                }
            }
        }
        self.stats
            .healthy
            .set(endpoints.iter().filter(|e| e.is_healthy()).count() as i64);
        if changed {
            self.cluster.refresh_health();
        }
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = shutdown.changed() => return,
            }
            self.round(false).await;
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Network,
    Response,
}

async fn check(
    addr: SocketAddr,
    s: &HealthCheckSettings,
    auth: Option<&Bytes>,
) -> Result<(), Failure> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|_| Failure::Network)?;
        let Checker::Redis { key } = &s.checker else {
            return Ok(());
        };
        if let Some(auth) = auth {
            stream.write_all(auth).await.map_err(|_| Failure::Network)?;
            expect(&mut stream, b"+OK\r\n").await?;
        }
        match key {
            None => {
                stream
                    .write_all(b"*1\r\n$4\r\nPING\r\n")
                    .await
                    .map_err(|_| Failure::Network)?;
                expect(&mut stream, b"+PONG\r\n").await
            }
            Some(k) => {
                let cmd = format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{k}\r\n", k.len());
                stream
                    .write_all(cmd.as_bytes())
                    .await
                    .map_err(|_| Failure::Network)?;
                expect(&mut stream, b":0\r\n").await
            }
        }
    };
    tokio::time::timeout(s.timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Network))
}

async fn expect(stream: &mut TcpStream, want: &[u8]) -> Result<(), Failure> {
    let mut got = vec![0u8; want.len()];
    stream
        .read_exact(&mut got)
        .await
        .map_err(|_| Failure::Network)?;
    if got == want {
        Ok(())
    } else {
        Err(Failure::Response)
    }
}
