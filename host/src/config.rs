//! The configuration model: Envoy's v3 bootstrap, as YAML or JSON.
//!
//! Types here are plain data that mirror Envoy's protos field for field
//! (`*Config`); they know nothing about sockets, workers or stats. Parsing is
//! strict (`deny_unknown_fields`), so a typo is an error naming the field, its
//! path and its line. Cross-field rules (known cluster names, unique names,
//! ranges) are checked by the `validate()` functions of the runtime modules,
//! which report a YAML path that [`SourceMap`] turns back into a line.

mod access_log;
mod address;
mod bootstrap;
mod cluster;
mod cluster_type;
mod data_source;
mod duration;
mod error;
mod extension;
mod health_check;
mod http_connection_manager;
mod listener;
mod network_filter;
mod redis_proxy;
mod source_map;
mod tcp_proxy;
mod wasm;

pub use access_log::{
    AccessLogConfig, AccessLogFilterConfig, ComparisonFilterConfig, ComparisonOp,
    FileAccessLogConfig, LogFormatConfig, StreamAccessLogConfig,
};
pub use address::{AddressConfig, Protocol, SocketAddressConfig};
pub use bootstrap::{AdminConfig, BootstrapConfig, NodeConfig, StaticResourcesConfig};
pub use cluster::{
    CircuitBreakersConfig, ClusterConfig, DiscoveryType, DnsLookupFamily, EndpointConfig,
    HttpVersionsConfig, LbEndpointConfig, LbPolicy, LeastRequestLbConfig, LoadAssignmentConfig,
    LocalityConfig, LocalityLbEndpointsConfig, MaglevLbConfig, PercentConfig, RingHashLbConfig,
    RoutingPriority, ThresholdsConfig, UpstreamHttpProtocolOptionsConfig,
};
pub use cluster_type::{ClusterTypeConfig, RedisClusterConfig};
pub use data_source::DataSourceConfig;
pub use duration::Duration;
pub use error::{ConfigError, ValidationError};
pub use extension::{Extension, Extensions, TypedConfig, proto_name};
pub use health_check::{
    HealthCheckConfig, HealthCheckerConfig, RedisHealthCheckConfig, TcpHealthCheckConfig,
};
pub use http_connection_manager::{
    ClusterWeightConfig, CodecType, DirectResponseActionConfig, EscapedSlashesAction,
    ForwardClientCertDetails, HashPolicyConfig, HeaderMatcherConfig, HeaderValueOptionConfig,
    Http2ProtocolOptionsConfig, HttpConnectionManagerConfig, HttpFilterConfig,
    HttpProtocolOptionsConfig, InternalAddressConfig, KeepaliveSettingsConfig, LocalReplyConfig,
    MaxStreamDurationConfig, PerFilterConfig, RedirectActionConfig, RedirectResponseCode,
    RegexMatcherConfig, ResponseMapperConfig, RetryBackOffConfig, RetryHostPredicateConfig,
    RetryPolicyConfig, RouteActionConfig, RouteConfigurationConfig, RouteEntryConfig,
    RouteMatchConfig, RouteWeightedClustersConfig, StringMatcherConfig, TracingConfig,
    VirtualHostConfig,
};
pub use listener::{FilterChainConfig, ListenerConfig, TrafficDirection};
pub use network_filter::{ConnectionLimitConfig, DirectResponseConfig, NetworkFilterConfig};
pub use redis_proxy::{
    ConnPoolSettingsConfig, PrefixRoutesConfig, RedisProtocolOptionsConfig, RedisProxyConfig,
    RedisRouteConfig, RequestMirrorPolicyConfig,
};
pub use source_map::SourceMap;
pub use wasm::{
    AnyValue, AsyncDataSourceConfig, CapabilityRestrictionConfig, EnvironmentVariablesConfig,
    FailurePolicyConfig, PluginConfig, SandboxConfig, VmConfig, WasmFilterConfig,
};

/// Building YAML paths the way serde reports them (`a.b[2].c`).
pub mod path {
    pub use super::error::{index, join, non_empty};
}
pub use tcp_proxy::{
    TcpProxyConfig, TcpProxyHashPolicyConfig, WeightedClusterConfig, WeightedClustersConfig,
};

/// The configuration wasp serves when it is given none: a listener on
/// 127.0.0.1:10000 that answers every connection with a short HTTP response,
/// and the admin interface on 127.0.0.1:9901.
pub const DEFAULT_CONFIG: &str = include_str!("config/default.yaml");

/// Parses a bootstrap from YAML (or JSON) text. `origin` names the source in
/// errors (a file name, `--config-yaml` or `built-in default`).
///
/// # Errors
/// [`ConfigError::Parse`] with the field path, line and column of the first
/// problem.
pub fn parse(text: &str, origin: &str) -> Result<BootstrapConfig, ConfigError> {
    serde_norway::from_str(text).map_err(|e| ConfigError::parse(origin, &e))
}
