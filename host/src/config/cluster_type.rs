use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use super::Duration;
use super::extension::{Extensions, unsupported};

/// Cluster types chosen by `cluster_type` (Envoy's custom clusters).
#[derive(Debug, Clone)]
pub enum ClusterTypeConfig {
    Redis(RedisClusterConfig),
}

/// `envoy.clusters.redis`: a Redis Cluster discovered with CLUSTER SLOTS.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisClusterConfig {
    pub cluster_refresh_rate: Option<Duration>,
    pub cluster_refresh_timeout: Option<Duration>,
    pub redirect_refresh_interval: Option<Duration>,
    pub redirect_refresh_threshold: Option<u32>,
    pub failure_refresh_threshold: Option<u32>,
    pub host_degraded_refresh_threshold: Option<u32>,
}

const TYPES: &[&str] = &[
    "envoy.extensions.clusters.redis.v3.RedisClusterConfig",
    "envoy.config.cluster.redis.RedisClusterConfig",
    // Envoy's own docs pass it as a Struct with the fields under `value`.
    "google.protobuf.Struct",
];

impl Extensions for ClusterTypeConfig {
    const KIND: &'static str = "cluster type";

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        match type_name {
            "google.protobuf.Struct" => {
                d.deserialize_map(StructValue).map(ClusterTypeConfig::Redis)
            }
            t if TYPES.contains(&t) => Ok(ClusterTypeConfig::Redis(
                RedisClusterConfig::deserialize(d)?,
            )),
            _ => Err(unsupported(Self::KIND, type_name, TYPES)),
        }
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        if name == "envoy.clusters.redis" {
            return Ok(ClusterTypeConfig::Redis(RedisClusterConfig::deserialize(
                d,
            )?));
        }
        Err(unsupported(Self::KIND, name, &["envoy.clusters.redis"]))
    }
}

/// `{value: {...}}` of a `google.protobuf.Struct`.
struct StructValue;

impl<'de> Visitor<'de> for StructValue {
    type Value = RedisClusterConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Struct with `value`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RedisClusterConfig, A::Error> {
        let mut value = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "value" => value = Some(map.next_value()?),
                other => return Err(de::Error::unknown_field(other, &["value"])),
            }
        }
        Ok(value.unwrap_or_default())
    }
}
