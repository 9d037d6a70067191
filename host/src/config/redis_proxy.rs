use serde::Deserialize;

use super::{DataSourceConfig, Duration};

/// `envoy.filters.network.redis_proxy` (v3, and v2's `cluster` /
/// `catch_all_cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisProxyConfig {
    pub stat_prefix: String,
    #[serde(default)]
    pub settings: Option<ConnPoolSettingsConfig>,
    pub prefix_routes: Option<PrefixRoutesConfig>,
    /// v2: one cluster for every key.
    pub cluster: Option<String>,
    #[serde(default)]
    pub latency_in_micros: bool,
    pub downstream_auth_password: Option<DataSourceConfig>,
    #[serde(default)]
    pub downstream_auth_passwords: Vec<DataSourceConfig>,
    pub downstream_auth_username: Option<DataSourceConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConnPoolSettingsConfig {
    pub op_timeout: Option<Duration>,
    #[serde(default)]
    pub enable_hashtagging: bool,
    #[serde(default)]
    pub enable_redirection: bool,
    /// Accepted for compatibility. wasp batches differently: each upstream
    /// connection writes everything queued for it in one go whenever it
    /// runs, which is what these two settings approximate with a size and
    /// a timer, without adding latency.
    pub max_buffer_size_before_flush: Option<u32>,
    pub buffer_flush_timeout: Option<Duration>,
    /// Accepted for compatibility; redirections reuse one connection per
    /// node, so there is nothing to cap.
    pub max_upstream_unknown_connections: Option<u32>,
    #[serde(default)]
    pub enable_command_stats: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PrefixRoutesConfig {
    #[serde(default)]
    pub routes: Vec<RedisRouteConfig>,
    #[serde(default)]
    pub case_insensitive: bool,
    /// v2's catch-all.
    pub catch_all_cluster: Option<String>,
    pub catch_all_route: Option<RedisRouteConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisRouteConfig {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub remove_prefix: bool,
    pub cluster: String,
    #[serde(default)]
    pub request_mirror_policy: Vec<RequestMirrorPolicyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMirrorPolicyConfig {
    pub cluster: String,
    #[serde(default)]
    pub exclude_read_commands: bool,
}

/// A cluster's `typed_extension_protocol_options` entry for redis_proxy.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedisProtocolOptionsConfig {
    #[serde(rename = "@type")]
    pub type_url: Option<String>,
    pub auth_password: Option<DataSourceConfig>,
    pub auth_username: Option<DataSourceConfig>,
}
