use serde::Deserialize;

use super::{AccessLogConfig, AddressConfig, ClusterConfig, Extension, ListenerConfig};

/// Envoy's v3 `Bootstrap`, the subset wasp serves.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub static_resources: StaticResourcesConfig,
    pub admin: Option<AdminConfig>,
}

/// Who this proxy is; read by filters through `node.*` properties.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: Option<String>,
    pub cluster: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub locality: Option<super::LocalityConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StaticResourcesConfig {
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
}

/// The admin interface: its own listener, never on a worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: AddressConfig,
    /// v2's admin access log path.
    pub access_log_path: Option<String>,
    #[serde(default)]
    pub access_log: Vec<Extension<AccessLogConfig>>,
    pub profile_path: Option<String>,
}
