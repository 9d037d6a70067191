use serde::Deserialize;

use super::{AddressConfig, Extension, NetworkFilterConfig};

/// Envoy's `Listener`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: Option<String>,
    pub address: AddressConfig,
    /// Replaces the address in the listener's stat names.
    pub stat_prefix: Option<String>,
    #[serde(default)]
    pub filter_chains: Vec<FilterChainConfig>,
    pub per_connection_buffer_limit_bytes: Option<u32>,
    pub traffic_direction: Option<TrafficDirection>,
    /// Workers always bind with SO_REUSEPORT; `false` is refused.
    pub enable_reuse_port: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterChainConfig {
    pub name: Option<String>,
    #[serde(default)]
    pub filters: Vec<Extension<NetworkFilterConfig>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrafficDirection {
    #[serde(alias = "unspecified")]
    Unspecified,
    #[serde(alias = "inbound")]
    Inbound,
    #[serde(alias = "outbound")]
    Outbound,
}
