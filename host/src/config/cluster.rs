use serde::Deserialize;

use super::extension::Empty;
use super::{
    AddressConfig, ClusterTypeConfig, Duration, Extension, HealthCheckConfig,
    Http2ProtocolOptionsConfig, HttpProtocolOptionsConfig,
};

/// Envoy's `Cluster`: a named set of endpoints and how to pick one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: String,
    #[serde(rename = "type", default)]
    pub discovery_type: DiscoveryType,
    pub connect_timeout: Option<Duration>,
    #[serde(default)]
    pub lb_policy: LbPolicy,
    pub load_assignment: Option<LoadAssignmentConfig>,
    /// v2's flat endpoint list.
    pub hosts: Option<Vec<AddressConfig>>,
    pub dns_refresh_rate: Option<Duration>,
    #[serde(default)]
    pub dns_lookup_family: DnsLookupFamily,
    pub per_connection_buffer_limit_bytes: Option<u32>,
    pub ring_hash_lb_config: Option<RingHashLbConfig>,
    pub maglev_lb_config: Option<MaglevLbConfig>,
    pub least_request_lb_config: Option<LeastRequestLbConfig>,
    /// Read by the HTTP router; a TCP cluster ignores it, as Envoy does.
    pub http2_protocol_options: Option<Http2ProtocolOptionsConfig>,
    /// Of Envoy's upstream HTTP/1.1 options, none is applied: an empty
    /// map only.
    pub http_protocol_options: Option<Empty>,
    /// v2's place for what `HttpProtocolOptions` now holds.
    pub common_http_protocol_options: Option<HttpProtocolOptionsConfig>,
    pub max_requests_per_connection: Option<u32>,
    pub typed_extension_protocol_options: Option<serde_json::Value>,
    #[serde(default)]
    pub health_checks: Vec<HealthCheckConfig>,
    /// A custom cluster type: `envoy.clusters.redis`.
    pub cluster_type: Option<Extension<ClusterTypeConfig>>,
    pub circuit_breakers: Option<CircuitBreakersConfig>,
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`, a cluster's
/// `typed_extension_protocol_options` entry: which HTTP version to speak
/// upstream and how long its connections live.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttpProtocolOptionsConfig {
    #[serde(rename = "@type")]
    pub type_url: Option<String>,
    pub common_http_protocol_options: Option<HttpProtocolOptionsConfig>,
    /// SNI and Host checks, for TLS upstreams (which wasp does not have).
    pub upstream_http_protocol_options: Option<serde_json::Value>,
    pub explicit_http_config: Option<HttpVersionsConfig>,
    pub use_downstream_protocol_config: Option<HttpVersionsConfig>,
    /// ALPN's choice; without TLS there is none to make, and HTTP/1.1 is
    /// spoken.
    pub auto_config: Option<HttpVersionsConfig>,
}

/// Which versions' options are given (`explicit_http_config` holds one).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HttpVersionsConfig {
    pub http_protocol_options: Option<Empty>,
    pub http2_protocol_options: Option<Http2ProtocolOptionsConfig>,
    pub http3_protocol_options: Option<serde_json::Value>,
    pub alternate_protocols_cache_options: Option<serde_json::Value>,
}

/// Envoy's `CircuitBreakers`: limits shared by every worker, one set per
/// routing priority.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersConfig {
    #[serde(default)]
    pub thresholds: Vec<ThresholdsConfig>,
    /// Limits on each endpoint (Envoy reads only `max_connections` and
    /// `max_requests` of them).
    #[serde(default)]
    pub per_host_thresholds: Vec<ThresholdsConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ThresholdsConfig {
    #[serde(default)]
    pub priority: RoutingPriority,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
    pub retry_budget: Option<RetryBudgetConfig>,
    #[serde(default)]
    pub track_remaining: bool,
}

/// Retries in flight limited to a share of the requests in flight
/// (instead of `max_retries`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    pub budget_percent: Option<PercentConfig>,
    pub min_retry_concurrency: Option<u32>,
}

/// Envoy's `type.v3.Percent`.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PercentConfig {
    #[serde(default)]
    pub value: f64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RoutingPriority {
    #[default]
    #[serde(alias = "default")]
    Default,
    #[serde(alias = "high")]
    High,
}

/// Envoy reads enum names case-insensitively (v2 configs write
/// `type: strict_dns`), so every enum here also takes its lowercase spelling.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DiscoveryType {
    #[default]
    #[serde(alias = "static")]
    Static,
    #[serde(alias = "strict_dns")]
    StrictDns,
    #[serde(alias = "logical_dns")]
    LogicalDns,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    #[default]
    #[serde(alias = "round_robin")]
    RoundRobin,
    #[serde(alias = "least_request")]
    LeastRequest,
    #[serde(alias = "random")]
    Random,
    #[serde(alias = "ring_hash")]
    RingHash,
    #[serde(alias = "maglev")]
    Maglev,
    /// The cluster type balances itself (Redis Cluster: by hash slot).
    #[serde(alias = "cluster_provided")]
    ClusterProvided,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DnsLookupFamily {
    #[default]
    #[serde(alias = "auto")]
    Auto,
    #[serde(alias = "v4_only")]
    V4Only,
    #[serde(alias = "v6_only")]
    V6Only,
    #[serde(alias = "v4_preferred")]
    V4Preferred,
    #[serde(alias = "all")]
    All,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadAssignmentConfig {
    pub cluster_name: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<LocalityLbEndpointsConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbEndpointsConfig {
    pub locality: Option<LocalityConfig>,
    #[serde(default)]
    pub lb_endpoints: Vec<LbEndpointConfig>,
    pub load_balancing_weight: Option<u32>,
    #[serde(default)]
    pub priority: u32,
}

#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalityConfig {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub sub_zone: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbEndpointConfig {
    pub endpoint: EndpointConfig,
    pub load_balancing_weight: Option<u32>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub address: AddressConfig,
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RingHashLbConfig {
    pub minimum_ring_size: Option<u64>,
    pub maximum_ring_size: Option<u64>,
    #[serde(default)]
    pub hash_function: HashFunction,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HashFunction {
    #[default]
    #[serde(alias = "xx_hash")]
    XxHash,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaglevLbConfig {
    pub table_size: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LeastRequestLbConfig {
    pub choice_count: Option<u32>,
    pub active_request_bias: Option<RuntimeDoubleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeDoubleConfig {
    pub default_value: f64,
    pub runtime_key: Option<String>,
}
