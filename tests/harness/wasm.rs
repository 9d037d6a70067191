//! The first-party filters (built from `filters/` for wasm32-wasip1 on
//! first use) and configs that load them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `.wasm` of filter crate `name` (e.g. `probe`), built if needed.
pub fn filter(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let manifest = root.join("filters").join("Cargo.toml");
        // Always run cargo: it is a no-op when nothing changed, and a stale
        // filter would test old code.
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(&manifest)
            .output()
            .expect("run cargo for filters/");
        assert!(
            out.status.success(),
            "building filters/ failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("filters/target/wasm32-wasip1/release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "no filter {}", path.display());
    path
}

/// An `envoy.filters.http.wasm` entry for `http_filters`.
pub fn http_filter(name: &str, code: &str, configuration: &str, extra: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}_root
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{configuration}'
                vm_config:
                  vm_id: {name}_vm
                  runtime: envoy.wasm.runtime.v8
                  code:
                    local:
                      filename: {code}
{extra}"#
    )
}

/// A listener on `port` with an http_connection_manager whose
/// `http_filters` are `filters` then the router, routing everything to
/// cluster `backend`; `clusters` is the cluster list.
pub fn http_config(port: u16, filters: &str, clusters: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: web
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend, timeout: 5s}}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#
    )
}

/// A static cluster of one endpoint.
pub fn cluster(name: &str, addr: std::net::SocketAddr) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
"#,
        addr.ip(),
        addr.port()
    )
}

/// An `envoy.filters.network.wasm` entry for a filter chain.
pub fn network_filter(name: &str, code: &str, configuration: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: {name}
            root_id: {name}_root
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{configuration}'
            vm_config:
              vm_id: {name}_vm
              runtime: envoy.wasm.runtime.v8
              code:
                local:
                  filename: {code}
"#
    )
}

/// A listener on `port` whose chain is `filters` then `terminal` (a filter
/// entry), with `clusters`.
pub fn network_config(port: u16, filters: &str, terminal: &str, clusters: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
{filters}{terminal}  clusters:
{clusters}admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
"#
    )
}

/// A `tcp_proxy` filter entry (the terminal of a network chain) to
/// `cluster`.
pub fn tcp_proxy(cluster: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: {cluster}
"#
    )
}
