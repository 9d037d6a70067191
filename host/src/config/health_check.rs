use serde::Deserialize;
use serde::de::Deserializer;

use super::extension::{Extensions, unsupported};
use super::{Duration, Extension};

/// Envoy's `HealthCheck`: active checking of a cluster's endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub timeout: Duration,
    pub interval: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub interval_jitter: Option<Duration>,
    pub custom_health_check: Option<Extension<HealthCheckerConfig>>,
    pub tcp_health_check: Option<TcpHealthCheckConfig>,
}

/// `tcp_health_check`: wasp checks that a connection opens (no payloads).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheckConfig {}

/// Custom health checkers.
#[derive(Debug, Clone)]
pub enum HealthCheckerConfig {
    Redis(RedisHealthCheckConfig),
}

/// `envoy.health_checkers.redis`: PING (or `EXISTS key`, expecting 0).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisHealthCheckConfig {
    pub key: Option<String>,
}

const TYPES: &[&str] = &[
    "envoy.extensions.health_checkers.redis.v3.Redis",
    "envoy.config.health_checker.redis.v2.Redis",
];

impl Extensions for HealthCheckerConfig {
    const KIND: &'static str = "health checker";

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        if TYPES.contains(&type_name) {
            return Ok(HealthCheckerConfig::Redis(
                RedisHealthCheckConfig::deserialize(d)?,
            ));
        }
        Err(unsupported(Self::KIND, type_name, TYPES))
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        if name == "envoy.health_checkers.redis" {
            return Ok(HealthCheckerConfig::Redis(
                RedisHealthCheckConfig::deserialize(d)?,
            ));
        }
        Err(unsupported(
            Self::KIND,
            name,
            &["envoy.health_checkers.redis"],
        ))
    }
}
