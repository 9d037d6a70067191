//! Envoy YAML snippets for tests.

use std::net::SocketAddr;

/// A v3 STATIC cluster with weighted endpoints.
pub fn cluster(
    name: &str,
    lb_policy: &str,
    endpoints: &[(SocketAddr, u32)],
    extra: &str,
) -> String {
    let mut s = format!(
        "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    lb_policy: {lb_policy}\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n"
    );
    for (addr, weight) in endpoints {
        s.push_str(&format!(
            "        - endpoint:\n            address:\n              socket_address: {{ address: {}, port_value: {} }}\n          load_balancing_weight: {weight}\n",
            addr.ip(),
            addr.port()
        ));
    }
    s
}

/// A bootstrap with one tcp_proxy listener on `port` in front of `cluster`
/// and the given clusters; admin on an ephemeral port.
pub fn tcp_proxy(port: u16, tcp_proxy_extra: &str, listener_extra: &str, clusters: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: proxy
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
{listener_extra}    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
{tcp_proxy_extra}  clusters:
{clusters}admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
"#
    )
}

/// A bootstrap with one redis_proxy listener on `port`. `proxy_extra` goes
/// into the filter config (prefix_routes, auth), `settings_extra` into its
/// `settings`.
pub fn redis_proxy(port: u16, settings_extra: &str, proxy_extra: &str, clusters: &str) -> String {
    let op_timeout = if settings_extra.contains("op_timeout") {
        ""
    } else {
        "            op_timeout: 1s\n"
    };
    format!(
        r#"static_resources:
  listeners:
  - name: redis
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: redis
          settings:
{op_timeout}            enable_hashtagging: true
{settings_extra}{proxy_extra}  clusters:
{clusters}admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
"#
    )
}

/// `prefix_routes` with only a catch-all to `cluster`.
pub fn catch_all(cluster: &str) -> String {
    format!(
        "          prefix_routes:\n            catch_all_route:\n              cluster: {cluster}\n"
    )
}
