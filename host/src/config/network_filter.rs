use serde::Deserialize;
use serde::de::Deserializer;

use super::extension::{Empty, Extensions, unsupported};
use super::{
    DataSourceConfig, Duration, HttpConnectionManagerConfig, RedisProxyConfig, TcpProxyConfig,
    WasmFilterConfig,
};

/// The network filters wasp has, by config.
#[derive(Debug, Clone)]
pub enum NetworkFilterConfig {
    TcpProxy(TcpProxyConfig),
    Echo,
    DirectResponse(DirectResponseConfig),
    ConnectionLimit(ConnectionLimitConfig),
    RedisProxy(Box<RedisProxyConfig>),
    HttpConnectionManager(Box<HttpConnectionManagerConfig>),
    Wasm(Box<WasmFilterConfig>),
}

/// `envoy.filters.network.connection_limit`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimitConfig {
    pub stat_prefix: String,
    pub max_connections: u64,
    pub delay: Option<Duration>,
}

/// `envoy.filters.network.direct_response`: writes a fixed response, then
/// closes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    pub response: Option<DataSourceConfig>,
}

const TYPES: &[(&str, &str)] = &[
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "tcp_proxy",
    ),
    (
        "envoy.config.filter.network.tcp_proxy.v2.TcpProxy",
        "tcp_proxy",
    ),
    ("envoy.extensions.filters.network.echo.v3.Echo", "echo"),
    ("envoy.config.filter.network.echo.v2.Echo", "echo"),
    (
        "envoy.extensions.filters.network.direct_response.v3.Config",
        "direct_response",
    ),
    (
        "envoy.config.filter.network.direct_response.v2.Config",
        "direct_response",
    ),
    (
        "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
        "connection_limit",
    ),
    (
        "envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
        "redis_proxy",
    ),
    (
        "envoy.config.filter.network.redis_proxy.v2.RedisProxy",
        "redis_proxy",
    ),
    (
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "http_connection_manager",
    ),
    (
        "envoy.config.filter.network.http_connection_manager.v2.HttpConnectionManager",
        "http_connection_manager",
    ),
    ("envoy.extensions.filters.network.wasm.v3.Wasm", "wasm"),
];

const NAMES: &[(&str, &str)] = &[
    ("envoy.filters.network.tcp_proxy", "tcp_proxy"),
    ("envoy.tcp_proxy", "tcp_proxy"),
    ("envoy.filters.network.echo", "echo"),
    ("envoy.echo", "echo"),
    ("envoy.filters.network.direct_response", "direct_response"),
    ("envoy.filters.network.connection_limit", "connection_limit"),
    ("envoy.filters.network.redis_proxy", "redis_proxy"),
    ("envoy.redis_proxy", "redis_proxy"),
    (
        "envoy.filters.network.http_connection_manager",
        "http_connection_manager",
    ),
    ("envoy.http_connection_manager", "http_connection_manager"),
    ("envoy.filters.network.wasm", "wasm"),
];

impl NetworkFilterConfig {
    fn read<'de, D: Deserializer<'de>>(kind: &str, d: D) -> Result<Self, D::Error> {
        Ok(match kind {
            "tcp_proxy" => NetworkFilterConfig::TcpProxy(TcpProxyConfig::deserialize(d)?),
            "echo" => {
                Empty::deserialize(d)?;
                NetworkFilterConfig::Echo
            }
            "http_connection_manager" => NetworkFilterConfig::HttpConnectionManager(Box::new(
                HttpConnectionManagerConfig::deserialize(d)?,
            )),
            "redis_proxy" => {
                NetworkFilterConfig::RedisProxy(Box::new(RedisProxyConfig::deserialize(d)?))
            }
            "wasm" => NetworkFilterConfig::Wasm(Box::new(WasmFilterConfig::deserialize(d)?)),
            "connection_limit" => {
                NetworkFilterConfig::ConnectionLimit(ConnectionLimitConfig::deserialize(d)?)
            }
            _ => NetworkFilterConfig::DirectResponse(DirectResponseConfig::deserialize(d)?),
        })
    }

    /// Whether the filter ends the chain (owns the connection's data).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            NetworkFilterConfig::TcpProxy(_)
                | NetworkFilterConfig::RedisProxy(_)
                | NetworkFilterConfig::HttpConnectionManager(_)
                | NetworkFilterConfig::Echo
                | NetworkFilterConfig::DirectResponse(_)
        )
    }
}

fn lookup<'a>(table: &'a [(&str, &'a str)], key: &str) -> Option<&'a str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn keys(table: &[(&'static str, &str)]) -> Vec<&'static str> {
    table.iter().map(|(k, _)| *k).collect()
}

impl Extensions for NetworkFilterConfig {
    const KIND: &'static str = "network filter";

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        match lookup(TYPES, type_name) {
            Some(kind) => Self::read(kind, d),
            None => Err(unsupported(Self::KIND, type_name, &keys(TYPES))),
        }
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        match lookup(NAMES, name) {
            Some(kind) => Self::read(kind, d),
            None => Err(unsupported(Self::KIND, name, &keys(NAMES))),
        }
    }
}
