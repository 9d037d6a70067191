use serde::Deserialize;

use super::extension::Empty;
use super::{AccessLogConfig, Duration, Extension};

/// `envoy.filters.network.tcp_proxy`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyConfig {
    pub stat_prefix: String,
    pub cluster: Option<String>,
    pub weighted_clusters: Option<WeightedClustersConfig>,
    /// Default one hour; zero disables it.
    pub idle_timeout: Option<Duration>,
    pub max_connect_attempts: Option<u32>,
    pub max_downstream_connection_duration: Option<Duration>,
    #[serde(default)]
    pub access_log: Vec<Extension<AccessLogConfig>>,
    #[serde(default)]
    pub hash_policy: Vec<TcpProxyHashPolicyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClustersConfig {
    pub clusters: Vec<WeightedClusterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClusterConfig {
    pub name: String,
    pub weight: u32,
}

/// A hash policy for tcp_proxy: Envoy offers the downstream source IP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyHashPolicyConfig {
    pub source_ip: Option<Empty>,
}
