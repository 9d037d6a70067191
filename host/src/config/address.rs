use serde::Deserialize;

/// Envoy's `Address`. Only `socket_address` is served; pipes and internal
/// addresses are named so that their error says so.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressConfig {
    pub socket_address: Option<SocketAddressConfig>,
    pub pipe: Option<serde_norway::Value>,
    pub envoy_internal_address: Option<serde_norway::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketAddressConfig {
    /// An IP literal, or for DNS clusters a host name.
    pub address: String,
    #[serde(default)]
    pub port_value: u16,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub ipv4_compat: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[serde(alias = "tcp")]
    Tcp,
    #[serde(alias = "udp")]
    Udp,
}
