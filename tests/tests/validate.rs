//! `wasp --mode validate`: every broken config is rejected with the path and
//! line of the culprit; v2 and v3 spellings of one config are both accepted.

use wasp_tests::validate;

const GOOD: &str = r#"static_resources:
  listeners:
  - name: l1
    address:
      socket_address: { address: 127.0.0.1, port_value: 10000 }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: c1
          idle_timeout: 10s
  clusters:
  - name: c1
    connect_timeout: 0.25s
    type: STRICT_DNS
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: c1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: { address: 127.0.0.1, port_value: 8080 }
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
"#;

/// `GOOD`'s filter, for tests that put another in its place.
const TCP_PROXY: &str = "      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: tcp\n          cluster: c1\n          idle_timeout: 10s\n";

/// Validates `config` and expects it to pass.
fn accepts(config: &str) -> std::process::Output {
    let out = validate(config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Validates `GOOD` with `from` replaced by `to` and expects an error that
/// names `path` and `line`.
fn rejects(from: &str, to: &str, path: &str, line: usize, message: &str) {
    assert!(GOOD.contains(from), "test bug: `{from}` not in config");
    let out = validate(&GOOD.replacen(from, to, 1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "accepted:\n{}",
        GOOD.replacen(from, to, 1)
    );
    assert!(stderr.contains(path), "no path `{path}` in: {stderr}");
    assert!(
        stderr.contains(&format!("line {line} ")),
        "no line {line} in: {stderr}"
    );
    assert!(stderr.contains(message), "no `{message}` in: {stderr}");
}

#[test]
fn the_good_config_validates() {
    let out = accepts(GOOD);
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn unknown_field_is_named_with_what_is_supported() {
    rejects(
        "          idle_timeout: 10s\n",
        "          idle_timeout: 10s\n          idel_timeout: 1s\n",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        14,
        "unknown field `idel_timeout`, expected one of `stat_prefix`",
    );
}

#[test]
fn wrong_type_is_rejected() {
    rejects(
        "stat_prefix: tcp",
        "stat_prefix: [tcp]",
        "typed_config.stat_prefix",
        11,
        "invalid type: sequence, expected a string",
    );
}

#[test]
fn unknown_cluster_is_rejected() {
    rejects(
        "cluster: c1",
        "cluster: c2",
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster",
        12,
        "unknown cluster `c2`",
    );
}

#[test]
fn bad_duration_is_rejected() {
    rejects(
        "connect_timeout: 0.25s",
        "connect_timeout: quarter",
        "static_resources.clusters[0].connect_timeout",
        16,
        "invalid duration `quarter`",
    );
}

#[test]
fn port_out_of_range_is_rejected() {
    rejects(
        "port_value: 8080",
        "port_value: 80800",
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value",
        25,
        "80800",
    );
}

#[test]
fn duplicate_listener_names_are_rejected() {
    let listener = &GOOD[GOOD.find("  - name: l1").unwrap()..GOOD.find("  clusters:").unwrap()];
    let second = listener.replace("10000", "10001");
    let config = GOOD.replacen("  clusters:", &format!("{second}  clusters:"), 1);
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("static_resources.listeners[1].name"),
        "{stderr}"
    );
    assert!(stderr.contains("duplicate listener name `l1`"), "{stderr}");
    assert!(stderr.contains("line 14 "), "{stderr}");
}

#[test]
fn duplicate_cluster_names_and_unknown_filters_are_rejected() {
    let cluster = &GOOD[GOOD.find("  - name: c1").unwrap()..GOOD.find("admin:").unwrap()];
    let config = GOOD.replacen("admin:", &format!("{cluster}admin:"), 1);
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("static_resources.clusters[1].name")
            && stderr.contains("duplicate cluster name `c1`"),
        "{stderr}"
    );

    rejects(
        "tcp_proxy.v3.TcpProxy",
        "tcp_proxy.v3.TcpProxi",
        "typed_config",
        10,
        "unsupported network filter `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxi`",
    );
}

#[test]
fn the_v2_and_v3_forms_of_one_config_are_both_accepted() {
    // The same proxy as GOOD, as a v2-era guide writes it: `config:`, the
    // short filter name, lowercase enums and `hosts:`.
    let v2 = r#"static_resources:
  listeners:
  - name: l1
    address:
      socket_address: { address: 127.0.0.1, port_value: 10000 }
    filter_chains:
    - filters:
      - name: envoy.tcp_proxy
        config:
          stat_prefix: tcp
          cluster: c1
          idle_timeout: 10s
  clusters:
  - name: c1
    connect_timeout: 0.25s
    type: strict_dns
    lb_policy: round_robin
    hosts:
    - socket_address: { address: 127.0.0.1, port_value: 8080 }
admin:
  access_log_path: /dev/null
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }
"#;
    for (form, config) in [("v2", v2), ("v3", GOOD)] {
        let out = validate(config);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And the TypedStruct wrapper.
    let typed_struct = GOOD.replacen(
        "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: tcp\n          cluster: c1\n          idle_timeout: 10s\n",
        "          \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n          type_url: type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          value:\n            stat_prefix: tcp\n            cluster: c1\n",
        1,
    );
    assert!(typed_struct.contains("TypedStruct"));
    let out = validate(&typed_struct);
    assert!(
        out.status.success(),
        "TypedStruct: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_binds_nothing() {
    // Port 9901 of GOOD stays free: validation does not bind.
    let out = validate(GOOD);
    assert!(out.status.success());
    let out = validate(&GOOD.replace("port_value: 10000", "port_value: 1"));
    assert!(
        out.status.success(),
        "a privileged port is only a problem when binding"
    );
}

#[test]
fn upstream_http_protocol_options_are_checked() {
    let options = |config: &str| {
        format!(
            "    lb_policy: ROUND_ROBIN\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n{config}"
        )
    };
    let at = "static_resources.clusters[0].typed_extension_protocol_options.envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &options(
            "        explicit_http_config: { http2_protocol_options: {} }\n        use_downstream_protocol_config: { http2_protocol_options: {} }\n",
        ),
        at,
        21,
        "exactly one of explicit_http_config",
    );
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &options("        explicit_http_config:\n          http3_protocol_options: {}\n"),
        &format!("{at}.explicit_http_config.http3_protocol_options"),
        23,
        "HTTP/3 upstreams are not supported",
    );
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &(options("        explicit_http_config: { http_protocol_options: {} }\n")
            + "    max_requests_per_connection: 5\n"),
        at,
        21,
        "cannot be used with the cluster's own",
    );
}

#[test]
fn http2_protocol_options_are_checked() {
    let with = |options: &str| {
        format!("    lb_policy: ROUND_ROBIN\n    http2_protocol_options: {{ {options} }}\n")
    };
    let at = "static_resources.clusters[0].http2_protocol_options";
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &with("allow_connect: true"),
        &format!("{at}.allow_connect"),
        19,
        "CONNECT to upstreams is not supported",
    );
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &with("initial_stream_window_size: 100"),
        &format!("{at}.initial_stream_window_size"),
        19,
        "must be between 65535 and 2147483647",
    );
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &with("max_concurrent_streams: 0"),
        &format!("{at}.max_concurrent_streams"),
        19,
        "must be at least 1",
    );
    // Not applied, so not accepted.
    rejects(
        "    lb_policy: ROUND_ROBIN\n",
        &with("max_outbound_frames: 10"),
        at,
        19,
        "unknown field `max_outbound_frames`",
    );
}

/// `upgrade_configs` in the connection manager and in a route: CONNECT
/// ended (`connect_config`) or forwarded is taken; per-upgrade filter
/// chains are refused where they are written.
#[test]
fn upgrade_configs_are_checked() {
    let tcp = TCP_PROXY;
    let hcm = |upgrades: &str, route: &str| {
        format!(
            "      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: h\n          http_filters: [{{ name: envoy.filters.http.router }}]\n          upgrade_configs:\n{upgrades}          route_config:\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: c1{route} }}\n"
        )
    };
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    // Accepted: websocket, on or off per route.
    let good = GOOD.replacen(
        tcp,
        &hcm(
            "          - upgrade_type: websocket\n",
            ", upgrade_configs: [{ upgrade_type: websocket, enabled: false }]",
        ),
        1,
    );
    accepts(&good);
    // CONNECT: enabled on the manager, ended by a route with connect_config.
    let connect = GOOD.replacen(
        tcp,
        &hcm(
            "          - upgrade_type: CONNECT\n",
            ", upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }]",
        ),
        1,
    );
    accepts(&connect);
    rejects(
        tcp,
        &hcm(
            "          - upgrade_type: websocket\n            filters: [{ name: envoy.filters.http.router }]\n",
            "",
        ),
        &format!("{at}.upgrade_configs[0].filters"),
        15,
        "filter chains of their own for upgrades are not supported",
    );
    // A route without connect_config forwards the CONNECT to its cluster.
    accepts(&GOOD.replacen(
        tcp,
        &hcm(
            "          - upgrade_type: websocket\n",
            ", upgrade_configs: [{ upgrade_type: CONNECT }]",
        ),
        1,
    ));
}

/// Retry policies: Envoy's conditions, back-off and host predicates are
/// taken; a condition or predicate wasp does not know is named with its
/// place.
#[test]
fn retry_policies_are_checked() {
    let tcp = TCP_PROXY;
    let hcm = |policy: &str| {
        format!(
            "      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: h\n          http_filters: [{{ name: envoy.filters.http.router }}]\n          route_config:\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route:\n                  cluster: c1\n                  retry_policy:\n{policy}"
        )
    };
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.retry_policy";
    // Istio's default policy, with a back-off and previous_hosts.
    let good = GOOD.replacen(
        tcp,
        &hcm("                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes\n                    num_retries: 2\n                    retry_back_off: { base_interval: 0.05s }\n                    retry_host_predicate: [{ name: envoy.retry_host_predicates.previous_hosts }]\n                    host_selection_retry_max_attempts: 5\n"),
        1,
    );
    accepts(&good);
    rejects(
        tcp,
        &hcm("                    retry_on: 5xx,sometimes\n"),
        &format!("{at}.retry_on"),
        22,
        "unknown retry_on `sometimes`",
    );
    rejects(
        tcp,
        &hcm(
            "                    retry_on: 5xx\n                    retry_back_off: { base_interval: 1s, max_interval: 0.5s }\n",
        ),
        &format!("{at}.retry_back_off.max_interval"),
        23,
        "must not be less than base_interval",
    );
    rejects(
        tcp,
        &hcm(
            "                    retry_on: 5xx\n                    retry_host_predicate: [{ name: envoy.retry_host_predicates.omit_host_metadata }]\n",
        ),
        &format!("{at}.retry_host_predicate"),
        23,
        "unsupported retry host predicate",
    );
}

/// Per-route filter switches are read as Envoy reads them: a
/// `FilterConfig` with neither `disabled` nor `config` is an error, as is
/// a filter's own per-route config (wasp's filters take none) and a
/// disabled router; each is named with its place.
#[test]
fn per_route_filter_configs_are_checked() {
    let tcp = TCP_PROXY;
    let fc = "\"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig";
    let hcm = |router: &str, per_filter: &str| {
        format!(
            "      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: h\n          http_filters:\n          - name: envoy.filters.http.router\n{router}          route_config:\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: c1 }}\n                typed_per_filter_config:\n{per_filter}"
        )
    };
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    let routes = format!("{at}.route_config.virtual_hosts[0].routes[0].typed_per_filter_config");
    let good = GOOD.replacen(
        tcp,
        &hcm(
            "",
            &format!("                  off: {{ {fc}, disabled: true }}\n                  on: {{ {fc}, config: {{}} }}\n"),
        ),
        1,
    );
    accepts(&good);
    rejects(
        tcp,
        &hcm("", &format!("                  empty: {{ {fc} }}\n")),
        &format!("{routes}.empty"),
        22,
        "empty per-filter configuration for filter `empty`",
    );
    rejects(
        tcp,
        &hcm(
            "",
            "                  own: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy, allow_credentials: true }\n",
        ),
        &format!("{routes}.own"),
        22,
        "per-route config `envoy.extensions.filters.http.cors.v3.CorsPolicy` is not supported",
    );
    rejects(
        tcp,
        &hcm(
            "            disabled: true\n",
            &format!("                  off: {{ {fc}, disabled: true }}\n"),
        ),
        &format!("{at}.http_filters[0].disabled"),
        14,
        "the router, the last HTTP filter, cannot be disabled",
    );
}

/// `tracing`: the sampling options are taken; a provider (wasp sends no
/// spans) and a percentage over 100 are refused where they are written.
#[test]
fn tracing_is_checked() {
    let hcm = |tracing: &str| {
        format!(
            "      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: h\n          http_filters: [{{ name: envoy.filters.http.router }}]\n          tracing: {tracing}\n          route_config:\n            virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ cluster: c1 }}\n"
        )
    };
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.tracing";
    accepts(&GOOD.replacen(
        TCP_PROXY,
        &hcm("{ random_sampling: { value: 10 }, verbose: true, custom_tags: [] }"),
        1,
    ));
    rejects(
        TCP_PROXY,
        &hcm("{ provider: { name: envoy.tracers.zipkin } }"),
        &format!("{at}.provider"),
        13,
        "tracing providers are not supported",
    );
    rejects(
        TCP_PROXY,
        &hcm("{ overall_sampling: { value: 120 } }"),
        &format!("{at}.overall_sampling.value"),
        13,
        "a percentage from 0 to 100",
    );
}
