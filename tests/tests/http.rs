//! http_connection_manager and router end to end: real hyper backends
//! (HTTP/1.1 and h2c), curl as the client.

use std::net::SocketAddr;

use wasp_tests::http_backend::{CurlResponse, HttpBackend, curl};
use wasp_tests::{Proxy, free_port};

/// The classic v2 front-proxy example: `envoy.http_connection_manager` with
/// `config:`, two strict_dns clusters with `hosts:` and
/// `http2_protocol_options: {}`. Only addresses differ from the published
/// file (no `service1`/`service2` host names here).
fn front_proxy(port: u16, s1: SocketAddr, s2: SocketAddr) -> String {
    format!(
        r#"static_resources:
  listeners:
  - address:
      socket_address:
        address: 127.0.0.1
        port_value: {port}
    filter_chains:
    - filters:
      - name: envoy.http_connection_manager
        config:
          codec_type: auto
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: backend
              domains:
              - "*"
              routes:
              - match:
                  prefix: "/service/1"
                route:
                  cluster: service1
              - match:
                  prefix: "/service/2"
                route:
                  cluster: service2
          http_filters:
          - name: envoy.router
            config: {{}}
  clusters:
  - name: service1
    connect_timeout: 0.25s
    type: strict_dns
    lb_policy: round_robin
    http2_protocol_options: {{}}
    hosts:
    - socket_address:
        address: 127.0.0.1
        port_value: {}
  - name: service2
    connect_timeout: 0.25s
    type: strict_dns
    lb_policy: round_robin
    http2_protocol_options: {{}}
    hosts:
    - socket_address:
        address: 127.0.0.1
        port_value: {}
admin:
  access_log_path: "/dev/null"
  address:
    socket_address:
      address: 127.0.0.1
      port_value: 0
"#,
        s1.port(),
        s2.port()
    )
}

#[test]
fn the_v2_front_proxy_example_routes_each_service() {
    let (s1, s2) = (
        HttpBackend::start("service1"),
        HttpBackend::start("service2"),
    );
    let port = free_port();
    let wasp = Proxy::start(&front_proxy(port, s1.addr, s2.addr), &[]);
    for (path, name) in [("/service/1", "service1"), ("/service/2", "service2")] {
        let url = format!("http://127.0.0.1:{port}{path}");
        // HTTP/1.1 and h2c downstream; HTTP/2 upstream (http2_protocol_options).
        for extra in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
            let mut args = extra.to_vec();
            args.push(&url);
            let r = curl(&args);
            assert_eq!(r.status, 200, "{r:?}");
            let seen = r.json();
            assert_eq!(seen["name"], name);
            assert_eq!(seen["path"], path);
            assert_eq!(seen["version"], "HTTP/2.0", "upstream speaks HTTP/2");
            // The client's authority goes upstream as `:authority`, as in
            // Envoy, not the endpoint's address.
            assert_eq!(seen["authority"], format!("127.0.0.1:{port}"));
            assert!(seen["headers"].get("host").is_none());
            assert_eq!(r.header("x-backend"), Some(name));
            assert!(r.header("x-envoy-upstream-service-time").is_some());
            // The router adds what Envoy adds.
            assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
            assert_eq!(
                seen["headers"]["x-request-id"].as_str().map(str::len),
                Some(36)
            );
        }
    }
    let r = curl(&["--http1.1", &format!("http://127.0.0.1:{port}/elsewhere")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.version, "HTTP/1.1");
    assert_eq!(wasp.stat("http.ingress_http.downstream_rq_2xx"), 4);
    assert_eq!(wasp.stat("http.ingress_http.downstream_rq_4xx"), 1);
    assert_eq!(wasp.stat("http.ingress_http.no_route"), 1);
    assert_eq!(wasp.stat("cluster.service1.upstream_rq_total"), 2);
}

/// `kind` (wasp or Envoy) on `config`, with one worker.
fn one_worker(kind: wasp_tests::Kind, config: &str) -> Proxy {
    Proxy::launch(kind, config, &["--concurrency", "1"])
}

fn hcm(port: u16, virtual_hosts: &str, hcm_extra: &str, clusters: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: http
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {port} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: edge
{hcm_extra}          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: routes
            virtual_hosts:
{virtual_hosts}  clusters:
{clusters}admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
"#
    )
}

#[test]
fn matches_and_actions() {
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    let dead: SocketAddr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let clusters = wasp_tests::config::cluster("a", "ROUND_ROBIN", &[(a.addr, 1)], "")
        + &wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(b.addr, 1)], "")
        + &wasp_tests::config::cluster("dead", "ROUND_ROBIN", &[(dead, 1)], "");
    let vhosts = r#"            - name: api
              domains: ["api.example.com", "api.example.com:*"]
              response_headers_to_add:
              - header: { key: x-vhost, value: api }
              routes:
              - match: { path: "/exact" }
                route: { cluster: b }
              - match:
                  prefix: "/"
                  headers:
                  - name: x-canary
                    exact_match: "yes"
                route: { cluster: b }
              - match: { safe_regex: { regex: "/users/[0-9]+" } }
                route: { cluster: b, prefix_rewrite: "/ignored" }
              - match: { prefix: "/v1/" }
                route: { cluster: a, prefix_rewrite: "/v2/", host_rewrite_literal: rewritten.internal }
                request_headers_to_add:
                - header: { key: x-added, value: "1" }
                request_headers_to_remove: [x-secret]
                response_headers_to_remove: [x-backend]
              - match: { prefix: "/slow" }
                route: { cluster: a, timeout: 0.3s }
              - match: { prefix: "/down" }
                route: { cluster: dead }
              - match: { prefix: "/gone" }
                redirect: { host_redirect: new.example.com, response_code: FOUND }
              - match: { prefix: "/" }
                direct_response: { status: 418, body: { inline_string: "teapot" } }
            - name: wildcard
              domains: ["*.example.com"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: fallback
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "fallback" } }
"#;
    let port = free_port();
    let wasp = Proxy::start(
        &hcm(
            port,
            vhosts,
            "          use_remote_address: true\n",
            &clusters,
        ),
        &[],
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let host = |h: &str| format!("Host: {h}");

    let r = curl(&["-H", &host("api.example.com"), &url("/exact")]);
    assert_eq!(r.json()["name"], "b");
    assert_eq!(r.header("x-vhost"), Some("api"));
    let r = curl(&["-H", &host("api.example.com:8443"), &url("/exact?q=1")]);
    assert_eq!(r.json()["name"], "b", "domain with port");
    assert_eq!(r.json()["path"], "/exact?q=1");
    let r = curl(&[
        "-H",
        &host("api.example.com"),
        "-H",
        "x-canary: yes",
        &url("/anything"),
    ]);
    assert_eq!(r.json()["name"], "b", "header match");
    let r = curl(&["-H", &host("api.example.com"), &url("/users/42")]);
    assert_eq!(r.json()["path"], "/users/42", "regex routes keep the path");

    let r = curl(&[
        "-H",
        &host("api.example.com"),
        "-H",
        "x-secret: s",
        "-H",
        "x-forwarded-for: 10.1.1.1",
        &url("/v1/items?x=1"),
    ]);
    let seen = r.json();
    assert_eq!(seen["name"], "a");
    assert_eq!(seen["path"], "/v2/items?x=1");
    assert_eq!(seen["headers"]["host"], "rewritten.internal");
    assert_eq!(seen["headers"]["x-added"], "1");
    assert!(seen["headers"].get("x-secret").is_none());
    assert_eq!(seen["headers"]["x-forwarded-for"], "10.1.1.1,127.0.0.1");
    assert_eq!(r.header("x-backend"), None, "removed from the response");

    let r = curl(&["-H", &host("api.example.com"), &url("/slow?delay_ms=2000")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (504, "upstream request timeout")
    );
    let r = curl(&["-H", &host("api.example.com"), &url("/down")]);
    assert_eq!(r.status, 503);
    assert!(
        r.body
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        r.body
    );
    let r = curl(&["-H", &host("api.example.com"), &url("/gone/x?y=1")]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("http://new.example.com/gone/x?y=1")
    );
    let r = curl(&["-H", &host("api.example.com"), &url("/other")]);
    assert_eq!((r.status, r.body.as_str()), (418, "teapot"));

    let r = curl(&["-H", &host("www.example.com"), &url("/")]);
    assert_eq!(r.json()["name"], "a", "*.example.com");
    let r = curl(&["-H", &host("unknown.org"), &url("/")]);
    assert_eq!((r.status, r.body.as_str()), (200, "fallback"));
    assert_eq!(wasp.stat("http.edge.downstream_rq_5xx"), 2);
    assert_eq!(wasp.stat("cluster.a.upstream_rq_timeout"), 1);
}

#[test]
fn a_cluster_without_healthy_endpoints_answers_503() {
    let port = free_port();
    let vhosts = &catch_all("cluster: empty");
    let clusters = "  - name: empty\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: { cluster_name: empty }\n";
    let envoy_port = free_port();
    let _wasp = Proxy::start(&hcm(port, vhosts, "", clusters), &[]);
    let _envoy = Proxy::envoy(&hcm(envoy_port, vhosts, "", clusters), &[]);
    for port in [port, envoy_port] {
        let r = curl(&[&format!("http://127.0.0.1:{port}/")]);
        assert_eq!((r.status, r.body.as_str()), (503, "no healthy upstream"));
        // A local reply: no upstream, so no upstream service time.
        assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{port}");
    }
}

/// The front proxy in v3 form (Envoy 1.40 no longer reads `config:` and
/// `hosts:`), for the comparison with Envoy.
fn front_proxy_v3(port: u16, s1: SocketAddr, s2: SocketAddr) -> String {
    let vhosts = "            - name: backend\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/service/1\" }\n                route: { cluster: service1 }\n              - match: { prefix: \"/service/2\" }\n                route: { cluster: service2 }\n";
    let h2 = &protocol_options("explicit_http_config: { http2_protocol_options: {} }");
    let clusters = wasp_tests::config::cluster("service1", "ROUND_ROBIN", &[(s1, 1)], h2)
        + &wasp_tests::config::cluster("service2", "ROUND_ROBIN", &[(s2, 1)], h2);
    hcm(port, vhosts, "", &clusters)
}

/// The front-proxy config through Envoy and through wasp: same statuses,
/// same backend answers, same bodies for the local replies.
#[test]
fn front_proxy_answers_match_envoy() {
    let (s1, s2) = (
        HttpBackend::start("service1"),
        HttpBackend::start("service2"),
    );
    let (wp, ep) = (free_port(), free_port());
    let _wasp = Proxy::start(&front_proxy_v3(wp, s1.addr, s2.addr), &[]);
    let _envoy = Proxy::envoy(&front_proxy_v3(ep, s1.addr, s2.addr), &[]);
    for path in ["/service/1", "/service/2/x?y=z", "/nowhere"] {
        for h2 in [false, true] {
            let ask = |port: u16| {
                let url = format!("http://127.0.0.1:{port}{path}");
                let flag = if h2 {
                    "--http2-prior-knowledge"
                } else {
                    "--http1.1"
                };
                curl(&[flag, &url])
            };
            let (w, e) = (ask(wp), ask(ep));
            assert_eq!(
                (w.status, &w.version),
                (e.status, &e.version),
                "{path} h2={h2}"
            );
            let timed = |r: &CurlResponse| r.header("x-envoy-upstream-service-time").is_some();
            assert_eq!(timed(&w), timed(&e), "{path} h2={h2}");
            if w.status == 200 {
                let (wj, ej) = (w.json(), e.json());
                for k in ["name", "path", "method", "version"] {
                    assert_eq!(wj[k], ej[k], "{path} {k}");
                }
                assert_eq!(
                    wj["headers"]["x-forwarded-proto"], ej["headers"]["x-forwarded-proto"],
                    "{path}"
                );
            } else {
                assert_eq!(w.body, e.body, "{path}");
            }
        }
    }
}

#[test]
fn slow_and_oversized_request_headers_are_refused() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let port = free_port();
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                direct_response: { status: 200, body: { inline_string: ok } }\n";
    let extra = "          request_headers_timeout: 0.5s\n          max_request_headers_kb: 8\n";
    let _wasp = Proxy::start(&hcm(port, vhosts, extra, ""), &[]);

    // Slowloris: headers that never finish are cut off.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // Headers over max_request_headers_kb get 431.
    let big = "a".repeat(16 * 1024);
    let r = curl(&[
        "-H",
        &format!("x-big: {big}"),
        &format!("http://127.0.0.1:{port}/"),
    ]);
    assert_eq!(r.status, 431);
    // A normal request still works.
    let r = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
}

#[test]
fn retries_weighted_clusters_and_hash_policies() {
    let backends: Vec<_> = ["h0", "h1", "h2"]
        .into_iter()
        .map(HttpBackend::start)
        .collect();
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (a, b) = (HttpBackend::start("a"), HttpBackend::start("b"));
    use wasp_tests::config::cluster;
    let clusters = cluster(
        "flaky",
        "ROUND_ROBIN",
        &[(dead, 1), (backends[0].addr, 1)],
        "",
    ) + &cluster(
        "ring",
        "RING_HASH",
        &backends.iter().map(|b| (b.addr, 1)).collect::<Vec<_>>(),
        "",
    ) + &cluster("a", "ROUND_ROBIN", &[(a.addr, 1)], "")
        + &cluster("b", "ROUND_ROBIN", &[(b.addr, 1)], "");
    let vhosts = r#"            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/retry" }
                route:
                  cluster: flaky
                  retry_policy: { retry_on: "connect-failure,5xx", num_retries: 2 }
              - match: { prefix: "/status" }
                route:
                  cluster: ring
                  retry_policy: { retry_on: "retriable-status-codes", retriable_status_codes: [409], num_retries: 2 }
              - match: { prefix: "/sticky" }
                route:
                  cluster: ring
                  hash_policy:
                  - header: { header_name: x-user }
              - match: { prefix: "/split" }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: a, weight: 1 }
                    - { name: b, weight: 3 }
"#;
    let port = free_port();
    let wasp = Proxy::start(&hcm(port, vhosts, "", &clusters), &["--concurrency", "1"]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");

    // Half the picks hit the dead endpoint; the retry moves to the live one.
    for _ in 0..10 {
        let r = curl(&[&url("/retry")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["name"], "h0");
    }
    assert!(wasp.stat("cluster.flaky.upstream_rq_retry") >= 4);
    // POST bodies are replayed on retry.
    let r = curl(&["-d", "payload-123", &url("/retry")]);
    assert_eq!(r.json()["body_len"], 11);

    // A retriable status is retried, and the last answer is returned.
    let before = wasp.stat("cluster.ring.upstream_rq_retry");
    let r = curl(&[&url("/status?status=409")]);
    assert_eq!(r.status, 409);
    assert_eq!(wasp.stat("cluster.ring.upstream_rq_retry") - before, 2);

    // The same x-user always lands on the same backend; users spread.
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let first =
            curl(&["-H", &format!("x-user: u{user}"), &url("/sticky")]).json()["name"].clone();
        for _ in 0..2 {
            let again =
                curl(&["-H", &format!("x-user: u{user}"), &url("/sticky")]).json()["name"].clone();
            assert_eq!(again, first, "user u{user} moved");
        }
        seen.insert(first.to_string());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    // weighted_clusters 1:3.
    let hits_a = (0..200)
        .filter(|_| curl(&[&url("/split")]).json()["name"] == "a")
        .count();
    assert!((25..=75).contains(&hits_a), "{hits_a} of 200 to a");
}

#[test]
fn request_timeout_answers_408() {
    let (_slow, _wasp, port) =
        one_backend("slow", ", timeout: 0s", "          request_timeout: 0.3s\n");
    let started = std::time::Instant::now();
    let r = curl(&[&format!("http://127.0.0.1:{port}/?delay_ms=3000")]);
    assert_eq!((r.status, r.body.as_str()), (408, "stream timeout"));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn access_log_in_envoys_default_format() {
    let backend = HttpBackend::start("logged");
    let dir = wasp_tests::temp_dir("http-log");
    let log = dir.join("access.log");
    // `/down` goes to a port nothing listens on; `/nowhere` has no route.
    let vhosts = &"            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/down\" }\n                route: { cluster: down }\n              - match: { prefix: \"/a\" }\n                route: { cluster: logged }\n".to_string();
    let extra = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n",
        log.display()
    );
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let clusters = wasp_tests::config::cluster("logged", "ROUND_ROBIN", &[(backend.addr, 1)], "")
        + &wasp_tests::config::cluster("down", "ROUND_ROBIN", &[(dead, 1)], "");
    let port = free_port();
    let _wasp = Proxy::start(&hcm(port, vhosts, &extra, &clusters), &[]);
    let r = curl(&[
        "-A",
        "test-agent/1",
        "-H",
        "x-request-id: rid-1",
        &format!("http://127.0.0.1:{port}/a/b?c=d"),
    ]);
    assert_eq!(r.status, 200);
    let line = wasp_tests::eventually(
        std::time::Duration::from_secs(5),
        "the access log line",
        || std::fs::read_to_string(&log).ok().filter(|s| !s.is_empty()),
    );
    let expected_tail = format!(
        "\"GET /a/b?c=d HTTP/1.1\" 200 - 0 {} ",
        r.header("content-length").unwrap()
    );
    assert!(line.contains(&expected_tail), "{line}");
    assert!(
        line.ends_with(&format!(
            "\"-\" \"test-agent/1\" \"rid-1\" \"127.0.0.1:{port}\" \"{}\"\n",
            backend.addr
        )),
        "{line}"
    );
    // Local answers carry Envoy's response flags: UF for a connection
    // refused, NR for no route.
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/down")]).status,
        503
    );
    assert_eq!(
        curl(&[&format!("http://127.0.0.1:{port}/nowhere")]).status,
        404
    );
    let lines = wasp_tests::eventually(
        std::time::Duration::from_secs(5),
        "three access log lines",
        || {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|s| s.lines().count() == 3)
        },
    );
    let lines: Vec<&str> = lines.lines().collect();
    assert!(lines[0].contains("\" 200 - "), "{}", lines[0]);
    assert!(lines[1].contains("\" 503 UF "), "{}", lines[1]);
    assert!(lines[2].contains("\" 404 NR "), "{}", lines[2]);
}

/// 100 MiB each way through the proxy, streamed, checked byte for byte:
/// uploaded to an echoing backend, and generated by the backend.
#[test]
fn hundred_mib_bodies_stream_byte_exact() {
    use std::io::{Read, Write};
    const SIZE: u64 = 100 * 1024 * 1024;
    let (_backend, wasp, port) = one_backend("big", ", timeout: 120s", "");
    let dir = wasp_tests::temp_dir("big-bodies");
    let check = |path: &std::path::Path| {
        let mut f = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for (k, b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    *b,
                    wasp_tests::http_backend::pattern(at + k as u64),
                    "byte {}",
                    at + k as u64
                );
            }
            at += n as u64;
        }
        assert_eq!(at, SIZE);
    };
    // Download.
    let down = dir.join("down.bin");
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "--max-time", "120", "-o"])
        .arg(&down)
        .arg(format!("http://127.0.0.1:{port}/bytes?size={SIZE}"))
        .status()
        .unwrap();
    assert!(out.success());
    check(&down);
    // Upload, echoed back.
    let up = dir.join("up.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&up).unwrap());
        let mut chunk = vec![0u8; 1 << 20];
        for block in 0..(SIZE >> 20) {
            for (k, b) in chunk.iter_mut().enumerate() {
                *b = wasp_tests::http_backend::pattern((block << 20) + k as u64);
            }
            f.write_all(&chunk).unwrap();
        }
    }
    let echoed = dir.join("echoed.bin");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "120",
            "-H",
            "Expect:",
            "--data-binary",
        ])
        .arg(format!("@{}", up.display()))
        .arg("-o")
        .arg(&echoed)
        .arg(format!("http://127.0.0.1:{port}/echo"))
        .status()
        .unwrap();
    assert!(out.success());
    check(&echoed);
    // Streaming, not buffering: wasp's memory stays far below a body.
    assert!(
        wasp.rss_kib() < 64 * 1024,
        "wasp RSS {} KiB",
        wasp.rss_kib()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn query_parameter_matches_regex_rewrite_and_auto_host_rewrite() {
    let backend = HttpBackend::start("q");
    let port = free_port();
    let vhosts = r#"            - name: all
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                  query_parameters:
                  - name: debug
                    string_match: { exact: "1" }
                direct_response: { status: 200, body: { inline_string: "debug" } }
              - match:
                  prefix: "/"
                  query_parameters:
                  - name: mode
                    string_match: { prefix: "Fast", ignore_case: true }
                direct_response: { status: 200, body: { inline_string: "fast" } }
              - match: { prefix: "/items/" }
                route:
                  cluster: named
                  regex_rewrite:
                    pattern: { regex: "^/items/([0-9]+)$" }
                    substitution: "/v2/item/\\1"
              - match: { prefix: "/" }
                route: { cluster: named, auto_host_rewrite: true }
"#;
    let cluster = format!(
        "  - name: named\n    type: STRICT_DNS\n    connect_timeout: 1s\n    dns_lookup_family: V4_ONLY\n    load_assignment:\n      cluster_name: named\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: localhost, port_value: {} }}\n",
        backend.addr.port()
    );
    let _wasp = Proxy::start(&hcm(port, vhosts, "", &cluster), &[]);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    assert_eq!(curl(&[&url("/x?a=2&debug=1")]).body, "debug");
    assert_eq!(curl(&[&url("/x?mode=FASTER")]).body, "fast", "ignore_case");
    assert_ne!(curl(&[&url("/x?mode=slow")]).body, "fast");
    let r = curl(&[&url("/items/42?full=yes")]);
    assert_eq!(r.json()["path"], "/v2/item/42?full=yes");
    let r = curl(&[&url("/other?debug=0")]);
    assert_eq!(
        r.json()["headers"]["host"],
        "localhost",
        "auto_host_rewrite uses the DNS name"
    );
}

/// On SIGTERM, idle keep-alive connections are closed instead of holding
/// the drain open for --drain-time-s.
#[test]
fn draining_closes_idle_keep_alive_connections() {
    use std::io::{Read, Write};
    let port = free_port();
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                direct_response: { status: 200, body: { inline_string: ok } }\n";
    let mut wasp = Proxy::start(&hcm(port, vhosts, "", ""), &["--drain-time-s", "60"]);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    wasp.terminate();
    let exit = wasp.wait_exit(std::time::Duration::from_secs(10));
    assert!(exit.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The client sees the close.
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
}

/// A loopback listener whose accept queue is full (backlog 0, one
/// connection waiting in it): the kernel drops further SYNs, so connecting
/// to it times out. Both halves must stay alive while it is used.
fn black_hole() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let waiting = std::net::TcpStream::connect(addr).unwrap();
    (s, waiting, addr)
}

#[test]
fn upstream_connections_are_reused_and_connect_timeouts_answered() {
    let a = HttpBackend::start("a");
    let (_hole, _waiting, hole) = black_hole();
    let port = free_port();
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/hole\" }\n                route: { cluster: hole }\n              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let clusters = wasp_tests::config::cluster("a", "ROUND_ROBIN", &[(a.addr, 1)], "")
        + &wasp_tests::config::cluster("hole", "ROUND_ROBIN", &[(hole, 1)], "")
            .replace("connect_timeout: 1s", "connect_timeout: 0.3s");
    // One worker: pools are per worker.
    let wasp = Proxy::start(&hcm(port, vhosts, "", &clusters), &["--concurrency", "1"]);
    // One client connection after another: the upstream connection is kept
    // alive between them and taken again from the worker's pool.
    for i in 0..5 {
        let r = curl(&[&format!("http://127.0.0.1:{port}/n{i}")]);
        assert_eq!(
            (r.status, r.json()["path"].as_str()),
            (200, Some(&*format!("/n{i}")))
        );
    }
    assert_eq!(wasp.stat("cluster.a.upstream_rq_total"), 5);
    assert_eq!(
        wasp.stat("cluster.a.upstream_cx_total"),
        1,
        "one connection, reused"
    );
    assert_eq!(wasp.stat("cluster.a.upstream_cx_active"), 1);

    let started = std::time::Instant::now();
    let r = curl(&[&format!("http://127.0.0.1:{port}/hole")]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
        )
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(wasp.stat("cluster.hole.upstream_cx_connect_timeout"), 1);
    assert_eq!(wasp.stat("cluster.hole.upstream_cx_connect_fail"), 1);
}

/// A virtual host sending every request to `route: { <route> }`.
/// A cluster's `typed_extension_protocol_options`: Envoy's
/// `HttpProtocolOptions` with `fields`, one or more lines of them.
fn protocol_options(fields: &str) -> String {
    let fields: String = fields
        .lines()
        .map(|l| format!("        {}\n", l.trim()))
        .collect();
    format!(
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n{fields}"
    )
}

/// One virtual host for every domain whose routes match these path
/// prefixes, in order, each with its `route: { ... }` fields.
fn prefix_routes(routes: &[(String, String)]) -> String {
    let mut vhost =
        "            - name: all\n              domains: [\"*\"]\n              routes:\n"
            .to_string();
    for (prefix, route) in routes {
        vhost += &format!(
            "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ {route} }}\n"
        );
    }
    vhost
}

fn catch_all(route: &str) -> String {
    format!(
        "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route: {{ {route} }}\n"
    )
}

/// An `HttpBackend` named `name` behind wasp, every request routed to it
/// with `route: { cluster: <name>, <route_extra> }` and `hcm_extra` added
/// to the connection manager: the backend, wasp, and wasp's port.
fn one_backend(
    name: &'static str,
    route_extra: &str,
    hcm_extra: &str,
) -> (HttpBackend, Proxy, u16) {
    let backend = HttpBackend::start(name);
    let vhosts = &catch_all(&format!("cluster: {name}{route_extra}"));
    let clusters = wasp_tests::config::cluster(name, "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let port = free_port();
    let wasp = Proxy::start(&hcm(port, vhosts, hcm_extra, &clusters), &[]);
    (backend, wasp, port)
}

/// An HTTP/1.1 upstream answering raw bytes: for each request, in order,
/// the next reply of `script`, closing the connection after it when its
/// flag says so (without a `connection: close`, as a server whose
/// keep-alive timeout ran out does).
fn scripted_upstream(script: Vec<(&'static str, bool)>) -> SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut replies = script.into_iter();
        'connections: for mut conn in listener.incoming().flatten() {
            let mut buf = Vec::new();
            loop {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let mut chunk = [0; 4096];
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => continue 'connections,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                buf.clear();
                let Some((reply, close)) = replies.next() else {
                    return;
                };
                conn.write_all(reply.as_bytes()).unwrap();
                if close {
                    continue 'connections;
                }
            }
        }
    });
    addr
}

#[test]
fn http1_upstream_framing_interim_answers_and_closed_keep_alives() {
    let raw = scripted_upstream(vec![
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst",
            true,
        ),
        (
            "HTTP/1.0 200 OK\r\n\r\nread until the upstream closes",
            true,
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nchun\r\n3;x=y\r\nked\r\n0\r\n\r\n",
            false,
        ),
        ("HTTP/1.1 204 No Content\r\n\r\n", false),
        // The answer to a HEAD: a length, and no body.
        ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        ("HTTP/1.1 200 OK\r\ncontent-length: twelve\r\n\r\n", false),
    ]);
    let port = free_port();
    let vhosts = &catch_all("cluster: raw");
    let clusters = wasp_tests::config::cluster("raw", "ROUND_ROBIN", &[(raw, 1)], "");
    let wasp = Proxy::start(&hcm(port, vhosts, "", &clusters), &["--concurrency", "1"]);
    let url = format!("http://127.0.0.1:{port}/");
    let r = curl(&[&url]);
    assert_eq!((r.status, r.body.as_str()), (200, "first"), "1xx skipped");
    // The upstream closed the kept-alive connection: the next request goes
    // over a new one.
    let r = curl(&[&url]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "read until the upstream closes")
    );
    let r = curl(&[&url]);
    assert_eq!((r.status, r.body.as_str()), (200, "chunked"));
    // The chunked response left its connection reusable.
    let r = curl(&[&url]);
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = curl(&["-I", &url]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("5")));
    assert_eq!(wasp.stat("cluster.raw.upstream_cx_total"), 3);
    let r = curl(&[&url]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            503,
            "upstream connect error or disconnect/reset before headers. reset reason: remote reset"
        ),
        "a malformed response head"
    );
}

#[test]
fn idle_downstream_connections_are_closed_after_idle_timeout() {
    use std::io::{Read, Write};
    let (_backend, wasp, port) = one_backend(
        "idle",
        "",
        "          common_http_protocol_options: { idle_timeout: 0.5s }\n",
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut head = [0; 12];
    conn.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let opened = std::time::Instant::now();
    // Kept alive at first, then closed once idle for the timeout.
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).expect("closed, not timed out");
    let idle = opened.elapsed();
    assert!(
        idle >= std::time::Duration::from_millis(400) && idle < std::time::Duration::from_secs(3),
        "closed after {idle:?}"
    );
    assert_eq!(wasp.stat("http.edge.downstream_cx_idle_timeout"), 1);
}

/// Sends `wire` on a new connection, then reads until the proxy closes
/// it (or 5 s pass): what came back, and whether it was closed.
fn raw_exchange(port: u16, wire: &[u8]) -> (String, bool) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    c.write_all(wire).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match c.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// The status lines of the responses in `raw`, in order.
fn status_lines(raw: &str) -> Vec<&str> {
    raw.split("\r\n")
        .filter(|l| l.starts_with("HTTP/1.1 ") || l.starts_with("HTTP/1.0 "))
        .collect()
}

/// Raw HTTP/1.x through wasp and through Envoy: malformed heads get the
/// same answers and the connection closed, HTTP/1.0 too unless
/// `accept_http_10` says otherwise; pipelined requests are
/// answered in order on one connection; `Expect: 100-continue` is
/// answered by the proxy before the body goes upstream.
#[test]
fn raw_http1_requests_are_answered_as_envoy_answers_them() {
    use std::io::{Read, Write};
    let backend = HttpBackend::start("raw");
    let clusters = wasp_tests::config::cluster("raw", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/echo\" }\n                route: { cluster: raw }\n              - match: { prefix: \"/a\" }\n                direct_response: { status: 200, body: { inline_string: first } }\n              - match: { prefix: \"/b\" }\n                direct_response: { status: 202, body: { inline_string: second } }\n";
    let (wp, ep) = (free_port(), free_port());
    let _wasp = Proxy::start(&hcm(wp, vhosts, "", &clusters), &[]);
    let _envoy = Proxy::envoy(&hcm(ep, vhosts, "", &clusters), &[]);
    let cases: [(&str, &[u8]); 7] = [
        ("garbage", b"GARBAGE\r\n\r\n"),
        ("http/1.0, not accepted", b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n"),
        ("no host", b"GET /a HTTP/1.1\r\n\r\n"),
        (
            "length and chunked",
            b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad length",
            b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 1x\r\n\r\n",
        ),
        (
            "unknown coding",
            b"POST /a HTTP/1.1\r\nHost: x\r\ntransfer-encoding: gzip\r\n\r\n",
        ),
        (
            "pipelined, the last closing",
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    ];
    for (what, wire) in cases {
        let (w, w_closed) = raw_exchange(wp, wire);
        let (e, e_closed) = raw_exchange(ep, wire);
        assert_eq!(status_lines(&w), status_lines(&e), "{what}:\n{w}\n---\n{e}");
        assert!(!status_lines(&w).is_empty(), "{what}: {w}");
        assert!(w_closed && e_closed, "{what}: closed {w_closed} {e_closed}");
        if what.starts_with("pipelined") {
            // Each answer's body after the one before it.
            let mut at = 0;
            for body in ["first", "second", "first"] {
                at += w[at..]
                    .find(body)
                    .unwrap_or_else(|| panic!("{body} in {w}"))
                    + 1;
            }
        }
    }
    // With HTTP/1.0 accepted: answered in HTTP/1.0, kept alive only when
    // asked, and without a Host (and no default for one) refused.
    let accept = "          http_protocol_options: { accept_http_10: true }\n";
    let (wp10, ep10) = (free_port(), free_port());
    let _wasp10 = Proxy::start(&hcm(wp10, vhosts, accept, &clusters), &[]);
    let _envoy10 = Proxy::envoy(&hcm(ep10, vhosts, accept, &clusters), &[]);
    let cases: [(&str, &[u8]); 3] = [
        ("http/1.0", b"GET /a HTTP/1.0\r\nHost: x\r\n\r\n"),
        (
            "http/1.0 keep-alive, then not",
            b"GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: x\r\n\r\n",
        ),
        ("http/1.0 without host", b"GET /a HTTP/1.0\r\n\r\n"),
    ];
    for (what, wire) in cases {
        let (w, w_closed) = raw_exchange(wp10, wire);
        let (e, e_closed) = raw_exchange(ep10, wire);
        assert_eq!(status_lines(&w), status_lines(&e), "{what}:\n{w}\n---\n{e}");
        assert!(status_lines(&w)[0].starts_with("HTTP/1.0 "), "{what}: {w}");
        assert!(w_closed && e_closed, "{what}: closed {w_closed} {e_closed}");
    }
    // Expect: 100-continue, the body sent only once the proxy says so.
    for port in [wp, ep] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        c.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
            "{port}: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        let mut got = buf[25..n].to_vec();
        c.write_all(b"hello").unwrap();
        while !got.ends_with(b"hello") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
}

/// Envoy's byte counters: what the client sent and got, exactly, on the
/// connection manager; what went to and came from the upstream on the
/// cluster.
#[test]
fn bytes_to_and_from_each_side_are_counted() {
    let (_backend, wasp, port) = one_backend("bytes", "", "");
    let request = b"GET /counted HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (answer, closed) = raw_exchange(port, request);
    assert!(closed && answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let sent = |name: &str| wasp.stat(name) as usize;
    wasp_tests::eventually(
        std::time::Duration::from_secs(2),
        "the downstream byte counters",
        || {
            (sent("http.edge.downstream_cx_rx_bytes_total") == request.len()
                && sent("http.edge.downstream_cx_tx_bytes_total") == answer.len())
            .then_some(())
        },
    );
    // The upstream request carries what the proxy adds (x-request-id,
    // x-forwarded-proto), less the connection field; the answer's body
    // came from the upstream.
    assert!(sent("cluster.bytes.upstream_cx_tx_bytes_total") > request.len());
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(sent("cluster.bytes.upstream_cx_rx_bytes_total") > body.len());
}

/// A client that goes away while its request waits on the upstream takes
/// the upstream request with it: the upstream connection is closed at
/// once rather than kept for the answer and pooled.
#[test]
fn a_client_closing_abandons_its_upstream_request() {
    use std::io::Write;
    let (_backend, wasp, port) = one_backend("slow", ", timeout: 10s", "");
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"GET /?delay_ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let sent = |what| (wasp.stat(what) > 0).then_some(());
    wasp_tests::eventually(
        std::time::Duration::from_secs(2),
        "the request to go upstream",
        || sent("cluster.slow.upstream_rq_total"),
    );
    drop(c);
    // Well before the upstream would have answered (3 s).
    wasp_tests::eventually(
        std::time::Duration::from_millis(1500),
        "the upstream request to end with its client",
        || sent("cluster.slow.upstream_cx_destroy"),
    );
    assert_eq!(wasp.stat("cluster.slow.upstream_cx_active"), 0);
}

/// Circuit breakers, through wasp and through Envoy with the same config:
/// a request past `max_requests`, or past `max_pending_requests` while
/// `max_connections` are busy, is answered 503 with `x-envoy-overloaded`;
/// one within them waits for a connection; a retry past `max_retries` is
/// not made. The overflow stats read the same on both.
#[test]
fn circuit_breakers_overflow_as_envoy_does() {
    let backend = HttpBackend::start("limited");
    let entries = |key: &str, thresholds: &[&str]| {
        let listed: String = thresholds
            .iter()
            .map(|t| format!("      - {{ {t} }}\n"))
            .collect();
        format!("      {key}:\n{listed}")
    };
    let breakers = |name: &str, listed: &str| {
        wasp_tests::config::cluster(
            name,
            "ROUND_ROBIN",
            &[(backend.addr, 1)],
            &format!("    circuit_breakers:\n{listed}"),
        )
    };
    let limited =
        |name: &str, thresholds: &[&str]| breakers(name, &entries("thresholds", thresholds));
    let clusters = limited(
        "rq",
        &["max_requests: 1", "priority: HIGH, max_requests: 1"],
    ) + &limited("cx", &["max_connections: 1, max_pending_requests: 1"])
        // The first entry for a priority is the one used.
        + &limited("retry", &["priority: DEFAULT, max_retries: 0", "max_retries: 5"])
        // A budget replaces max_retries: none at all, or Envoy's default
        // (20% of the requests in flight, at least 3).
        + &limited(
            "budget",
            &["max_retries: 5, retry_budget: { budget_percent: { value: 0 }, min_retry_concurrency: 0 }"],
        )
        + &limited("budget_ok", &["max_retries: 0, retry_budget: {}"])
        + &breakers("host", &entries("per_host_thresholds", &["max_connections: 1"]));
    let route = |prefix: &str, action: &str| {
        format!(
            "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ {action} }}\n"
        )
    };
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n"
        .to_string()
        + &route("/rq", "cluster: rq")
        + &route("/high", "cluster: rq, priority: HIGH")
        + &route("/cx", "cluster: cx")
        + &route(
            "/retry",
            "cluster: retry, retry_policy: { retry_on: 5xx, num_retries: 2 }",
        )
        + &route(
            "/budget_ok",
            "cluster: budget_ok, retry_policy: { retry_on: 5xx, num_retries: 2 }",
        )
        + &route(
            "/budget",
            "cluster: budget, retry_policy: { retry_on: 5xx, num_retries: 2 }",
        )
        + &route("/host", "cluster: host");
    let overflow =
        "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    // Each proxy's Prometheus series for the clusters' request stats.
    let mut series = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        // One worker: a pool without connections opens one past the limit,
        // so with more, which worker takes each client would matter.
        let config = hcm(port, &vhosts, "", &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let pause = || std::thread::sleep(std::time::Duration::from_millis(300));
        let in_background = |path: String| {
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                (curl(&[&path]).status, started.elapsed())
            })
        };

        // max_requests: 1, one in flight.
        let slow = in_background(url("/rq?delay_ms=1500"));
        pause();
        let open = proxy.stat("cluster.rq.circuit_breakers.default.rq_open");
        let r = curl(&[&url("/rq")]);
        assert_eq!((r.status, r.body.as_str()), (503, overflow), "{kind:?}");
        assert_eq!(r.header("x-envoy-overloaded"), Some("true"), "{kind:?}");
        // A HIGH priority route counts against the HIGH thresholds.
        assert_eq!(
            curl(&[&url("/high")]).status,
            200,
            "{kind:?}: HIGH priority"
        );
        assert_eq!(slow.join().unwrap().0, 200, "{kind:?}");
        assert_eq!(open, 1, "{kind:?}: rq_open while the request is in flight");
        assert_eq!(curl(&[&url("/rq")]).status, 200, "{kind:?}: closed again");

        // max_connections: 1 busy; one request may wait for it, the next
        // may not.
        let first = in_background(url("/cx?delay_ms=1500"));
        pause();
        let second = in_background(url("/cx"));
        pause();
        let r = curl(&[&url("/cx")]);
        assert_eq!((r.status, r.body.as_str()), (503, overflow), "{kind:?}");
        assert_eq!(first.join().unwrap().0, 200, "{kind:?}");
        let (status, waited) = second.join().unwrap();
        assert_eq!(status, 200, "{kind:?}");
        assert!(
            waited >= std::time::Duration::from_millis(800),
            "{kind:?}: the pending request waited only {waited:?}"
        );

        // Per host, max_connections: 1: the second request waits for the
        // one connection rather than opening another.
        let first = in_background(url("/host?delay_ms=1500"));
        pause();
        let (status, waited) = in_background(url("/host")).join().unwrap();
        assert_eq!((first.join().unwrap().0, status), (200, 200), "{kind:?}");
        assert!(
            waited >= std::time::Duration::from_millis(800),
            "{kind:?}: per host, the second request waited only {waited:?}"
        );

        // max_retries: 0, or a budget of none: the upstream's own 503
        // comes back, not retried.
        for path in ["/retry?status=503", "/budget?status=503"] {
            let r = curl(&[&url(path)]);
            assert_eq!(r.status, 503, "{kind:?} {path}");
            assert!(
                r.body.contains("\"name\":\"limited\""),
                "{kind:?}: {}",
                r.body
            );
            assert_eq!(r.header("x-envoy-overloaded"), None, "{kind:?}");
        }
        assert_eq!(
            curl(&[&url("/budget_ok?status=503")]).status,
            503,
            "{kind:?}"
        );

        let stat = |name: &str| proxy.stat(&format!("cluster.{name}"));
        assert_eq!(
            [
                stat("rq.upstream_rq_active_overflow"),
                stat("cx.upstream_rq_pending_overflow"),
                stat("cx.upstream_cx_total"),
                stat("retry.upstream_rq_retry_overflow"),
                stat("retry.upstream_rq_retry"),
                stat("rq.circuit_breakers.default.rq_open"),
                stat("budget.upstream_rq_retry_overflow"),
                stat("budget.upstream_rq_retry"),
                stat("budget_ok.upstream_rq_retry_overflow"),
                stat("budget_ok.upstream_rq_retry"),
                stat("host.upstream_cx_total"),
            ],
            [1, 1, 1, 1, 0, 0, 1, 0, 0, 2, 1],
            "{kind:?}: rq active and cx pending overflows, cx connections, retry overflows and retries, rq_open, \
             the budgets' overflows and retries, per-host connections"
        );
        assert!(stat("host.upstream_cx_overflow") >= 1, "{kind:?}");
        assert!(stat("cx.upstream_cx_overflow") >= 1, "{kind:?}");
        // Every answer is charged to its cluster, the overflows' too.
        assert_eq!(
            [
                stat("rq.upstream_rq_200"),
                stat("rq.upstream_rq_2xx"),
                stat("rq.upstream_rq_503"),
                stat("rq.upstream_rq_5xx"),
                stat("rq.upstream_rq_completed"),
                stat("retry.upstream_rq_503"),
            ],
            [3, 3, 1, 1, 4, 1],
            "{kind:?}: upstream_rq_ by code and class, completed"
        );
        assert!(stat("cx.upstream_rq_pending_total") >= 2, "{kind:?}");
        let (_, prom) = proxy.get("/stats/prometheus").expect("/stats/prometheus");
        series.push(
            prom.lines()
                .filter(|l| l.starts_with("envoy_cluster_upstream_rq"))
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(series, _)| {
                    // Label order is the exporter's: compare them sorted.
                    let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort_unstable();
                    format!("{name}{{{}}}", labels.join(","))
                })
                .collect::<std::collections::BTreeSet<_>>(),
        );
    }
    // Response codes and classes are labels, as Envoy's tag extractors
    // make them: `envoy_cluster_upstream_rq{envoy_response_code="503",…}`.
    let (w, e) = (&series[0], &series[1]);
    assert!(
        w.is_subset(e),
        "series Envoy does not have: {:?}",
        w.difference(e)
    );
    assert!(
        w.iter()
            .any(|s| s.starts_with("envoy_cluster_upstream_rq_xx{")
                && s.contains("envoy_response_code_class=\"5\"")),
        "{w:?}"
    );
}

/// A cluster's `HttpProtocolOptions`, through wasp and Envoy alike:
/// `use_downstream_protocol_config` speaks the client's version upstream,
/// `max_requests_per_connection` retires a connection after that many
/// requests, and `idle_timeout` one left unused that long (HTTP/1.1 or
/// HTTP/2).
#[test]
fn upstream_http_protocol_options_as_envoy_applies_them() {
    let backend = HttpBackend::start("options");
    let cluster = |name: &str, options: &str| {
        wasp_tests::config::cluster(
            name,
            "ROUND_ROBIN",
            &[(backend.addr, 1)],
            &protocol_options(options),
        )
    };
    let clusters = cluster(
        "follow",
        "        use_downstream_protocol_config: { http_protocol_options: {}, http2_protocol_options: {} }\n",
    ) + &cluster(
        "capped",
        "        common_http_protocol_options: { max_requests_per_connection: 2 }\n        explicit_http_config: { http_protocol_options: {} }\n",
    ) + &cluster(
        "idle",
        "        common_http_protocol_options: { idle_timeout: 0.5s }\n        explicit_http_config: { http_protocol_options: {} }\n",
    ) + &cluster(
        "h2idle",
        "        common_http_protocol_options: { idle_timeout: 0.5s }\n        explicit_http_config: { http2_protocol_options: {} }\n",
    );
    let vhosts = prefix_routes(
        &["follow", "capped", "idle", "h2idle"].map(|c| (format!("/{c}"), format!("cluster: {c}"))),
    );
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let config = hcm(port, &vhosts, "", &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");

        for (flag, version) in [
            ("--http2-prior-knowledge", "HTTP/2.0"),
            ("--http1.1", "HTTP/1.1"),
        ] {
            let r = curl(&[flag, &url("/follow")]);
            assert_eq!(r.status, 200, "{kind:?}");
            assert_eq!(r.json()["version"], version, "{kind:?} {flag}");
        }
        assert_eq!(
            [
                proxy.stat("cluster.follow.upstream_cx_http1_total"),
                proxy.stat("cluster.follow.upstream_cx_http2_total"),
            ],
            [1, 1],
            "{kind:?}"
        );

        for _ in 0..4 {
            assert_eq!(curl(&[&url("/capped")]).status, 200, "{kind:?}");
        }
        assert_eq!(
            [
                proxy.stat("cluster.capped.upstream_cx_total"),
                proxy.stat("cluster.capped.upstream_cx_http1_total"),
            ],
            [2, 2],
            "{kind:?}: 4 requests, 2 a connection"
        );
        assert_eq!(
            proxy.stat("cluster.capped.upstream_cx_http2_total"),
            0,
            "{kind:?}: HTTP/1.1 connections only"
        );
        // The second is retired once its response is complete.
        wasp_tests::eventually(
            std::time::Duration::from_secs(5),
            "upstream_cx_max_requests",
            || (proxy.stat("cluster.capped.upstream_cx_max_requests") == 2).then_some(()),
        );

        assert_eq!(curl(&[&url("/idle")]).status, 200, "{kind:?}");
        assert_eq!(curl(&[&url("/idle")]).status, 200, "{kind:?}");
        // Closed once idle that long, whether or not a request comes.
        wasp_tests::eventually(
            std::time::Duration::from_secs(5),
            "an idle HTTP/1.1 connection closed",
            || {
                (proxy.stat("cluster.idle.upstream_cx_idle_timeout") == 1
                    && proxy.stat("cluster.idle.upstream_cx_active") == 0)
                    .then_some(())
            },
        );
        assert_eq!(curl(&[&url("/idle")]).status, 200, "{kind:?}");
        assert_eq!(
            [
                proxy.stat("cluster.idle.upstream_cx_total"),
                proxy.stat("cluster.idle.upstream_cx_idle_timeout"),
            ],
            [2, 1],
            "{kind:?}: reused at once, not after idling"
        );

        // An HTTP/2 connection idles once its last stream is done.
        assert_eq!(curl(&[&url("/h2idle")]).status, 200, "{kind:?}");
        assert_eq!(curl(&[&url("/h2idle")]).status, 200, "{kind:?}");
        assert_eq!(
            proxy.stat("cluster.h2idle.upstream_cx_total"),
            1,
            "{kind:?}"
        );
        wasp_tests::eventually(
            std::time::Duration::from_secs(5),
            "an idle HTTP/2 connection closed",
            || {
                (proxy.stat("cluster.h2idle.upstream_cx_idle_timeout") == 1
                    && proxy.stat("cluster.h2idle.upstream_cx_active") == 0)
                    .then_some(())
            },
        );
        assert_eq!(curl(&[&url("/h2idle")]).status, 200, "{kind:?}");
        assert_eq!(
            [
                proxy.stat("cluster.h2idle.upstream_cx_total"),
                proxy.stat("cluster.h2idle.upstream_cx_http2_total"),
            ],
            [2, 2],
            "{kind:?}: a new connection after the idle one closed"
        );
    }
}

/// `http2_protocol_options`, through wasp and Envoy alike: downstream, the
/// SETTINGS a client is sent; upstream, `max_concurrent_streams: 1` opens
/// a connection for each stream in flight.
#[test]
fn http2_protocol_options_as_envoy_applies_them() {
    let backend = HttpBackend::start("streams");
    let clusters = wasp_tests::config::cluster(
        "one_stream",
        "ROUND_ROBIN",
        &[(backend.addr, 1)],
        &protocol_options(
            "explicit_http_config: { http2_protocol_options: { max_concurrent_streams: 1 } }",
        ),
    );
    let vhosts = &catch_all("cluster: one_stream");
    let downstream = "          http2_protocol_options: { max_concurrent_streams: 7, initial_stream_window_size: 131072 }\n";
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let config = hcm(port, vhosts, downstream, &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        let settings = server_settings(port);
        assert_eq!(
            (settings.get(&3), settings.get(&4)),
            (Some(&7), Some(&131_072)),
            "{kind:?}: MAX_CONCURRENT_STREAMS and INITIAL_WINDOW_SIZE in {settings:?}"
        );
        let url = format!("http://127.0.0.1:{port}/?delay_ms=800");
        let slow: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || curl(&["--http2-prior-knowledge", &url]).status)
            })
            .collect();
        for s in slow {
            assert_eq!(s.join().unwrap(), 200, "{kind:?}");
        }
        assert_eq!(
            [
                proxy.stat("cluster.one_stream.upstream_cx_total"),
                proxy.stat("cluster.one_stream.upstream_cx_http2_total"),
            ],
            [3, 3],
            "{kind:?}: one upstream connection per stream in flight"
        );
    }
}

/// A burst of requests to an HTTP/2 endpoint with no connection yet waits
/// for the one the first of them opens, as far as the stream limit
/// allows, through wasp and Envoy alike: eight requests make one
/// connection, or four at `max_concurrent_streams: 2`. Each request
/// waiting for its connection counts as pending. The proxy is stopped
/// while the eight are sent, so that all of them are there at once.
#[test]
fn a_burst_of_requests_shares_the_http2_connection_being_opened() {
    use std::io::{Read, Write};
    let backend = HttpBackend::start("burst");
    let cluster = |name: &str, http2: &str| {
        wasp_tests::config::cluster(
            name,
            "ROUND_ROBIN",
            &[(backend.addr, 1)],
            &protocol_options(&format!(
                "explicit_http_config: {{ http2_protocol_options: {{ {http2} }} }}"
            )),
        )
    };
    let clusters = cluster("wide", "") + &cluster("narrow", "max_concurrent_streams: 2");
    let vhosts =
        prefix_routes(&["wide", "narrow"].map(|c| (format!("/{c}"), format!("cluster: {c}"))));
    let signal = |pid: u32, sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let config = hcm(port, &vhosts, "", &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        for (name, connections) in [("wide", 1), ("narrow", 4)] {
            signal(proxy.pid(), "-STOP");
            // The kernel completes the handshakes; the requests wait in
            // the sockets until the proxy runs again.
            let clients: Vec<_> = (0..8)
                .map(|_| {
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                        .unwrap();
                    write!(
                        s,
                        "GET /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap();
                    s
                })
                .collect();
            signal(proxy.pid(), "-CONT");
            for mut s in clients {
                let mut answer = String::new();
                s.read_to_string(&mut answer).unwrap();
                assert!(
                    answer.starts_with("HTTP/1.1 200"),
                    "{kind:?} {name}: {answer}"
                );
            }
            let stat = |s: &str| proxy.stat(&format!("cluster.{name}.{s}"));
            assert_eq!(
                [
                    stat("upstream_rq_total"),
                    stat("upstream_cx_http2_total"),
                    stat("upstream_rq_pending_total"),
                ],
                [8, connections, 8],
                "{kind:?} {name}: requests, connections, requests that waited for one"
            );
        }
    }
}

/// A route of high priority has upstream connections of its own, through
/// wasp and Envoy alike: requests taking turns between a default and a
/// high priority route to one endpoint use two connections, over
/// HTTP/1.1 and over HTTP/2.
#[test]
fn each_routing_priority_has_its_own_upstream_connections() {
    let backend = HttpBackend::start("prioritized");
    let cluster = |name: &str, protocol: &str| {
        wasp_tests::config::cluster(
            name,
            "ROUND_ROBIN",
            &[(backend.addr, 1)],
            &protocol_options(&format!("explicit_http_config: {{ {protocol}: {{}} }}")),
        )
    };
    let clusters =
        cluster("one", "http_protocol_options") + &cluster("two", "http2_protocol_options");
    let vhosts = prefix_routes(
        &["one", "two"]
            .map(|c| {
                [
                    (
                        format!("/{c}/high"),
                        format!("cluster: {c}, priority: HIGH"),
                    ),
                    (format!("/{c}"), format!("cluster: {c}")),
                ]
            })
            .concat(),
    );
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let config = hcm(port, &vhosts, "", &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        for name in ["one", "two"] {
            for path in ["", "/high", "", "/high"] {
                let url = format!("http://127.0.0.1:{port}/{name}{path}");
                assert_eq!(curl(&[&url]).status, 200, "{kind:?} {url}");
            }
            assert_eq!(
                [
                    proxy.stat(&format!("cluster.{name}.upstream_rq_total")),
                    proxy.stat(&format!("cluster.{name}.upstream_cx_total")),
                ],
                [4, 2],
                "{kind:?} {name}: requests, connections"
            );
        }
    }
}

/// WebSocket upgrades, through wasp and Envoy alike: with `upgrade_configs`
/// listing `websocket`, the 101 comes back and the connection becomes a
/// tunnel to the upstream's, bytes sent before the 101 included, until
/// each side closes; a route that disables it, or a protocol not listed,
/// is answered 403 and the connection closed; a tunnel idle for
/// `stream_idle_timeout` is closed. Again with a wasm filter
/// (`add_header`) before the router, which sees the upgrade's heads.
#[test]
fn websocket_upgrades_tunnel_as_envoy() {
    use std::io::{Read, Write};
    let (_backend, clusters, vhosts) = websocket_routes("ws");
    let vhosts = &vhosts;
    let extra = "          stream_idle_timeout: 1s\n          upgrade_configs:\n          - upgrade_type: websocket\n";
    let ask = |port: u16, path: &str, protocol: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\nearly"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "head: {head:?}");
            head.push(byte[0]);
        }
        (s, String::from_utf8(head).unwrap().to_ascii_lowercase())
    };
    let code = wasp_tests::wasm::filter("add_header");
    let wasm = wasp_tests::wasm::http_filter("adder", code.to_str().unwrap(), "ws", "");
    let runs = [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy]
        .into_iter()
        .flat_map(|kind| [(kind, false), (kind, true)]);
    for (kind, filtered) in runs {
        let port = free_port();
        let mut config = hcm(port, vhosts, extra, &clusters);
        if filtered {
            let filters = "          http_filters:\n";
            config = config.replacen(filters, &format!("{filters}{wasm}"), 1);
        }
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);

        let (mut s, head) = ask(port, "/chat", "websocket");
        assert!(head.starts_with("http/1.1 101"), "{kind:?}: {head}");
        assert_eq!(
            head.contains("x-wasm-filter: ws"),
            filtered,
            "{kind:?}: {head}"
        );
        assert!(
            head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
            "{kind:?}: {head}"
        );
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, b"early", "{kind:?}: bytes sent before the 101");
        let message = vec![7u8; 100_000];
        s.write_all(&message).unwrap();
        let mut back = vec![0u8; message.len()];
        s.read_exact(&mut back).unwrap();
        assert!(back == message, "{kind:?}: 100 kB through the tunnel");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(
            rest.is_empty(),
            "{kind:?}: the tunnel closes after the client"
        );
        wasp_tests::eventually(
            std::time::Duration::from_secs(5),
            "the upstream connection closed",
            || (proxy.stat("cluster.ws.upstream_cx_active") == 0).then_some(()),
        );
        assert_eq!(
            [
                proxy.stat("cluster.ws.upstream_cx_total"),
                proxy.stat("cluster.ws.upstream_rq_total"),
            ],
            [1, 1],
            "{kind:?}"
        );

        for (path, protocol) in [("/off", "websocket"), ("/chat", "spdy/3")] {
            let (mut s, head) = ask(port, path, protocol);
            assert!(
                head.starts_with("http/1.1 403"),
                "{kind:?} {path} {protocol}: {head}"
            );
            assert!(head.contains("connection: close"), "{kind:?}: {head}");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{kind:?}: closed after the 403");
        }
        assert_eq!(proxy.stat("cluster.ws.upstream_rq_total"), 1, "{kind:?}");

        let (mut s, head) = ask(port, "/chat", "websocket");
        assert!(head.starts_with("http/1.1 101"), "{kind:?}: {head}");
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo).unwrap();
        let quiet = std::time::Instant::now();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .expect("an idle tunnel closed within the read timeout");
        assert!(
            rest.is_empty() && quiet.elapsed() >= std::time::Duration::from_millis(900),
            "{kind:?}: closed after {:?} idle",
            quiet.elapsed()
        );
    }
}

/// The upgrade tests' upstream: an HTTP backend named `name` (it echoes
/// what an upgraded connection sends) as cluster `name`, and a virtual
/// host whose `/off` route disables WebSocket upgrades and whose `/` route
/// leaves them to the connection manager.
fn websocket_routes(name: &'static str) -> (HttpBackend, String, String) {
    let backend = HttpBackend::start(name);
    let clusters = wasp_tests::config::cluster(name, "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = prefix_routes(&[
        (
            "/off".into(),
            format!(
                "cluster: {name}, upgrade_configs: [{{ upgrade_type: websocket, enabled: false }}]"
            ),
        ),
        ("/".into(), format!("cluster: {name}")),
    ]);
    (backend, clusters, vhosts)
}

/// An HTTP/2 (prior knowledge) client connection to `port`, driven by a
/// task on the caller's runtime.
async fn h2_client(
    port: u16,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// WebSockets over HTTP/2 (RFC 8441), through wasp and Envoy alike: with
/// `allow_connect`, an extended CONNECT (`:protocol: websocket`) goes to an
/// HTTP/1.1 upstream as an upgrade; its 101 is answered 200 without the
/// upgrade fields, and the stream then carries bytes both ways (100 kB
/// each way at once, then, through wasp, each side's end) while the
/// connection's other streams go on. A route that disables the upgrade answers 403.
#[test]
fn websocket_over_http2_extended_connect_as_envoy() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_backend, clusters, vhosts) = websocket_routes("ws2");
    let vhosts = &vhosts;
    let extra = "          http2_protocol_options: { allow_connect: true }\n          upgrade_configs:\n          - upgrade_type: websocket\n";
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let proxy = one_worker(kind, &hcm(port, vhosts, extra, &clusters));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut send = h2_client(port).await;
            let request = |method: http::Method, path: &str| {
                let mut req = http::Request::builder()
                    .method(method.clone())
                    .uri(format!("http://x{path}"))
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                if method == http::Method::CONNECT {
                    req.extensions_mut()
                        .insert(hyper::ext::Protocol::from_static("websocket"));
                }
                req
            };
            // A plain request first: by its answer the server's SETTINGS,
            // which allow extended CONNECT, are in.
            let plain = send
                .send_request(request(http::Method::GET, "/"))
                .await
                .unwrap();
            assert_eq!(plain.status(), 200, "{kind:?}");
            plain.into_body().collect().await.unwrap();

            let mut resp = send
                .send_request(request(http::Method::CONNECT, "/chat"))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{kind:?}");
            for name in ["upgrade", "connection"] {
                assert!(resp.headers().get(name).is_none(), "{kind:?}: {name}");
            }
            assert_eq!(resp.headers()["x-backend"], "ws2", "{kind:?}");
            let tunnel = TokioIo::new(hyper::upgrade::on(&mut resp).await.unwrap());
            let (mut from, mut to) = tokio::io::split(tunnel);
            to.write_all(b"hello").await.unwrap();
            let mut echo = [0u8; 5];
            from.read_exact(&mut echo).await.unwrap();
            assert_eq!(&echo, b"hello", "{kind:?}");
            // Another stream on the same connection while the tunnel is open.
            let other = send
                .send_request(request(http::Method::GET, "/"))
                .await
                .unwrap();
            assert_eq!(other.status(), 200, "{kind:?}");
            let message = vec![7u8; 100_000];
            let mut back = vec![0u8; message.len()];
            let (sent, got) = tokio::join!(to.write_all(&message), from.read_exact(&mut back));
            sent.unwrap();
            got.unwrap();
            assert!(back == message, "{kind:?}: 100 kB through the tunnel");
            // wasp passes the client's end on, and the upstream's back, as
            // for an HTTP/1.1 client; Envoy 1.40 keeps the upstream side
            // open after an HTTP/2 client's END_STREAM (seen by hand: its
            // upstream connection stays active), so only wasp is held to it.
            if kind == wasp_tests::Kind::Wasp {
                to.shutdown().await.unwrap();
                let mut rest = Vec::new();
                let ended = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    from.read_to_end(&mut rest),
                );
                ended
                    .await
                    .expect("the tunnel ends after the client's end")
                    .unwrap();
                assert!(rest.is_empty());
            }

            let off = send
                .send_request(request(http::Method::CONNECT, "/off"))
                .await
                .unwrap();
            assert_eq!(off.status(), 403, "{kind:?}");
        });
        // The client's connection closes with its runtime.
        drop(rt);
        wasp_tests::eventually(
            std::time::Duration::from_secs(5),
            "the tunnel's upstream connection closed",
            // The plain requests' connection may stay in the pool.
            || (proxy.stat("cluster.ws2.upstream_cx_active") <= 1).then_some(()),
        );
        assert_eq!(proxy.stat("cluster.ws2.upstream_rq_total"), 3, "{kind:?}");
    }
}

/// A CONNECT request matches no route (Envoy matches it only against a
/// `connect_matcher`): 404, and an HTTP/1.1 connection closed after it,
/// where a catch-all prefix route would otherwise have sent it upstream.
/// Through wasp and Envoy, from HTTP/1.1 and HTTP/2 clients.
#[test]
fn connect_requests_find_no_route_as_envoy() {
    use std::io::{Read, Write};
    let backend = HttpBackend::start("tunnelled");
    let clusters =
        wasp_tests::config::cluster("tunnelled", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = &prefix_routes(&[("/".into(), "cluster: tunnelled".into())]);
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let proxy = one_worker(kind, &hcm(port, vhosts, "", &clusters));
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("closed after the answer");
        let answer = String::from_utf8(answer).unwrap().to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 404"), "{kind:?}: {answer}");
        assert!(answer.contains("connection: close"), "{kind:?}: {answer}");

        assert_eq!(h2_connect(port, false).0, 404, "{kind:?}: HTTP/2");
        assert_eq!(
            proxy.stat("cluster.tunnelled.upstream_rq_total"),
            0,
            "{kind:?}"
        );
        assert_eq!(proxy.stat("http.edge.no_route"), 2, "{kind:?}");
    }
}

/// The SETTINGS an HTTP/2 server at `port` sends first (identifier to
/// value), read with a hand-made client preface.
fn server_settings(port: u16) -> std::collections::HashMap<u16, u32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // The preface, then an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).unwrap();
    payload
        .chunks_exact(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

/// `common_http_protocol_options.max_requests_per_connection` downstream,
/// through wasp and Envoy alike: after two requests an HTTP/1.1 connection
/// is closed (its second answer says so), so a client's third request goes
/// on a new connection. (Envoy 1.40 does not limit HTTP/2 connections by
/// it, and neither does wasp.)
#[test]
fn downstream_max_requests_per_connection_as_envoy() {
    let backend = HttpBackend::start("capped");
    let clusters = wasp_tests::config::cluster("capped", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let extra = "          common_http_protocol_options: { max_requests_per_connection: 2 }\n";
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let config = hcm(port, &catch_all("cluster: capped"), extra, &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        let url = format!("http://127.0.0.1:{port}/");
        let raw = std::process::Command::new("curl")
            .args(["-s", "-i", "--http1.1", &url, &url, &url])
            .output()
            .expect("curl");
        let heads: Vec<String> = String::from_utf8_lossy(&raw.stdout)
            .split("HTTP/1.1 ")
            .skip(1)
            .map(|h| h.to_ascii_lowercase())
            .collect();
        assert_eq!(heads.len(), 3, "{kind:?}: {heads:?}");
        assert!(
            heads.iter().all(|h| h.starts_with("200")),
            "{kind:?}: {heads:?}"
        );
        assert!(
            heads[1].contains("connection: close") && !heads[0].contains("connection: close"),
            "{kind:?}: the second answer closes: {heads:?}"
        );
        assert_eq!(
            [
                proxy.stat("http.edge.downstream_cx_total"),
                proxy.stat("http.edge.downstream_cx_max_requests_reached"),
            ],
            [2, 1],
            "{kind:?}: connections, and those closed at the limit"
        );
    }
}

/// A request is in flight upstream (`upstream_rq_active`, what a
/// least-request balancer reads) until its response has ended, not just
/// its head, through wasp and Envoy alike: here a response that streams
/// back a request body still being sent.
#[test]
fn upstream_requests_are_active_until_their_response_ends() {
    use std::io::{Read, Write};
    let backend = HttpBackend::start("streaming");
    let clusters =
        wasp_tests::config::cluster("streaming", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let config = hcm(port, &catch_all("cluster: streaming"), "", &clusters);
        let proxy = Proxy::launch(kind, &config, &["--concurrency", "1"]);
        let active = || proxy.stat("cluster.streaming.upstream_rq_active");
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .unwrap();
        // The head and the first chunk come back while the request goes on.
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("hello") {
            let mut buf = [0; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "{kind:?}: closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(seen.starts_with(b"HTTP/1.1 200"), "{kind:?}");
        assert_eq!(active(), 1, "{kind:?}: in flight while the body streams");
        s.write_all(b"0\r\n\r\n").unwrap();
        while !seen.ends_with(b"0\r\n\r\n") {
            let mut buf = [0; 1024];
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "{kind:?}: closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        wasp_tests::eventually(
            std::time::Duration::from_secs(5),
            "the request no longer in flight",
            || (active() == 0).then_some(()),
        );
        assert_eq!(
            proxy.stat("cluster.streaming.upstream_rq_completed"),
            1,
            "{kind:?}"
        );
    }
}

/// Retry policies through wasp and through Envoy with one config: the
/// same answers, the same number of tries (as the client and the backend
/// see them in `x-envoy-attempt-count`) and the same retry stats, for each
/// condition family, virtual-host policies, request-header gates, the
/// previous_hosts predicate, bodies too large to replay, and trusted
/// `x-envoy-retry-on` headers.
#[test]
fn retry_policies_match_envoy() {
    use wasp_tests::config::cluster;
    let live = HttpBackend::start("live");
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let clusters = cluster(
        "spread",
        "RANDOM",
        &[(dead[0], 1), (dead[1], 1), (live.addr, 1)],
        "",
    ) + &cluster("live", "ROUND_ROBIN", &[(live.addr, 1)], "")
        + &cluster(
            "live_h2",
            "ROUND_ROBIN",
            &[(live.addr, 1)],
            &protocol_options("explicit_http_config: { http2_protocol_options: {} }"),
        );
    let vhosts = r#"            - name: all
              domains: ["*"]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              retry_policy:
                retry_on: "unavailable,retriable-headers"
                num_retries: 2
                retriable_headers: [{ name: x-upstream-retry }]
              routes:
              - match: { prefix: "/spread" }
                route:
                  cluster: spread
                  retry_policy:
                    retry_on: connect-failure
                    num_retries: 2
                    host_selection_retry_max_attempts: 20
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
              - match: { prefix: "/gated" }
                route:
                  cluster: live
                  retry_policy: { retry_on: 5xx, num_retries: 1, retriable_request_headers: [{ name: x-retryable }] }
              - match: { prefix: "/limited" }
                route:
                  cluster: live
                  retry_policy:
                    retry_on: 5xx
                    num_retries: 3
                    retry_back_off: { base_interval: 0.01s, max_interval: 0.02s }
              - match: { prefix: "/h2" }
                route: { cluster: live_h2, retry_policy: { retry_on: 5xx, num_retries: 2 } }
              - match: { prefix: "/plain" }
                route: { cluster: live, retry_policy: { retry_on: "", num_retries: 1 } }
              - match: { prefix: "/" }
                route: { cluster: live }
"#;
    let internal = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.1, prefix_len: 32 }] }\n";
    let (wp, ep, wi, ei) = (free_port(), free_port(), free_port(), free_port());
    let wasp = Proxy::start(&hcm(wp, vhosts, "", &clusters), &["--concurrency", "1"]);
    let envoy = Proxy::envoy(&hcm(ep, vhosts, "", &clusters), &["--concurrency", "1"]);
    let wasp_in = Proxy::start(
        &hcm(wi, vhosts, internal, &clusters),
        &["--concurrency", "1"],
    );
    let envoy_in = Proxy::envoy(
        &hcm(ei, vhosts, internal, &clusters),
        &["--concurrency", "1"],
    );

    let big = wasp_tests::temp_dir("retry-body").join("big");
    std::fs::write(&big, vec![b'x'; 2 << 20]).unwrap();
    let big_arg = format!("@{}", big.display());
    // (what, extra curl arguments, path)
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "grpc unavailable: vhost policy",
            vec![],
            "/?header=grpc-status:14",
        ),
        (
            "grpc internal: not retried",
            vec![],
            "/?header=grpc-status:13",
        ),
        ("retriable header", vec![], "/?header=x-upstream-retry:1"),
        ("gate closed", vec![], "/gated?status=503"),
        (
            "gate open",
            vec!["-H", "x-retryable: yes"],
            "/gated?status=503",
        ),
        ("5xx until spent", vec![], "/limited?status=503"),
        (
            "rate limited: not retried",
            vec![],
            "/limited?status=503&header=x-envoy-ratelimited:true",
        ),
        (
            "small body replayed",
            vec!["--data-binary", "hello"],
            "/limited?status=503",
        ),
        (
            "body past the buffer",
            vec!["--data-binary", &big_arg],
            "/limited?status=503",
        ),
        (
            "timeout header",
            vec!["-H", "x-envoy-upstream-rq-timeout-ms: 200"],
            "/?delay_ms=700",
        ),
        (
            "HTTP/2 upstream, body replayed",
            vec!["--data-binary", "hello"],
            "/h2?status=503",
        ),
        (
            "retry headers",
            vec![
                "-H",
                "x-envoy-retry-on: 5xx",
                "-H",
                "x-envoy-max-retries: 1",
            ],
            "/plain?status=503",
        ),
    ];
    let retries = |p: &Proxy| {
        p.stat("cluster.live.upstream_rq_retry") + p.stat("cluster.live_h2.upstream_rq_retry")
    };
    for (what, extra, path) in &cases {
        let mut seen = Vec::new();
        for (proxy, port) in [(&wasp, wp), (&envoy, ep), (&wasp_in, wi), (&envoy_in, ei)] {
            let before = retries(proxy);
            let url = format!("http://127.0.0.1:{port}{path}");
            let mut args = extra.clone();
            args.push(&url);
            let r = curl(&args);
            let backend_count = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|j| {
                    j["headers"]["x-envoy-attempt-count"]
                        .as_str()
                        .map(String::from)
                });
            let leaked = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .is_some_and(|j| j["headers"].get("x-envoy-retry-on").is_some());
            assert!(!leaked, "{what}: x-envoy-retry-on went upstream");
            seen.push((
                r.status,
                r.header("x-envoy-attempt-count").map(String::from),
                backend_count,
                settled_delta(proxy, before, &retries),
            ));
        }
        assert_eq!(seen[0], seen[1], "{what}: wasp, then Envoy");
        assert_eq!(
            seen[2], seen[3],
            "{what} (internal client): wasp, then Envoy"
        );
        println!("{what}: {:?} / internal {:?}", seen[0], seen[2]);
    }
    // What the cases must show, beyond agreeing with Envoy.
    let tries = |path: &str, extra: &[&str], port: u16| {
        let url = format!("http://127.0.0.1:{port}{path}");
        let mut args = extra.to_vec();
        args.push(&url);
        curl(&args)
            .header("x-envoy-attempt-count")
            .map(String::from)
    };
    assert_eq!(
        tries("/?header=grpc-status:14", &[], wp).as_deref(),
        Some("3")
    );
    assert_eq!(tries("/limited?status=503", &[], wp).as_deref(), Some("4"));
    let h2 = curl(&[
        "--data-binary",
        "hello",
        &format!("http://127.0.0.1:{wp}/h2?status=503"),
    ]);
    assert_eq!(h2.header("x-envoy-attempt-count"), Some("3"));
    assert_eq!(
        (
            h2.json()["version"].as_str(),
            h2.json()["body_len"].as_u64()
        ),
        (Some("HTTP/2.0"), Some(5))
    );
    assert_eq!(
        tries("/gated?status=503", &["-H", "x-retryable: 1"], wp).as_deref(),
        Some("2")
    );
    let big_tries = tries("/limited?status=503", &["--data-binary", &big_arg], wp);
    assert_eq!(big_tries.as_deref(), Some("1"));
    assert!(wasp.stat("cluster.live.retry_or_shadow_abandoned") >= 1);
    let retry_headers = [
        "-H",
        "x-envoy-retry-on: 5xx",
        "-H",
        "x-envoy-max-retries: 1",
    ];
    assert_eq!(
        tries("/plain?status=503", &retry_headers, wp).as_deref(),
        Some("1")
    );
    assert_eq!(
        tries("/plain?status=503", &retry_headers, wi).as_deref(),
        Some("2")
    );

    // What the upstream is told to expect: the route's 15 s, or what an
    // internal client asked for.
    for (proxy_port, internal) in [(wp, false), (ep, false), (wi, true), (ei, true)] {
        let r = curl(&[
            "-H",
            "x-envoy-upstream-rq-timeout-ms: 3000",
            &format!("http://127.0.0.1:{proxy_port}/"),
        ]);
        let expected = r.json()["headers"]["x-envoy-expected-rq-timeout-ms"].clone();
        let want = if internal { "3000" } else { "15000" };
        assert_eq!(expected, want, "port {proxy_port}");
    }

    // previous_hosts: two of three endpoints are dead, and two retries
    // that never go back to an endpoint tried always find the live one.
    for proxy_port in [wp, ep] {
        for _ in 0..20 {
            let r = curl(&[&format!("http://127.0.0.1:{proxy_port}/spread")]);
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
}

/// How far a counter moved since `before`, read 50 ms after the answer
/// (Envoy counts retries only after answering).
fn settled_delta(proxy: &Proxy, before: i64, stat: &dyn Fn(&Proxy) -> i64) -> i64 {
    std::thread::sleep(std::time::Duration::from_millis(50));
    stat(proxy) - before
}

/// A route with a retry policy still streams the request body: the
/// upstream gets (and echoes) its first part before the client has sent
/// the rest, as a gRPC stream needs.
#[test]
fn a_retried_route_streams_the_request_body() {
    use std::io::{Read, Write};
    let backend = HttpBackend::start("echo");
    let clusters = wasp_tests::config::cluster("echo", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: echo, retry_policy: { retry_on: 5xx, num_retries: 2 } }\n";
    let port = free_port();
    let _wasp = Proxy::start(&hcm(port, vhosts, "", &clusters), &["--concurrency", "1"]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = s
            .read(&mut buf)
            .expect("the first part came back before the body ended");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    s.write_all(b"4\r\nlast\r\n0\r\n\r\n").unwrap();
    while !String::from_utf8_lossy(&got).ends_with("0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("last"));
}

/// CONNECT ended by the proxy (a `connect_matcher` route whose
/// `upgrade_configs` has `connect_config`), through wasp and Envoy alike:
/// curl's proxy tunnel reaches the cluster's backend over HTTP/1.1; the
/// 200 carries no framing; a CONNECT with a body is refused 400; a
/// CONNECT no route matches is 404; a dead cluster answers 503 with
/// Envoy's text; over HTTP/2 (`allow_connect`) the stream is the tunnel.
#[test]
fn connect_requests_end_at_the_proxy_as_envoy() {
    let backend = HttpBackend::start("beyond");
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let clusters = wasp_tests::config::cluster("beyond", "ROUND_ROBIN", &[(backend.addr, 1)], "")
        + &wasp_tests::config::cluster("dead", "ROUND_ROBIN", &[(dead, 1)], "");
    let vhosts = r#"            - name: dead
              domains: ["dead.example:1"]
              routes:
              - match: { connect_matcher: {} }
                route: { cluster: dead, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] }
            - name: all
              domains: ["*"]
              routes:
              - match: { connect_matcher: {}, headers: [{ name: x-tunnel, present_match: true }] }
                route: { cluster: beyond, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }] }
              - match: { prefix: "/" }
                route: { cluster: beyond }
"#;
    let extra = "          http2_protocol_options: { allow_connect: true }\n          upgrade_configs: [{ upgrade_type: CONNECT }]\n";
    let raw = |port: u16, wire: &[u8]| raw_answer(port, wire, false);
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let _proxy = one_worker(kind, &hcm(port, vhosts, extra, &clusters));
        let r = through_tunnel(port, &["--proxy-header", "x-tunnel: 1"]);
        let tunnelled = (r.status, r.json()["name"].clone(), r.json()["path"].clone());
        // The 200 itself: no framing fields.
        let ok = raw(
            port,
            b"CONNECT a:1 HTTP/1.1\r\nhost: a:1\r\nx-tunnel: 1\r\n\r\n",
        );
        let framed = ok.contains("content-length") || ok.contains("transfer-encoding");
        let with_body = raw(
            port,
            b"CONNECT a:1 HTTP/1.1\r\nhost: a:1\r\nx-tunnel: 1\r\ncontent-length: 3\r\n\r\nabc",
        );
        let no_route = raw(port, b"CONNECT a:1 HTTP/1.1\r\nhost: a:1\r\n\r\n");
        let dead_answer = raw(
            port,
            b"CONNECT dead.example:1 HTTP/1.1\r\nhost: dead.example:1\r\n\r\n",
        );
        let dead_body = dead_answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .to_string();
        let h2 = h2_connect(port, true);
        seen.push((
            tunnelled,
            ok.lines().next().unwrap_or("").to_string(),
            framed,
            with_body.lines().next().unwrap_or("").to_string(),
            no_route.lines().next().unwrap_or("").to_string(),
            dead_answer.lines().next().unwrap_or("").to_string(),
            dead_body,
            h2,
        ));
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let s = &seen[0];
    assert_eq!(s.0, (200, "beyond".into(), "/through".into()));
    assert_eq!((s.1.as_str(), s.2), ("http/1.1 200 ok", false));
    assert_eq!(s.3, "http/1.1 400 bad request");
    assert_eq!(s.4, "http/1.1 404 not found");
    assert_eq!(s.5, "http/1.1 503 service unavailable");
    assert!(s.6.contains("upstream connect error"), "{}", s.6);
    assert_eq!(s.7, (200, "beyond".into()));
}

/// curl's proxy tunnel through the proxy on `port` (its CONNECT headers
/// not shown) to `http://somewhere.example:1234/through`, with `extra`
/// arguments.
fn through_tunnel(port: u16, extra: &[&str]) -> CurlResponse {
    let proxy_url = format!("http://127.0.0.1:{port}");
    let mut args = vec!["-p", "--suppress-connect-headers", "-x", &proxy_url];
    args.extend_from_slice(extra);
    args.push("http://somewhere.example:1234/through");
    curl(&args)
}

/// Sends `wire` to `port` and returns the answer, lowercased: what the
/// first read brings, or all of it until the proxy closes (`whole`).
fn raw_answer(port: u16, wire: &[u8], whole: bool) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(wire).unwrap();
    let mut answer = Vec::new();
    if whole {
        let _ = s.read_to_end(&mut answer);
    } else {
        answer.resize(4096, 0);
        let n = s.read(&mut answer).unwrap_or(0);
        answer.truncate(n);
    }
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

/// A plain HTTP/2 CONNECT (no `:protocol`) to `port`, with `x-tunnel` if
/// `tunnel`, and if it is answered 2xx an HTTP/1.1 request sent through
/// the stream: the CONNECT's status and the name of the backend that
/// answered inside (null if none did).
fn h2_connect(port: u16, tunnel: bool) -> (u16, serde_json::Value) {
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut send = h2_client(port).await;
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("somewhere.example:1234")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        if tunnel {
            req.headers_mut()
                .insert("x-tunnel", http::HeaderValue::from_static("1"));
        }
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let Ok(stream) = hyper::upgrade::on(resp).await else {
            return (status, serde_json::Value::Null);
        };
        let mut stream = TokioIo::new(stream);
        stream
            .write_all(b"GET /h2 HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            stream.read_to_end(&mut got),
        )
        .await;
        let text = String::from_utf8_lossy(&got).into_owned();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let name = serde_json::from_str::<serde_json::Value>(body)
            .map(|j| j["name"].clone())
            .unwrap_or(serde_json::Value::Null);
        (status, name)
    })
}

/// Connection manager options that rewrite requests before routing, through
/// wasp and Envoy alike: `via`, `always_set_request_id_in_response`, an edge
/// request's new x-request-id (or the client's, with
/// `preserve_external_request_id`), `skip_xff_append`, and Host ports
/// stripped (`strip_any_host_port`, `strip_matching_host_port`) before the
/// virtual host is chosen.
#[test]
fn request_rewriting_options_match_envoy() {
    let backend = HttpBackend::start("rewritten");
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    // decorator and metadata (about tracing and filters) are accepted.
    let vhosts = "            - name: only\n              domains: [\"example.com\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: b }\n                decorator: { operation: only-route }\n                metadata: { filter_metadata: { example: { k: v } } }\n";
    let first = "          use_remote_address: true\n          skip_xff_append: true\n          via: proxy-under-test\n          always_set_request_id_in_response: true\n          strip_any_host_port: true\n";
    let second = "          use_remote_address: true\n          preserve_external_request_id: true\n          strip_matching_host_port: true\n          forward_client_cert_details: ALWAYS_FORWARD_ONLY\n          set_current_client_cert_details: { subject: true }\n          request_id_extension:\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig\n              use_request_id_for_trace_sampling: true\n";
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let (p1, p2) = (free_port(), free_port());
        let _a = one_worker(kind, &hcm(p1, vhosts, first, &clusters));
        let _b = one_worker(kind, &hcm(p2, vhosts, second, &clusters));
        let ask = |port: u16, host: &str| {
            curl(&[
                "-H",
                &format!("host: {host}"),
                "-H",
                "via: 1.1 client",
                "-H",
                "x-request-id: from-client",
                "-H",
                "x-forwarded-client-cert: By=spiffe://a;Hash=1",
                &format!("http://127.0.0.1:{port}/x"),
            ])
        };
        let r = ask(p1, "example.com:8080");
        let j = r.json();
        let upstream_id = j["headers"]["x-request-id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let first_seen = (
            r.status,
            j["authority"].clone(),
            j["headers"]["via"].clone(),
            j["headers"].get("x-forwarded-for").is_some(),
            upstream_id != "from-client" && !upstream_id.is_empty(),
            r.header("x-request-id") == Some(upstream_id.as_str()),
            r.header("via").map(String::from),
            j["headers"].get("x-forwarded-client-cert").is_some(),
        );
        // strip_matching_host_port: only the listener's own port goes.
        let own = ask(p2, &format!("example.com:{p2}"));
        let other = ask(p2, "example.com:8080");
        let second_seen = (
            own.status,
            own.json()["headers"]["x-request-id"].clone(),
            other.status,
            own.header("x-request-id").is_some(),
            own.json()["headers"]["x-forwarded-client-cert"].clone(),
        );
        seen.push((first_seen, second_seen));
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let (first, second) = &seen[0];
    assert_eq!(first.0, 200);
    assert_eq!(first.1, "example.com");
    assert_eq!(first.2, "1.1 client, proxy-under-test");
    assert!(!first.3, "x-forwarded-for was appended");
    assert!(first.4 && first.5, "{first:?}");
    assert_eq!(first.6.as_deref(), Some("proxy-under-test"));
    assert!(!first.7, "x-forwarded-client-cert went upstream by default");
    assert_eq!(
        second,
        &(
            200,
            serde_json::json!("from-client"),
            404,
            false,
            serde_json::json!("By=spiffe://a;Hash=1")
        )
    );
}

/// `normalize_path` and `merge_slashes` (and escaped slashes refused)
/// through wasp and Envoy: for paths with dot segments (plain and
/// escaped), runs of slashes, backslashes, escapes and characters a
/// canonical path escapes, the same status and the same path upstream.
#[test]
fn paths_are_normalized_as_envoy_normalizes_them() {
    let backend = HttpBackend::start("normal");
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = &prefix_routes(&[("/".into(), "cluster: b".into())]);
    let paths = [
        "/a/./b/../c",
        "/a/b/..",
        "/../a",
        "//a///b//",
        "/a/%2e%2e/b",
        "/a/.%2E/b",
        "/%41%7e%2f%20x",
        "/a\\b",
        "/a/b?x=/../y//z",
        "/a/..b/c",
        "/%zz",
        "/a;b/../c",
        "/a|b",
        "/a%00b",
        "/plain",
    ];
    let ask = |port: u16, path: &str| {
        let wire = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let (text, _) = raw_exchange(port, wire.as_bytes());
        let status = text.split(' ').nth(1).unwrap_or("").to_string();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let upstream = serde_json::from_str::<serde_json::Value>(body)
            .map(|j| j["path"].clone())
            .unwrap_or(serde_json::Value::Null);
        (status, upstream)
    };
    let extra = "          normalize_path: true\n          merge_slashes: true\n";
    let reject = "          path_with_escaped_slashes_action: REJECT_REQUEST\n";
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let (port, strict) = (free_port(), free_port());
        let _p = one_worker(kind, &hcm(port, vhosts, extra, &clusters));
        let _s = one_worker(kind, &hcm(strict, vhosts, reject, &clusters));
        let mut answers: Vec<_> = paths.iter().map(|p| ask(port, p)).collect();
        answers.push(ask(strict, "/a%2Fb"));
        answers.push(ask(strict, "/a/b"));
        seen.push(answers);
    }
    for (i, (w, e)) in seen[0].iter().zip(&seen[1]).enumerate() {
        let path = paths.get(i).copied().unwrap_or("(escaped slashes)");
        assert_eq!(w, e, "{path}: wasp, then Envoy");
    }
    assert_eq!(seen[0][0], ("200".to_string(), serde_json::json!("/a/c")));
    assert_eq!(seen[0][paths.len()].0, "400");
}

/// Who the client is, as Envoy decides it from x-forwarded-for: with and
/// without use_remote_address, with `xff_num_trusted_hops`, and with
/// `internal_address_config`. Through wasp and Envoy, for several
/// x-forwarded-for values, the same x-envoy-internal,
/// x-envoy-external-address and x-forwarded-proto upstream, and the same
/// `%DOWNSTREAM_REMOTE_ADDRESS%` and `%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%`
/// in the access log.
#[test]
fn client_address_from_forwarded_for_as_envoy() {
    let backend = HttpBackend::start("forwarded");
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = &prefix_routes(&[("/".into(), "cluster: b".into())]);
    let internal = "          internal_address_config: { cidr_ranges: [ { address_prefix: 1.0.0.0, prefix_len: 8 }, { address_prefix: 127.0.0.0, prefix_len: 8 } ] }\n";
    let edge = "          use_remote_address: true\n".to_string();
    let trusted = format!("{edge}          xff_num_trusted_hops: 1\n{internal}");
    let forwarded = [
        None,
        Some("1.1.1.1"),
        Some("2.1.1.1, 1.1.1.1"),
        Some("1.1.1.1,bogus"),
        Some("::1"),
    ];
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let log = wasp_tests::temp_dir("forwarded-log").join("access.log");
        let behind = format!(
            "{internal}          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format: {{ text_format_source: {{ inline_string: \"%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%\\n\" }} }}\n",
            log.display()
        );
        let mut args = vec!["--concurrency", "1"];
        if kind == wasp_tests::Kind::Envoy {
            // Envoy writes its log file every 10 s by default.
            args.extend(["--file-flush-interval-msec", "20"]);
        }
        let (mut answers, mut proxies) = (Vec::new(), Vec::new());
        for extra in [&edge, &trusted, &behind] {
            let port = free_port();
            // Kept running until the access log has been read.
            proxies.push(Proxy::launch(
                kind,
                &hcm(port, vhosts, extra, &clusters),
                &args,
            ));
            for xff in forwarded {
                let url = format!("http://127.0.0.1:{port}/");
                let mut a = vec!["-H", "x-forwarded-proto: https", &url];
                let header = xff.map(|x| format!("x-forwarded-for: {x}"));
                if let Some(h) = &header {
                    a.extend(["-H", h]);
                }
                let j = curl(&a).json();
                let h = &j["headers"];
                answers.push([
                    h["x-envoy-internal"].clone(),
                    h["x-envoy-external-address"].clone(),
                    h["x-forwarded-proto"].clone(),
                ]);
            }
        }
        // The peer's port differs from run to run: only its address is kept.
        let lines =
            wasp_tests::eventually(std::time::Duration::from_secs(10), "the access log", || {
                let text = std::fs::read_to_string(&log).ok()?;
                let lines: Vec<String> = text
                    .lines()
                    .map(|l| match l.split_once(' ') {
                        Some((remote, direct)) if remote.starts_with("127.0.0.1:") => {
                            format!("127.0.0.1:peer {direct}")
                        }
                        _ => l.to_string(),
                    })
                    .collect();
                (lines.len() == forwarded.len()).then_some(lines)
            });
        seen.push((answers, lines));
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let (answers, lines) = &seen[0];
    let row = |i: usize| {
        answers[i]
            .iter()
            .map(|v| v.as_str().unwrap_or("-"))
            .collect::<Vec<_>>()
    };
    // At the edge, the client's x-forwarded-proto is replaced.
    assert_eq!(row(1), ["-", "127.0.0.1", "http"]);
    // One hop trusted: the address it appended is the client.
    assert_eq!(row(7), ["-", "1.1.1.1", "https"]);
    assert_eq!(row(5), ["true", "-", "https"]);
    // Behind a proxy: the last address is the client, internal if alone.
    assert_eq!(row(11), ["true", "-", "https"]);
    assert_eq!(row(12), ["-", "-", "https"]);
    assert_eq!(
        lines,
        &[
            "127.0.0.1:peer 127.0.0.1",
            "1.1.1.1:0 127.0.0.1",
            "1.1.1.1:0 127.0.0.1",
            "127.0.0.1:peer 127.0.0.1",
            "[::1]:0 127.0.0.1",
        ]
    );
}

/// wasp's own answers to gRPC requests (no route, no upstream, a direct
/// response, a redirect) go out as Envoy sends them: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` from the HTTP status
/// and the body, percent-encoded, as `grpc-message`; over HTTP/2 and
/// HTTP/1.1, through wasp and Envoy alike. A request that is not gRPC
/// still gets the plain answer.
#[test]
fn local_replies_to_grpc_requests_as_envoy() {
    let dead = free_port();
    let clusters = wasp_tests::config::cluster(
        "dead",
        "ROUND_ROBIN",
        &[(SocketAddr::from(([127, 0, 0, 1], dead)), 1)],
        "",
    );
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/dead\" }\n                route: { cluster: dead }\n              - match: { prefix: \"/direct\" }\n                direct_response: { status: 503, body: { inline_string: \"direct: é 100%\" } }\n              - match: { prefix: \"/moved\" }\n                redirect: { path_redirect: \"/elsewhere\" }\n";
    let ask = |port: u16, path: &str, h2: bool, content_type: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        let ct = format!("content-type: {content_type}");
        // No body: a client still sending one when the answer comes may see
        // the stream reset after it (curl reports error 92 then, with Envoy too).
        let mut args = vec!["-H", &ct, "-X", "POST", &url];
        if h2 {
            args.push("--http2-prior-knowledge");
        }
        let r = curl(&args);
        let header = |n: &str| r.header(n).unwrap_or("-").to_string();
        (
            r.status,
            header("content-type"),
            header("grpc-status"),
            header("grpc-message"),
            header("location").replace(&port.to_string(), "<port>"),
            r.body.clone(),
        )
    };
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let _p = one_worker(kind, &hcm(port, vhosts, "", &clusters));
        let mut answers = Vec::new();
        for h2 in [true, false] {
            for path in ["/dead", "/direct", "/moved", "/nowhere"] {
                answers.push(ask(port, path, h2, "application/grpc"));
            }
            answers.push(ask(port, "/dead", h2, "application/grpc+proto"));
            answers.push(ask(port, "/dead", h2, "application/json"));
        }
        seen.push(answers);
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let grpc = |status: &str, message: &str| {
        (
            200,
            "application/grpc".to_string(),
            status.to_string(),
            message.to_string(),
        )
    };
    let head = |a: &(u16, String, String, String, String, String)| {
        (a.0, a.1.clone(), a.2.clone(), a.3.clone())
    };
    let answers = &seen[0];
    let refused = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
    assert_eq!(head(&answers[0]), grpc("14", refused));
    assert_eq!(head(&answers[1]), grpc("14", "direct: %C3%A9 100%25"));
    assert_eq!(head(&answers[2]), grpc("2", "-"));
    assert_eq!(answers[2].4, "http://127.0.0.1:<port>/elsewhere");
    assert_eq!(head(&answers[3]), grpc("12", "-"));
    assert_eq!(head(&answers[4]), grpc("14", refused));
    assert_eq!((answers[5].0, answers[5].5.as_str()), (503, refused));
    assert!(
        answers
            .iter()
            .all(|a| a.1 != "application/grpc" || a.5.is_empty())
    );
}

/// `max_stream_duration` as Envoy keeps it: the connection manager's
/// (`common_http_protocol_options`), a route's own (0: none, and the
/// route's `timeout` no longer applies), a request's `grpc-timeout` where
/// the route sets `grpc_timeout_header_max` (capped by it, less the
/// offset). Before the response starts the answer is 504 `downstream
/// duration timeout` (DEADLINE_EXCEEDED to a gRPC client); a response
/// still streaming is cut off. Through wasp and Envoy: the same answers,
/// each about as late, and the same count in
/// `downstream_rq_max_duration_reached`.
#[test]
fn max_stream_duration_as_envoy() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let backend = HttpBackend::start("duration");
    // Answers a head and half its body, then waits before the rest.
    let stalling_addr = raw_backend(|_, conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab");
        std::thread::sleep(Duration::from_secs(2));
        let _ = conn.write_all(b"cd");
    });
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(backend.addr, 1)], "")
        + &wasp_tests::config::cluster("stall", "ROUND_ROBIN", &[(stalling_addr, 1)], "");
    let route = |prefix: &str, action: &str| {
        format!(
            "              - match: {{ prefix: \"{prefix}\" }}\n                route: {{ {action} }}\n"
        )
    };
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n"
        .to_string()
        + &route(
            "/own",
            "cluster: b, max_stream_duration: { max_stream_duration: 0.2s }",
        )
        + &route(
            "/off",
            "cluster: b, timeout: 0.1s, max_stream_duration: { max_stream_duration: 0s }",
        )
        + &route(
            "/grpc",
            "cluster: b, max_stream_duration: { grpc_timeout_header_max: 0s }",
        )
        + &route(
            "/capped",
            "cluster: b, max_stream_duration: { grpc_timeout_header_max: 0.2s, grpc_timeout_header_offset: 0.05s }",
        )
        + &route("/stall", "cluster: stall")
        + &route("/", "cluster: b");
    let extra = "          common_http_protocol_options: { max_stream_duration: 0.4s }\n";
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let proxy = one_worker(kind, &hcm(port, &vhosts, extra, &clusters));
        let ask = |path: &str, headers: &[&str]| {
            let url = format!("http://127.0.0.1:{port}{path}");
            let mut args = vec![url.as_str()];
            for h in headers {
                args.extend(["-H", h]);
            }
            let began = Instant::now();
            let r = curl(&args);
            let took = began.elapsed();
            (
                (
                    r.status,
                    r.header("grpc-status").map(String::from),
                    r.body.clone(),
                ),
                took,
            )
        };
        let (mut answers, took): (Vec<_>, Vec<_>) = [
            ask("/x?delay_ms=1000", &[]),
            ask("/own?delay_ms=1000", &[]),
            ask("/off?delay_ms=600", &[]),
            ask("/grpc?delay_ms=1000", &[]),
            ask("/grpc?delay_ms=1000", &["grpc-timeout: 200m"]),
            ask(
                "/grpc?delay_ms=1000",
                &["grpc-timeout: 200m", "content-type: application/grpc"],
            ),
            ask("/capped?delay_ms=1000", &["grpc-timeout: 5S"]),
        ]
        .into_iter()
        .unzip();
        for a in &mut answers {
            if a.0 == 200 && a.1.is_none() {
                a.2 = "(backend's)".into();
            }
        }
        // Each answer came when its deadline (or the backend) said, give or
        // take a slow machine: 0.4 s (the connection manager's), 0.2 s
        // (the route's), 0.6 s (the backend: no limit, no route timeout),
        // 0.4 s (no grpc-timeout), 0.2 s (grpc-timeout), 0.15 s (capped).
        let due = [400, 200, 600, 400, 200, 200, 150];
        for (took, due) in took.iter().zip(due) {
            let due = Duration::from_millis(due);
            assert!(
                *took >= due && *took < due + Duration::from_millis(700),
                "{took:?} for {due:?}"
            );
        }
        // A response cut off: the client gets the head and half the body,
        // then a reset stream, when the connection manager's 0.4 s is up.
        let began = Instant::now();
        let out = std::process::Command::new("curl")
            .args(["-s", "--http2-prior-knowledge", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{port}/stall"))
            .output()
            .unwrap();
        let cut = (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            began.elapsed() < Duration::from_millis(1500),
        );
        let reached = wasp_tests::eventually(Duration::from_secs(5), "the stat", || {
            let n = proxy.stat("http.edge.downstream_rq_max_duration_reached");
            (n >= 7).then_some(n)
        });
        seen.push((answers, cut, reached));
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let (answers, cut, reached) = &seen[0];
    let statuses: Vec<_> = answers.iter().map(|a| a.0).collect();
    assert_eq!(statuses, [504, 504, 200, 504, 504, 200, 504]);
    assert_eq!(answers[0].2, "downstream duration timeout");
    assert_eq!(answers[5].1.as_deref(), Some("4"));
    assert_eq!(cut, &(false, "ab".to_string(), true));
    assert_eq!(*reached, 7);
}

/// Access log `filter`s as Envoy applies them (and, or, status code,
/// response flags, a request header, duration, a sample by request id):
/// through wasp and Envoy,
/// the same requests leave the same entries, and an entry's
/// `%DURATION%` counts from the request's start.
#[test]
fn access_log_filters_as_envoy() {
    let backend = HttpBackend::start("logged");
    let clusters = live_and_dead(&backend);
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/dead\" }\n                route: { cluster: dead }\n              - match: { prefix: \"/direct\" }\n                direct_response: { status: 503 }\n              - match: { prefix: \"/ok\" }\n                route: { cluster: b }\n";
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let log = wasp_tests::temp_dir("filtered-log").join("access.log");
        let extra = format!(
            r#"          access_log:
          - name: envoy.access_loggers.file
            filter:
              or_filter:
                filters:
                - and_filter:
                    filters:
                    - status_code_filter: {{ comparison: {{ op: GE, value: {{ default_value: 500, runtime_key: errors }} }} }}
                    - response_flag_filter: {{ flags: [UF, UH] }}
                - header_filter: {{ header: {{ name: x-log, present_match: true }} }}
                - duration_filter: {{ comparison: {{ op: GE, value: {{ default_value: 300, runtime_key: slow }} }} }}
                - and_filter:
                    filters:
                    - header_filter: {{ header: {{ name: x-sampled, present_match: true }} }}
                    - runtime_filter: {{ runtime_key: sampled, percent_sampled: {{ numerator: 10, denominator: HUNDRED }} }}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format_source: {{ inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)% %DURATION%\n" }} }}
"#,
            log.display()
        );
        let mut args = vec!["--concurrency", "1"];
        if kind == wasp_tests::Kind::Envoy {
            // Envoy writes its log file every 10 s by default.
            args.extend(["--file-flush-interval-msec", "20"]);
        }
        let port = free_port();
        let _p = Proxy::launch(kind, &hcm(port, vhosts, &extra, &clusters), &args);
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        for (path, header) in [
            ("/ok/plain", None),
            ("/dead", None),
            ("/direct", None),
            ("/nowhere", None),
            ("/ok/asked", Some("x-log: yes")),
            ("/ok/slow?delay_ms=400", None),
            // Sampled by request id: 0x09 % 100 is in the 10%, 0x0a and
            // 0x63 are not.
            ("/ok/id-09", Some("00000009-0000-4000-8000-000000000000")),
            ("/ok/id-0a", Some("0000000a-0000-4000-8000-000000000000")),
            ("/ok/id-63", Some("00000063-0000-4000-8000-000000000000")),
        ] {
            let u = url(path);
            let mut a = vec![u.as_str()];
            let id;
            match header {
                Some(h) if path.starts_with("/ok/id-") => {
                    id = format!("x-request-id: {h}");
                    a.extend(["-H", "x-sampled: 1", "-H", &id]);
                }
                Some(h) => a.extend(["-H", h]),
                None => {}
            }
            curl(&a);
        }
        // One more entry, so that its arrival says the others are in.
        curl(&["-H", "x-log: last", &url("/ok/last")]);
        let lines = wasp_tests::eventually(std::time::Duration::from_secs(10), "the log", || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("/ok/last").then_some(text)
        });
        // The duration as slow (at least the 400 ms the backend waited) or
        // not: the two proxies' milliseconds differ.
        let entries: Vec<String> = lines
            .lines()
            .map(|l| match l.rsplit_once(' ') {
                Some((rest, ms)) if ms.parse::<u64>().is_ok_and(|ms| ms >= 400) => {
                    format!("{rest} slow")
                }
                Some((rest, _)) => rest.to_string(),
                None => l.to_string(),
            })
            .collect();
        seen.push(entries);
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    assert_eq!(
        seen[0],
        [
            "503 UF /dead",
            "200 - /ok/asked",
            "200 - /ok/slow?delay_ms=400 slow",
            "200 - /ok/id-09",
            "200 - /ok/last"
        ]
    );
}

/// `local_reply_config` as Envoy applies it: the first mapper whose filter
/// takes a local reply rewrites its status, body and headers; a body
/// format (the mapper's JSON override, else the config's text one)
/// renders `%LOCAL_REPLY_BODY%` and request fields, with its content
/// type. Upstream answers are untouched. Through wasp and Envoy alike.
#[test]
fn local_reply_config_as_envoy() {
    let backend = HttpBackend::start("unmapped");
    let clusters = live_and_dead(&backend);
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/dead\" }\n                route: { cluster: dead }\n              - match: { prefix: \"/direct\" }\n                direct_response: { status: 503, body: { inline_string: \"direct body\" } }\n              - match: { prefix: \"/ok\" }\n                route: { cluster: b }\n";
    let extra = r#"          local_reply_config:
            mappers:
            - filter: { status_code_filter: { comparison: { op: EQ, value: { default_value: 404, runtime_key: k } } } }
              status_code: 410
              body: { inline_string: "gone: nothing here" }
              headers_to_add: [ { header: { key: x-mapped, value: "yes" } } ]
            - filter: { header_filter: { header: { name: x-json, present_match: true } } }
              body_format_override:
                json_format: { code: "%RESPONSE_CODE%", message: "%LOCAL_REPLY_BODY%", path: "%REQ(:PATH)%" }
            body_format:
              text_format: "[%RESPONSE_CODE%] %LOCAL_REPLY_BODY% (%REQ(:PATH)%)\n"
              content_type: "text/x-wasp"
"#;
    const GRPC: &str = "content-type: application/grpc";
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let _p = one_worker(kind, &hcm(port, vhosts, extra, &clusters));
        let mut answers = Vec::new();
        for (path, extra) in [
            ("/dead", &[][..]),
            ("/direct", &[]),
            ("/nothing", &[]),
            ("/nothing", &["x-json: 1"]),
            ("/dead", &["x-json: 1"]),
            ("/ok", &[]),
            // Rewritten first, then in the gRPC form.
            ("/nothing", &[GRPC]),
            ("/dead", &[GRPC, "x-json: 1"]),
        ] {
            let url = format!("http://127.0.0.1:{port}{path}");
            let mut args = vec![url.as_str()];
            for h in extra {
                args.extend(["-H", h]);
            }
            let r = curl(&args);
            let header = |n: &str| r.header(n).map(String::from);
            let body = match path {
                "/ok" => "(the backend's)".to_string(),
                _ => r.body.clone(),
            };
            answers.push((
                r.status,
                [
                    header("content-type"),
                    header("x-mapped"),
                    header("grpc-status"),
                    header("grpc-message"),
                ],
                body,
            ));
        }
        seen.push(answers);
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let answers = &seen[0];
    assert_eq!(answers[1].2, "[503] direct body (/direct)\n");
    assert_eq!(answers[2].0, 410);
    assert_eq!(answers[2].1[1].as_deref(), Some("yes"));
    assert_eq!(answers[2].2, "[410] gone: nothing here (/nothing)\n");
    assert_eq!(answers[4].1[0].as_deref(), Some("application/json"));
    assert!(
        answers[4].2.starts_with("{\"code\":503,"),
        "{}",
        answers[4].2
    );
    assert_eq!(answers[5].0, 200);
    let grpc = &answers[6];
    assert_eq!((grpc.0, grpc.1[1].as_deref()), (200, Some("yes")));
    // 410 maps to UNKNOWN; the rendered text body is the message.
    assert_eq!(grpc.1[2].as_deref(), Some("2"));
    assert_eq!(
        grpc.1[3].as_deref(),
        Some("[410] gone: nothing here (/nothing)%0A")
    );
    // A JSON one loses its newline.
    assert!(
        answers[7].1[3]
            .as_deref()
            .unwrap_or("")
            .ends_with("\"/dead\"}")
    );
}

/// Clusters `b`, of `backend`, and `dead`, whose one endpoint is a free
/// port nothing listens on.
fn live_and_dead(backend: &HttpBackend) -> String {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(backend.addr, 1)], "")
        + &wasp_tests::config::cluster("dead", "ROUND_ROBIN", &[(dead, 1)], "")
}

/// A retry tells the upstream the time left: `x-envoy-expected-rq-timeout-ms`
/// on the second try is the route's timeout less what the first took (the
/// first try, which failed after 500 ms, had the whole 3 s). Through wasp
/// and Envoy alike.
#[test]
fn retries_are_told_the_time_left_as_envoy() {
    use std::io::Write;
    // Answers 503 after 500 ms to a first try, else 200 with the expected
    // timeout it was told as its body.
    let addr = raw_backend(|head, conn| {
        let head = head.to_ascii_lowercase();
        let told = head
            .lines()
            .find_map(|l| l.strip_prefix("x-envoy-expected-rq-timeout-ms: "))
            .unwrap_or("-")
            .to_string();
        let answer = if head.contains("x-envoy-attempt-count: 1\r") {
            std::thread::sleep(std::time::Duration::from_millis(500));
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_string()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{told}",
                told.len()
            )
        };
        let _ = conn.write_all(answer.as_bytes());
    });
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(addr, 1)], "");
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              include_request_attempt_count: true\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: b, timeout: 3s, retry_policy: { retry_on: 5xx, num_retries: 1 } }\n";
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let _p = one_worker(kind, &hcm(port, vhosts, "", &clusters));
        let r = curl(&[&format!("http://127.0.0.1:{port}/")]);
        assert_eq!(r.status, 200, "{kind:?}: {}", r.body);
        let told: u64 = r.body.parse().unwrap_or(0);
        // 3000 less the first try's 500 ms and a back-off of at most 25 ms,
        // give or take a slow machine.
        assert!((2000..=2500).contains(&told), "{kind:?} told {told} ms");
    }
}

/// A backend written by hand, for answers no HTTP server library gives
/// (a body that stalls, a first try that fails): each connection, on a
/// thread of its own, has its first read (the request head) passed to
/// `answer` with the connection to write to.
fn raw_backend(
    answer: impl Fn(&str, &mut std::net::TcpStream) + Send + Sync + 'static,
) -> SocketAddr {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = [0; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                answer(&String::from_utf8_lossy(&buf[..n]), &mut conn);
            });
        }
    });
    addr
}

/// An answer that goes out before the client has sent all of its body
/// says `connection: close`, reaches the client whole (no reset, though
/// the client is still sending), and counts in
/// `downstream_rq_response_before_rq_complete`, in wasp as in Envoy; a
/// small body already in hand is skipped by wasp and the connection kept.
#[test]
fn early_answers_close_the_connection_as_envoy() {
    use std::io::{Read, Write};
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/direct\" }\n                direct_response: { status: 200, body: { inline_string: \"direct\" } }\n";
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let proxy = one_worker(kind, &hcm(port, vhosts, "", ""));
        for path in ["/direct", "/nowhere"] {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            // 1 MiB announced, 64 KiB sent: the answer comes mid-body.
            let head =
                format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1048576\r\n\r\n");
            conn.write_all(head.as_bytes()).unwrap();
            conn.write_all(&[b'x'; 64 * 1024]).unwrap();
            let mut answer = Vec::new();
            let end = conn.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            assert!(end.is_ok(), "{kind:?} {path}: {end:?} after {answer:?}");
            let status = if path == "/direct" { "200" } else { "404" };
            assert!(
                answer.starts_with(&format!("http/1.1 {status} ")),
                "{kind:?}: {answer}"
            );
            assert!(
                answer.contains("\r\nconnection: close\r\n"),
                "{kind:?}: {answer}"
            );
            if path == "/direct" {
                assert!(answer.ends_with("\r\n\r\ndirect"), "{kind:?}: {answer}");
            }
        }
        wasp_tests::eventually(std::time::Duration::from_secs(5), "the stat", || {
            let n = proxy.stat("http.edge.downstream_rq_response_before_rq_complete");
            (n == 2).then_some(())
        });
    }
    // wasp: a body all in hand when the answer goes is skipped, and the
    // connection serves the next request.
    let port = free_port();
    let _wasp = one_worker(wasp_tests::Kind::Wasp, &hcm(port, vhosts, "", ""));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let request = b"POST /direct HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello";
    for _ in 0..2 {
        conn.write_all(request).unwrap();
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200 "), "{answer}");
        assert!(!answer.contains("connection: close"), "{answer}");
    }
}

/// `max_grpc_timeout` and `grpc_timeout_offset` (deprecated in Envoy, still
/// taken by it): a gRPC request's own `grpc-timeout`, less the offset and
/// capped by the maximum, is its router timeout, and the upstream is told
/// it in `grpc-timeout` and `x-envoy-expected-rq-timeout-ms`. Other
/// requests keep the route's timeout. Through wasp and Envoy alike.
#[test]
fn max_grpc_timeout_as_envoy() {
    use std::io::Write;
    // Tells what it was told; sleeps 1 s first when asked to.
    let addr = raw_backend(|head, conn| {
        let head = head.to_ascii_lowercase();
        let told = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap_or("-")
                .to_string()
        };
        if head.contains("x-sleep: 1") {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        let body = format!(
            "{} {}",
            told("grpc-timeout"),
            told("x-envoy-expected-rq-timeout-ms")
        );
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(answer.as_bytes());
    });
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(addr, 1)], "");
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/capped\" }\n                route: { cluster: b, timeout: 3s, max_grpc_timeout: 2s, grpc_timeout_offset: 0.1s }\n              - match: { prefix: \"/open\" }\n                route: { cluster: b, timeout: 3s, max_grpc_timeout: 0s }\n";
    const GRPC: &str = "content-type: application/grpc";
    let cases: &[(&str, &[&str])] = &[
        ("/capped", &[GRPC, "grpc-timeout: 500m"]),
        ("/capped", &[GRPC, "grpc-timeout: 10S"]),
        ("/capped", &[GRPC]),
        ("/capped", &[]),
        ("/open", &[GRPC, "grpc-timeout: 1S"]),
        ("/open", &[GRPC]),
        ("/capped", &[GRPC, "grpc-timeout: 300m", "x-sleep: 1"]),
    ];
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let _p = one_worker(kind, &hcm(port, vhosts, "", &clusters));
        let answers: Vec<_> = cases
            .iter()
            .map(|(path, headers)| {
                let url = format!("http://127.0.0.1:{port}{path}");
                let mut args = vec![url.as_str()];
                for h in *headers {
                    args.extend(["-H", h]);
                }
                let r = curl(&args);
                (r.status, r.header("grpc-status").map(String::from), r.body)
            })
            .collect();
        seen.push(answers);
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let bodies: Vec<&str> = seen[0].iter().map(|a| a.2.as_str()).collect();
    assert_eq!(
        &bodies[..6],
        &[
            "400m 400",
            "2000m 2000",
            "2000m 2000",
            "- 3000",
            "1000m 1000",
            "- -"
        ]
    );
    // Timed out after 200 ms: 504, to a gRPC client UNAVAILABLE.
    assert_eq!((seen[0][6].0, seen[0][6].1.as_deref()), (200, Some("14")));
}

/// CONNECT forwarded to the cluster (a `connect_matcher` route without
/// `connect_config`), through wasp and Envoy alike: the cluster, itself a
/// proxy, gets an HTTP/1.1 CONNECT for the client's target, and once it
/// answers 200 the client's bytes reach what it tunnels to, from an
/// HTTP/1.1 client (curl's proxy tunnel) and an HTTP/2 one.
#[test]
fn connect_requests_are_forwarded_as_envoy() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    let backend = HttpBackend::start("beyond");
    let beyond = backend.addr;
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen_heads = heads.clone();
    // The upstream proxy: ends each CONNECT and pipes it to `beyond`.
    let next_proxy = raw_backend(move |head, conn| {
        let mut lines: Vec<String> = head
            .trim_end()
            .lines()
            .map(str::to_ascii_lowercase)
            .filter(|l| !l.starts_with("x-request-id:"))
            .collect();
        lines[1..].sort();
        seen_heads.lock().unwrap().push(lines);
        if !head.starts_with("CONNECT ") {
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
            return;
        }
        if head.starts_with("CONNECT denied.example") {
            let _ = conn.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\ndenied");
            return;
        }
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
        let Ok(mut up) = std::net::TcpStream::connect(beyond) else {
            return;
        };
        let (mut from_client, mut to_up) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_up);
            let _ = to_up.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut up, conn);
        let _ = conn.shutdown(std::net::Shutdown::Write);
    });
    let clusters = wasp_tests::config::cluster("up", "ROUND_ROBIN", &[(next_proxy, 1)], "");
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { connect_matcher: {} }\n                route: { cluster: up }\n";
    let extra = "          http2_protocol_options: { allow_connect: true }\n          upgrade_configs: [{ upgrade_type: CONNECT }]\n";
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let _proxy = one_worker(kind, &hcm(port, vhosts, extra, &clusters));
        let r = through_tunnel(port, &[]);
        let h1 = (r.status, r.json()["name"].clone(), r.json()["path"].clone());
        let h2 = h2_connect(port, false);
        // A CONNECT the upstream proxy refuses: its answer comes back.
        let refused = {
            let wire = b"CONNECT denied.example:1 HTTP/1.1\r\nhost: denied.example:1\r\n\r\n";
            let answer = raw_answer(port, wire, true);
            let status = answer.lines().next().unwrap_or("").to_string();
            (status, answer.ends_with("\r\n\r\ndenied"))
        };
        let heads = std::mem::take(&mut *heads.lock().unwrap());
        seen.push((h1, h2, refused, heads));
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let s = &seen[0];
    assert_eq!(s.0, (200, "beyond".into(), "/through".into()));
    assert_eq!(s.1, (200, "beyond".into()));
    assert_eq!(s.2, ("http/1.1 403 forbidden".to_string(), true));
    assert_eq!(s.3.len(), 3, "{:?}", s.3);
    for head in &s.3[..2] {
        assert_eq!(head[0], "connect somewhere.example:1234 http/1.1");
    }
}

/// `tracing` (no provider): the connection manager's decision, written into
/// the x-request-id the upstream gets and counted in
/// `http.<prefix>.tracing.*`, through wasp and Envoy alike: half the ids
/// sampled by their first hex digits, `x-client-trace-id` and
/// `x-envoy-force-trace` forcing it, a decision already in the id kept.
#[test]
fn tracing_decisions_as_envoy() {
    let backend = HttpBackend::start("traced");
    let clusters = wasp_tests::config::cluster("b", "ROUND_ROBIN", &[(backend.addr, 1)], "");
    let vhosts = "            - name: all\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: b }\n";
    let extra = "          tracing: { random_sampling: { value: 50 }, client_sampling: { value: 100 } }\n          internal_address_config: { cidr_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }] }\n";
    let cases: &[(&str, &[&str])] = &[
        ("00001387-0000-4000-8000-000000000000", &[]),
        ("00001388-0000-4000-8000-000000000000", &[]),
        (
            "00001388-0000-4000-8000-000000000001",
            &["x-client-trace-id: c1"],
        ),
        // Forced only by an internal client.
        (
            "00001388-0000-4000-8000-000000000002",
            &["x-envoy-force-trace: 1"],
        ),
        (
            "00001388-0000-4000-8000-000000000004",
            &["x-envoy-force-trace: 1", "x-forwarded-for: 10.0.0.1"],
        ),
        ("00001388-0000-9000-8000-000000000003", &[]),
        ("not-a-uuid", &[]),
    ];
    let mut seen = Vec::new();
    for kind in [wasp_tests::Kind::Wasp, wasp_tests::Kind::Envoy] {
        let port = free_port();
        let proxy = one_worker(kind, &hcm(port, vhosts, extra, &clusters));
        let url = format!("http://127.0.0.1:{port}/");
        let ids: Vec<String> = cases
            .iter()
            .map(|(id, headers)| {
                let id_header = format!("x-request-id: {id}");
                let mut args = vec![url.as_str(), "-H", &id_header];
                for h in *headers {
                    args.extend(["-H", h]);
                }
                let r = curl(&args);
                let got = &r.json()["headers"];
                let forced = got.get("x-envoy-force-trace").is_some();
                format!("{} {forced}", got["x-request-id"].as_str().unwrap_or(""))
            })
            .collect();
        let stats: Vec<i64> = [
            "random_sampling",
            "service_forced",
            "client_enabled",
            "not_traceable",
        ]
        .iter()
        .map(|s| proxy.stat(&format!("http.edge.tracing.{s}")))
        .collect();
        seen.push((ids, stats));
    }
    assert_eq!(seen[0], seen[1], "wasp, then Envoy");
    let (ids, stats) = &seen[0];
    let marks: Vec<&str> = ids[..6].iter().map(|id| &id[14..15]).collect();
    // 0x1387 = 4999 is within 50% of 10,000; 0x1388 = 5000 is not. An
    // external client's x-envoy-force-trace is dropped, not followed.
    assert_eq!(marks, ["9", "4", "b", "4", "a", "9"], "{ids:?}");
    assert!(ids[3].ends_with(" false") && ids[4].ends_with(" true"));
    assert_eq!(ids[6], "not-a-uuid false");
    assert_eq!(stats, &[2, 1, 1, 3]);
}
