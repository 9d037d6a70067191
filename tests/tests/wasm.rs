//! The proxy-wasm host end to end: the real binary running the filters
//! built from `filters/` (and small WAT modules for the edge cases) in
//! front of real hyper backends, with curl as the client. Each test shows
//! one hostcall family through what a client or the log can see.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wasp_tests::http_backend::{HttpBackend, curl};
use wasp_tests::wasm::{cluster, filter, http_config, http_filter};
use wasp_tests::{Proxy, eventually, free_port, run_wasp, temp_dir};

struct Setup {
    proxy: Proxy,
    url: String,
    _backend: HttpBackend,
}

/// wasp with the probe filter (configuration `config`) in front of a JSON
/// backend; cluster `auth` is the same backend.
fn probe(config: &str, extra: &str, args: &[&str]) -> Setup {
    let backend = HttpBackend::start("backend");
    let port = free_port();
    let code = filter("probe");
    let filters = http_filter("probe", code.to_str().unwrap(), config, extra);
    let clusters = cluster("backend", backend.addr) + &cluster("auth", backend.addr);
    let proxy = Proxy::start(&http_config(port, &filters, &clusters), args);
    Setup {
        proxy,
        url: format!("http://127.0.0.1:{port}"),
        _backend: backend,
    }
}

fn get(s: &Setup, action: &str, extra: &[&str]) -> wasp_tests::http_backend::CurlResponse {
    let mut args = vec!["-H".to_string(), format!("x-probe: {action}")];
    for h in extra {
        args.push("-H".into());
        args.push(h.to_string());
    }
    args.push(format!("{}/some/path?q=1", s.url));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args)
}

fn wait_log(p: &Proxy, needle: &str) {
    eventually(Duration::from_secs(5), needle, || {
        p.log().contains(needle).then_some(())
    });
}

#[test]
fn header_maps_get_add_replace_remove_and_set_pairs() {
    let s = probe("{\"tag\": \"t1\"}", "", &[]);
    let r = get(&s, "headers", &["x-replace-me: old", "x-remove-me: gone"]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = r.json();
    let h = &seen["headers"];
    assert_eq!(h["x-probe-seen"], "t1", "added header reaches the upstream");
    assert_eq!(h["x-replace-me"], "replaced");
    assert!(h.get("x-remove-me").is_none(), "removed header: {h}");
    // What the filter read, reported in response headers it added.
    assert_eq!(r.header("x-request-method"), Some("GET"));
    assert_eq!(r.header("x-request-path"), Some("/some/path?q=1"));
    assert!(
        r.header("x-request-authority")
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(r.header("x-request-scheme"), Some("http"));
    assert_eq!(r.header("x-missing-is-none"), Some("true"));
    let names = r.header("x-request-header-names").unwrap();
    for n in [
        ":authority",
        ":method",
        ":path",
        "user-agent",
        "x-probe",
        "x-probe-seen",
        "x-replace-me",
    ] {
        assert!(names.split(',').any(|x| x == n), "{n} missing from {names}");
    }
    assert!(!names.contains("x-remove-me"));
    assert_eq!(
        r.header("x-probe-response-seen"),
        Some("200"),
        "response map read"
    );

    let r = get(&s, "set-all", &[]);
    assert_eq!(
        r.json()["headers"]["x-set-all"],
        "yes",
        "set_header_map_pairs"
    );
    let r = get(&s, "rewrite-path", &[]);
    assert_eq!(
        r.json()["path"],
        "/rewritten",
        ":path rewritten before routing"
    );
}

/// `on_log` comes once the whole response is out, as in Envoy: a client
/// that has read only the head of a large response holds it back.
#[test]
fn on_log_runs_after_the_response_body() {
    use std::io::{Read, Write};
    let s = probe("", "", &[]);
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let size = 32 << 20;
    write!(
        c,
        "GET /bytes?size={size} HTTP/1.1\r\nHost: x\r\nx-probe: none\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 1024];
    let n = c.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    wait_log(&s.proxy, "probe request none /bytes");
    // Socket buffers hold a few MiB at most: the rest waits on this client.
    std::thread::sleep(Duration::from_millis(300));
    let done = format!("probe on_log 200 /bytes?size={size}");
    assert!(
        !s.proxy.log().contains(&done),
        "on_log before the body was out"
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(n + rest.len() > size);
    wait_log(&s.proxy, &done);
}

#[test]
fn local_responses_and_on_log_after_them() {
    let s = probe("", "", &[]);
    let r = get(&s, "deny", &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "denied by probe\n");
    assert_eq!(r.header("x-denied"), Some("yes"));
    // The local reply passes the plugin's own response callback.
    assert_eq!(r.header("x-probe-response-seen"), Some("403"));
    wait_log(
        &s.proxy,
        "wasm log probe probe_root probe_vm: probe on_log 403 /some/path?q=1",
    );
}

#[test]
fn request_and_response_bodies_buffered_and_rewritten() {
    let s = probe("", "", &[]);
    let r = curl(&[
        "-H",
        "x-probe: upper",
        "--data-binary",
        "hello body",
        &format!("{}/echo", s.url),
    ]);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, "HELLO BODY",
        "request body rewritten at end of stream"
    );
    let r = curl(&[
        "-H",
        "x-probe: upper-response",
        "--data-binary",
        "quiet reply",
        &format!("{}/echo", s.url),
    ]);
    assert_eq!(r.body, "QUIET REPLY", "response body rewritten");

    // A body larger than the buffer limit held by a paused filter: 413 (to
    // a backend that answers only after the whole body; /echo would start
    // its response first, and then a reset is all that is left).
    let big = temp_dir("wasm-body").join("big");
    std::fs::write(&big, vec![b'a'; 3 << 20]).unwrap();
    let r = curl(&[
        "-H",
        "x-probe: upper",
        "-H",
        "expect:",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{}/collect", s.url),
    ]);
    assert_eq!(r.status, 413, "{}", r.body);

    // Streamed through a filter that watches but does not hold: byte-exact.
    let r = curl(&[
        "-H",
        "x-probe: none",
        "-H",
        "expect:",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("{}/echo", s.url),
    ]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 3 << 20);
    assert!(r.body.bytes().all(|b| b == b'a'));
}

#[test]
fn http_call_pauses_the_request_until_the_answer() {
    let s = probe("", "", &[]);
    let r = get(&s, "auth", &["x-probe-auth-path: /check"]);
    assert_eq!(r.status, 200, "{r:?}");
    let auth_body = r.json()["headers"]["x-auth-body"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(auth_body.contains("\"path\":\"/check\""), "{auth_body}");
    assert!(
        auth_body.contains("\"authority\"") || auth_body.contains("\"host\":\"auth\""),
        "{auth_body}"
    );

    let r = get(&s, "auth", &["x-probe-auth-path: /check?status=401"]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "auth said 401\n");

    // Unknown cluster: BAD_ARGUMENT from proxy_http_call.
    let r = get(&s, "auth", &["x-probe-cluster: nowhere"]);
    assert_eq!(r.status, 500);
    assert_eq!(r.body, "dispatch failed: BadArgument\n");
}

#[test]
fn http_call_to_a_dead_cluster_answers_503_like_envoy() {
    let backend = HttpBackend::start("backend");
    let port = free_port();
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let code = filter("probe");
    let filters = http_filter("probe", code.to_str().unwrap(), "", "");
    let clusters = cluster("backend", backend.addr) + &cluster("auth", dead);
    let _p = Proxy::start(&http_config(port, &filters, &clusters), &[]);
    let r = curl(&["-H", "x-probe: auth", &format!("http://127.0.0.1:{port}/")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "auth said 503\n");
}

#[test]
fn ticks_resume_paused_streams_and_count_in_shared_data() {
    let s = probe("{\"tick_ms\": 50}", "", &["--concurrency", "2"]);
    let started = Instant::now();
    let r = get(&s, "pause-tick", &[]);
    assert_eq!(r.status, 200, "resumed by the root context's tick");
    assert!(started.elapsed() < Duration::from_secs(2));
    let first: u64 = get(&s, "ticks", &[]).body.trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let later: u64 = get(&s, "ticks", &[]).body.trim().parse().unwrap();
    assert!(later >= first + 4, "ticks {first} → {later}");
}

#[test]
fn shared_data_cas_is_one_store_across_workers() {
    let s = probe("", "", &["--concurrency", "2"]);
    let mut seen: Vec<u64> = (0..40)
        .map(|_| get(&s, "counter", &[]).body.trim().parse().unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (1..=40).collect::<Vec<_>>(),
        "every increment counted once"
    );
    let per_worker = |w: usize| {
        s.proxy.stat(&format!(
            "listener.127.0.0.1_{}.worker_{w}.downstream_cx_total",
            s.url.rsplit(':').next().unwrap()
        ))
    };
    assert!(
        per_worker(0) > 0 && per_worker(1) > 0,
        "both workers served"
    );
}

#[test]
fn shared_queues_deliver_to_the_registering_vm() {
    let s = probe("", "", &["--concurrency", "2"]);
    for i in 0..6 {
        let r = get(&s, "enqueue", &[&format!("x-probe-value: event-{i}")]);
        assert_eq!(r.status, 200);
    }
    wait_log(&s.proxy, "probe queue event event-5");
    let last = eventually(Duration::from_secs(5), "last event", || {
        let b = get(&s, "last-event", &[]).body;
        (b == "event-5").then_some(b)
    });
    assert_eq!(last, "event-5");
}

#[test]
fn metrics_are_one_stat_across_workers() {
    let s = probe("", "", &["--concurrency", "2"]);
    for _ in 0..9 {
        get(&s, "none", &[]);
    }
    let r = get(&s, "metrics", &[]);
    assert_eq!(
        r.body.trim(),
        "10",
        "proxy_get_metric sees every worker's increments"
    );
    assert_eq!(s.proxy.stat("wasmcustom.probe.requests"), 10);
    assert_eq!(s.proxy.stat("wasmcustom.probe.gauge"), 42);
    let (_, prom) = s.proxy.get("/stats/prometheus").unwrap();
    assert!(prom.contains("probe_requests 10"), "{prom}");
    assert!(prom.contains("probe_latency_count"), "histogram exported");
}

#[test]
fn properties_envoy_paths_and_set_property_round_trip() {
    let s = probe("", "", &["--service-node", "node-7"]);
    let r = get(&s, "props", &["x-foo: bar"]);
    let j = r.json();
    assert_eq!(j["plugin_name"], "probe");
    assert_eq!(j["plugin_root_id"], "probe_root");
    assert_eq!(j["plugin_vm_id"], "probe_vm");
    assert_eq!(j["source_ip"], "127.0.0.1");
    assert_eq!(
        j["destination_port"],
        s.url.rsplit(':').next().unwrap().parse::<i64>().unwrap()
    );
    assert_eq!(j["request_path"], "/some/path?q=1");
    assert_eq!(j["request_url_path"], "/some/path");
    assert_eq!(j["request_method"], "GET");
    assert!(
        j["request_host"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(j["request_protocol"], "HTTP/1.1");
    assert_eq!(j["request_header"], "bar");
    assert_eq!(j["node_id"], "node-7");
    assert_eq!(j["connection_id_set"], true);
    assert_eq!(j["custom"], "round-trip");
    assert_eq!(j["missing"], "<none>", "unknown paths are NOT_FOUND");
}

#[test]
fn logging_levels_stdout_stderr_and_the_host_level() {
    let s = probe("", "", &["-l", "debug"]);
    let r = get(&s, "log", &[]);
    assert_eq!(
        r.header("x-log-level"),
        Some("1"),
        "proxy_get_log_level at debug"
    );
    for line in [
        "probe level debug",
        "probe level info",
        "probe level warn",
        "probe level error",
        "probe level critical",
        "probe stdout line",
        "probe stderr line",
    ] {
        wait_log(
            &s.proxy,
            &format!("wasm log probe probe_root probe_vm: {line}"),
        );
    }
    assert!(
        !s.proxy.log().contains("probe level trace"),
        "trace is below debug"
    );
    let info = probe("", "", &[]);
    assert_eq!(get(&info, "log", &[]).header("x-log-level"), Some("2"));
}

#[test]
fn time_environment_foreign_functions_and_grpc() {
    let s = probe("", "", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let t: u128 = get(&s, "time", &[])
        .header("x-time-ns")
        .unwrap()
        .parse()
        .unwrap();
    assert!(t.abs_diff(now) < 5_000_000_000, "{t} vs {now}");
    assert_eq!(
        get(&s, "foreign", &[]).header("x-foreign"),
        Some("Some(NotFound)")
    );
    // gRPC callouts end with UNIMPLEMENTED (12) in on_grpc_call_response,
    // with a message from proxy_get_status.
    let r = get(&s, "grpc", &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            502,
            "grpc status 12 (12): gRPC callouts are not implemented by wasp\n"
        ),
        "a clear status, not a trap"
    );
    // Environment variables come only from vm_config.
    assert_eq!(get(&s, "env", &[]).header("x-env"), Some("<unset>"));
    let env = "                  environment_variables:\n                    key_values: {PROBE_ENV: from-config}\n";
    let s = probe("", env, &[]);
    assert_eq!(get(&s, "env", &[]).header("x-env"), Some("from-config"));
}

#[test]
fn close_stream_resets_the_request() {
    let s = probe("", "", &[]);
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "-H",
            "x-probe: close",
        ])
        .arg(format!("{}/", s.url))
        .output()
        .unwrap();
    assert!(!out.status.success(), "curl saw the stream reset");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000");
    assert_eq!(
        get(&s, "none", &[]).status,
        200,
        "the next request is served"
    );
}

#[test]
fn a_trapping_filter_fails_closed_and_its_vm_is_rebuilt() {
    let s = probe("", "", &[]);
    let r = get(&s, "panic", &[]);
    assert_eq!(r.status, 503, "fail closed");
    wait_log(&s.proxy, "probe was asked to panic");
    wait_log(&s.proxy, "wasm VM failed");
    let r = get(&s, "headers", &[]);
    assert_eq!(r.status, 200, "a new VM serves the next request");
    assert_eq!(r.json()["headers"]["x-probe-seen"], "probe");
}

#[test]
fn fail_open_lets_the_stream_through() {
    let s = probe("", "                failure_policy: FAIL_OPEN\n", &[]);
    let r = get(&s, "panic", &[]);
    assert_eq!(r.status, 200, "fail open: proxied without the filter");
    assert_eq!(r.json()["path"], "/some/path?q=1");
}

#[test]
fn an_endless_loop_is_stopped_at_the_deadline_without_hurting_other_streams() {
    let sandbox = "                sandbox: {callback_deadline: 0.2s}\n";
    let s = probe("", sandbox, &["--concurrency", "1"]);
    let url = s.url.clone();
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let r = curl(&["-H", "x-probe: loop", &format!("{url}/")]);
        (r.status, started.elapsed())
    });
    let (status, took) = slow.join().unwrap();
    assert_eq!(status, 503);
    assert!(
        took < Duration::from_secs(2),
        "stopped near its 0.2s deadline: {took:?}"
    );
    wait_log(&s.proxy, "ran past its deadline");
    // The worker was not blocked for good: more requests are served.
    for _ in 0..5 {
        assert_eq!(get(&s, "none", &[]).status, 200);
    }
}

#[test]
fn add_header_filter_configured_by_string_value() {
    let backend = HttpBackend::start("backend");
    let port = free_port();
    let code = filter("add_header");
    let filters = http_filter("adder", code.to_str().unwrap(), "from-config", "");
    let _p = Proxy::start(
        &http_config(port, &filters, &cluster("backend", backend.addr)),
        &[],
    );
    let r = curl(&[&format!("http://127.0.0.1:{port}/x")]);
    assert_eq!(r.json()["headers"]["x-wasm-filter"], "from-config");
    assert_eq!(r.header("x-wasm-filter"), Some("from-config"));
}

fn validate_with(filters: &str) -> (bool, String) {
    let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = http_config(
        free_port(),
        filters,
        &(cluster("backend", backend) + &cluster("auth", backend)),
    );
    let dir = temp_dir("wasm-validate");
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let out = run_wasp(&["--mode", "validate", "-c", path.to_str().unwrap()]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

fn wat_file(text: &str) -> String {
    let path = temp_dir("wat").join("module.wat");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn start_up_failures_are_config_errors() {
    let code = filter("probe");
    let (ok, out) = validate_with(&http_filter(
        "probe",
        code.to_str().unwrap(),
        "{\"reject\": true}",
        "",
    ));
    assert!(!ok);
    assert!(out.contains("proxy_on_configure returned false"), "{out}");
    assert!(out.contains("http_filters[0]"), "names the filter: {out}");

    let (ok, out) = validate_with(&http_filter("probe", "/no/such/file.wasm", "", ""));
    assert!(!ok);
    assert!(out.contains("/no/such/file.wasm"), "{out}");

    let (ok, out) = validate_with(&http_filter(
        "probe",
        code.to_str().unwrap(),
        "{\"tag\": \"fine\"}",
        "",
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("probe configured tag=fine"),
        "validation started the plugin: {out}"
    );
}

const MEMORY_AND_ALLOC: &str = r#"
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
"#;

#[test]
fn bad_modules_are_rejected_with_what_is_wrong() {
    let unknown_import = wat_file(&format!(
        r#"(module
  (import "env" "proxy_teleport" (func (param i32) (result i32)))
  (import "env" "proxy_log" (func (param i32 i32) (result i32)))
  (func (export "proxy_abi_version_0_2_1"))
  {MEMORY_AND_ALLOC})"#
    ));
    let (ok, out) = validate_with(&http_filter("bad", &unknown_import, "", ""));
    assert!(!ok);
    assert!(out.contains("env.proxy_teleport"), "{out}");
    assert!(
        out.contains("env.proxy_log"),
        "wrong signature listed too: {out}"
    );

    let no_abi = wat_file(&format!("(module {MEMORY_AND_ALLOC})"));
    let (ok, out) = validate_with(&http_filter("bad", &no_abi, "", ""));
    assert!(!ok);
    assert!(out.contains("Proxy-Wasm ABI version"), "{out}");

    let no_alloc = wat_file(
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#,
    );
    let (ok, out) = validate_with(&http_filter("bad", &no_alloc, "", ""));
    assert!(!ok);
    assert!(out.contains("allocator"), "{out}");

    let wrong_sig = wat_file(&format!(
        r#"(module (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_request_headers") (param i32) (result i32) (i32.const 0))
  {MEMORY_AND_ALLOC})"#
    ));
    let (ok, out) = validate_with(&http_filter("bad", &wrong_sig, "", ""));
    assert!(!ok);
    assert!(
        out.contains("proxy_on_request_headers") && out.contains("wrong signature"),
        "{out}"
    );

    let traps_at_start = wat_file(&format!(
        r#"(module (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) unreachable)
  {MEMORY_AND_ALLOC})"#
    ));
    let (ok, out) = validate_with(&http_filter("bad", &traps_at_start, "", ""));
    assert!(!ok);
    assert!(out.contains("unreachable"), "{out}");
}

/// A WAT filter that calls `proxy_log` with a pointer outside its memory
/// and answers with status 500 + the status it got back.
#[test]
fn out_of_bounds_pointers_are_a_status_not_a_crash() {
    let module = wat_file(&format!(
        r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $reply (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $reply
      (i32.add (i32.const 500) (call $log (i32.const 2) (i32.const 0xfffffff0) (i32.const 64)))
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
      (i32.const -1)))
    (i32.const 1))
  {MEMORY_AND_ALLOC})"#
    ));
    let backend = HttpBackend::start("backend");
    let port = free_port();
    let filters = http_filter("oob", &module, "", "");
    let _p = Proxy::start(
        &http_config(port, &filters, &cluster("backend", backend.addr)),
        &[],
    );
    let r = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(r.status, 506, "INVALID_MEMORY_ACCESS is 6");
}

/// ABI 0.1.0: two-argument header callbacks and `proxy_continue_request`.
#[test]
fn abi_0_1_0_modules_run() {
    let module = wat_file(&format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_request" (func $cont (result i32)))
  (data (i32.const 16) "x-abi")
  (data (i32.const 32) "0.1.0")
  (func (export "proxy_abi_version_0_1_0"))
  (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 32) (i32.const 5)))
    (i32.const 0))
  {MEMORY_AND_ALLOC})"#
    ));
    let backend = HttpBackend::start("backend");
    let port = free_port();
    let filters = http_filter("old", &module, "", "");
    let _p = Proxy::start(
        &http_config(port, &filters, &cluster("backend", backend.addr)),
        &[],
    );
    let r = curl(&[&format!("http://127.0.0.1:{port}/")]);
    assert_eq!(r.json()["headers"]["x-abi"], "0.1.0");
}

#[test]
fn network_filter_sees_and_changes_both_directions() {
    use std::io::{Read, Write};
    let echo = wasp_tests::backend::echo();
    let port = free_port();
    let code = filter("tcp_probe");
    let config = wasp_tests::wasm::network_config(
        port,
        &wasp_tests::wasm::network_filter("tcp_probe", code.to_str().unwrap(), ""),
        &wasp_tests::wasm::tcp_proxy("echo"),
        &cluster("echo", echo.addr),
    );
    let p = Proxy::start(&config, &[]);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"ping pong\n").unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"[wasm]PING pong\n",
        "downstream rewritten, upstream prefixed"
    );
    // `hold` is held (PAUSE) until more data arrives, then both go on.
    c.write_all(b"hold").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.write_all(b" more\n").unwrap();
    let n = c.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"[wasm]hold more\n");
    // `close` closes the connection from the filter.
    c.write_all(b"close now\n").unwrap();
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed by the filter");
    wait_log(&p, "tcp_probe new connection from 127.0.0.1");
    wait_log(&p, "tcp_probe downstream close 1");
    wait_log(&p, "tcp_probe on_log");
    // data_size counts what is offered: held bytes are offered again with
    // the next read (10 + 4 + 10 + 10).
    assert_eq!(p.stat("wasmcustom.tcp_probe.downstream_bytes"), 34);
    assert_eq!(
        p.stat("wasmcustom.tcp_probe.upstream_bytes"),
        20,
        "two echoed lines"
    );
}

#[test]
fn network_filter_in_front_of_redis_proxy() {
    let redis = wasp_tests::redis::RedisServer::start();
    let port = free_port();
    let code = filter("tcp_probe");
    let terminal = r#"      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: redis
          settings: {op_timeout: 1s}
          prefix_routes: {catch_all_route: {cluster: redis}}
"#;
    let config = wasp_tests::wasm::network_config(
        port,
        &wasp_tests::wasm::network_filter("tcp_probe", code.to_str().unwrap(), "passthrough"),
        terminal,
        &cluster("redis", redis.addr()),
    );
    let p = Proxy::start(&config, &[]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        wasp_tests::redis::raw_command(addr, &["SET", "k", "v"]),
        "+OK\r\n"
    );
    assert_eq!(
        wasp_tests::redis::raw_command(addr, &["GET", "k"]),
        "$1\r\nv\r\n"
    );
    assert!(
        redis.command(&["GET", "k"]).contains('v'),
        "the key reached redis"
    );
    eventually(Duration::from_secs(5), "byte counters", || {
        (p.stat("wasmcustom.tcp_probe.downstream_bytes") > 0
            && p.stat("wasmcustom.tcp_probe.upstream_bytes") > 0)
            .then_some(())
    });
}
