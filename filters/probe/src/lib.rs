//! A test filter. The request header `x-probe` picks what it does; together
//! the actions call every proxy-wasm hostcall family, and each makes the
//! outcome visible to the client (status, headers, body) or in the log.
//!
//! Plugin configuration (JSON, optional): `{"tag": "...", "tick_ms": N,
//! "reject": true, "cluster": "auth"}`.

use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

thread_local! {
    /// Streams paused until the next tick.
    static PAUSED: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default, Clone)]
struct Config {
    tag: String,
    cluster: String,
    tick_ms: u64,
}

#[derive(Default)]
struct Root {
    config: Config,
    queue: Option<u32>,
    requests: Option<u32>,
}

impl Context for Root {}

fn log(level: LogLevel, msg: &str) {
    hostcalls::log(level, msg).ok();
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let vm_config = self.get_vm_configuration().unwrap_or_default();
        log(
            LogLevel::Info,
            &format!(
                "probe vm_start config={}",
                String::from_utf8_lossy(&vm_config)
            ),
        );
        if let Ok(v) = std::env::var("PROBE_ENV") {
            log(LogLevel::Info, &format!("probe env PROBE_ENV={v}"));
        }
        self.queue = Some(self.register_shared_queue("probe.events"));
        self.requests = hostcalls::define_metric(MetricType::Counter, "probe.requests").ok();
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let json: serde_json::Value = if raw.is_empty() {
            serde_json::json!({})
        } else {
            match serde_json::from_slice(&raw) {
                Ok(v) => v,
                Err(e) => {
                    log(LogLevel::Error, &format!("probe bad configuration: {e}"));
                    return false;
                }
            }
        };
        if json["reject"].as_bool() == Some(true) {
            log(LogLevel::Warn, "probe rejects its configuration");
            return false;
        }
        self.config = Config {
            tag: json["tag"].as_str().unwrap_or("probe").to_string(),
            cluster: json["cluster"].as_str().unwrap_or("auth").to_string(),
            tick_ms: json["tick_ms"].as_u64().unwrap_or(0),
        };
        if self.config.tick_ms > 0 {
            self.set_tick_period(Duration::from_millis(self.config.tick_ms));
        }
        log(
            LogLevel::Info,
            &format!("probe configured tag={}", self.config.tag),
        );
        true
    }

    fn on_tick(&mut self) {
        bump_shared("probe.ticks");
        let paused: Vec<u32> = PAUSED.with(|p| p.borrow_mut().drain(..).collect());
        for id in paused {
            if hostcalls::set_effective_context(id).is_ok() {
                hostcalls::resume_http_request().ok();
            }
        }
    }

    fn on_queue_ready(&mut self, queue: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue) {
            let item = String::from_utf8_lossy(&item).into_owned();
            log(LogLevel::Info, &format!("probe queue event {item}"));
            let (_, cas) = self.get_shared_data("probe.last_event");
            self.set_shared_data("probe.last_event", Some(item.as_bytes()), cas)
                .ok();
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Probe {
            id,
            config: self.config.clone(),
            requests: self.requests,
            action: String::new(),
            notes: Vec::new(),
            streamed: (0, 0),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Adds one to a shared counter, with compare-and-swap retries.
fn bump_shared(key: &str) -> u64 {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n: u64 = value
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0)
            + 1;
        match hostcalls::set_shared_data(key, Some(n.to_string().as_bytes()), cas) {
            Ok(()) => return n,
            Err(Status::CasMismatch) => continue,
            Err(_) => return 0,
        }
    }
}

struct Probe {
    id: u32,
    config: Config,
    requests: Option<u32>,
    action: String,
    /// Response headers to add, gathered during the request.
    notes: Vec<(String, String)>,
    /// Request and response body bytes seen by the `stream` action.
    streamed: (usize, usize),
}

impl Context for Probe {
    fn on_grpc_call_response(&mut self, _token: u32, status: u32, _size: usize) {
        let (code, message) = self.get_grpc_status();
        let msg = format!(
            "grpc status {status} ({code}): {}\n",
            message.unwrap_or_default()
        );
        self.send_http_response(502, vec![], Some(msg.as_bytes()));
    }

    fn on_http_call_response(
        &mut self,
        _token: u32,
        headers: usize,
        body: usize,
        _trailers: usize,
    ) {
        if headers == 0 {
            self.send_http_response(
                502,
                vec![("x-probe-auth", "failed")],
                Some(b"auth call failed\n"),
            );
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body)
            .unwrap_or_default();
        if status == "200" {
            self.add_http_request_header("x-auth-body", String::from_utf8_lossy(&body).trim());
            self.resume_http_request();
        } else {
            let msg = format!("auth said {status}\n");
            self.send_http_response(403, vec![("x-probe-auth", "denied")], Some(msg.as_bytes()));
        }
    }
}

fn prop(ctx: &dyn Context, path: &[&str]) -> String {
    ctx.get_property(path.to_vec())
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_else(|| "<none>".into())
}

fn int_prop(ctx: &dyn Context, path: &[&str]) -> i64 {
    ctx.get_property(path.to_vec())
        .and_then(|v| Some(i64::from_le_bytes(v.get(..8)?.try_into().ok()?)))
        .unwrap_or(-1)
}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        if let Some(m) = self.requests {
            hostcalls::increment_metric(m, 1).ok();
        }
        self.action = self.get_http_request_header("x-probe").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        log(
            LogLevel::Info,
            &format!("probe request {} {}", self.action, path),
        );
        self.add_http_request_header("x-probe-seen", &self.config.tag);
        match self.action.as_str() {
            "headers" => {
                self.set_http_request_header("x-replace-me", Some("replaced"));
                self.remove_http_request_header("x-remove-me");
                let mut names: Vec<String> = self
                    .get_http_request_headers()
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                names.sort();
                names.dedup();
                self.notes
                    .push(("x-request-header-names".into(), names.join(",")));
                for h in [":method", ":path", ":authority", ":scheme"] {
                    let v = self.get_http_request_header(h).unwrap_or_default();
                    self.notes.push((format!("x-request-{}", &h[1..]), v));
                }
                let missing = self.get_http_request_header("x-not-there").is_none();
                self.notes
                    .push(("x-missing-is-none".into(), missing.to_string()));
            }
            "set-all" => {
                let mut all = self.get_http_request_headers();
                all.push(("x-set-all".into(), "yes".into()));
                self.set_http_request_headers(
                    all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
                );
            }
            "rewrite-path" => {
                self.set_http_request_header(":path", Some("/rewritten"));
            }
            "deny" => {
                self.send_http_response(403, vec![("x-denied", "yes")], Some(b"denied by probe\n"));
                return Action::Pause;
            }
            "props" => {
                self.set_property(vec!["probe_custom"], Some(b"round-trip"));
                let source = prop(self, &["source", "address"]);
                let body = serde_json::json!({
                    "plugin_name": prop(self, &["plugin_name"]),
                    "plugin_root_id": prop(self, &["plugin_root_id"]),
                    "plugin_vm_id": prop(self, &["plugin_vm_id"]),
                    "source_ip": source.rsplit_once(':').map_or(source.as_str(), |(ip, _)| ip),
                    "destination_port": int_prop(self, &["destination", "port"]),
                    "request_path": prop(self, &["request", "path"]),
                    "request_url_path": prop(self, &["request", "url_path"]),
                    "request_method": prop(self, &["request", "method"]),
                    "request_host": prop(self, &["request", "host"]),
                    "request_protocol": prop(self, &["request", "protocol"]),
                    "request_header": prop(self, &["request", "headers", "x-foo"]),
                    "node_id": prop(self, &["node", "id"]),
                    "connection_id_set": int_prop(self, &["connection", "id"]) >= 0,
                    "custom": prop(self, &["probe_custom"]),
                    "missing": prop(self, &["no", "such", "property"]),
                });
                self.send_http_response(
                    200,
                    vec![("content-type", "application/json")],
                    Some(body.to_string().as_bytes()),
                );
                return Action::Pause;
            }
            "auth" => {
                let cluster = self
                    .get_http_request_header("x-probe-cluster")
                    .unwrap_or_else(|| self.config.cluster.clone());
                let path = self
                    .get_http_request_header("x-probe-auth-path")
                    .unwrap_or_else(|| "/check".into());
                let call = self.dispatch_http_call(
                    &cluster,
                    vec![(":method", "GET"), (":path", &path), (":authority", "auth")],
                    None,
                    vec![],
                    Duration::from_millis(1000),
                );
                return match call {
                    Ok(_) => Action::Pause,
                    Err(e) => {
                        let msg = format!("dispatch failed: {e:?}\n");
                        self.send_http_response(500, vec![], Some(msg.as_bytes()));
                        Action::Pause
                    }
                };
            }
            "counter" => {
                let n = bump_shared("probe.counter");
                self.send_http_response(200, vec![], Some(format!("{n}\n").as_bytes()));
                return Action::Pause;
            }
            "ticks" => {
                let (v, _) = self.get_shared_data("probe.ticks");
                let body = String::from_utf8(v.unwrap_or_default()).unwrap_or_default();
                self.send_http_response(
                    200,
                    vec![],
                    Some(format!("{}\n", if body.is_empty() { "0" } else { &body }).as_bytes()),
                );
                return Action::Pause;
            }
            "enqueue" => {
                let value = self
                    .get_http_request_header("x-probe-value")
                    .unwrap_or_default();
                let queue = self.resolve_shared_queue("", "probe.events");
                let status = match queue {
                    Some(q) => match self.enqueue_shared_queue(q, Some(value.as_bytes())) {
                        Ok(()) => 200,
                        Err(_) => 500,
                    },
                    None => 404,
                };
                self.send_http_response(status, vec![], Some(b"enqueued\n"));
                return Action::Pause;
            }
            "last-event" => {
                let (v, _) = self.get_shared_data("probe.last_event");
                let body = v.unwrap_or_default();
                self.send_http_response(200, vec![], Some(&body));
                return Action::Pause;
            }
            "metrics" => {
                let gauge = hostcalls::define_metric(MetricType::Gauge, "probe.gauge").ok();
                let hist = hostcalls::define_metric(MetricType::Histogram, "probe.latency").ok();
                if let Some(g) = gauge {
                    hostcalls::record_metric(g, 42).ok();
                }
                if let Some(h) = hist {
                    hostcalls::record_metric(h, 7).ok();
                }
                let n = self
                    .requests
                    .and_then(|m| hostcalls::get_metric(m).ok())
                    .unwrap_or(0);
                self.send_http_response(200, vec![], Some(format!("{n}\n").as_bytes()));
                return Action::Pause;
            }
            "pause-tick" => {
                PAUSED.with(|p| p.borrow_mut().push(self.id));
                return Action::Pause;
            }
            "upper" | "upper-response" => {
                self.remove_http_request_header("content-length");
            }
            "close" => {
                self.reset_http_request();
                return Action::Pause;
            }
            "grpc" => {
                let r = self.dispatch_grpc_call(
                    "auth",
                    "svc",
                    "Method",
                    vec![],
                    None,
                    Duration::from_secs(1),
                );
                if let Err(e) = r {
                    let msg = format!("grpc dispatch failed: {e:?}\n");
                    self.send_http_response(500, vec![], Some(msg.as_bytes()));
                }
                // Answered from on_grpc_call_response.
                return Action::Pause;
            }
            "panic" => panic!("probe was asked to panic"),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = x.wrapping_add(1);
                    if x == u64::MAX {
                        break;
                    }
                    std::hint::black_box(x);
                }
            }
            "log" => {
                for (level, name) in [
                    (LogLevel::Trace, "trace"),
                    (LogLevel::Debug, "debug"),
                    (LogLevel::Info, "info"),
                    (LogLevel::Warn, "warn"),
                    (LogLevel::Error, "error"),
                    (LogLevel::Critical, "critical"),
                ] {
                    log(level, &format!("probe level {name}"));
                }
                println!("probe stdout line");
                eprintln!("probe stderr line");
                let level = hostcalls::get_log_level().map(|l| l as u32).unwrap_or(99);
                self.notes.push(("x-log-level".into(), level.to_string()));
            }
            "time" => {
                let now = self.get_current_time();
                let ns = now
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                self.notes.push(("x-time-ns".into(), ns.to_string()));
            }
            "foreign" => {
                let r = self.call_foreign_function("wasp_no_such_function", None);
                self.notes
                    .push(("x-foreign".into(), format!("{:?}", r.err())));
            }
            "env" => {
                let v = std::env::var("PROBE_ENV").unwrap_or_else(|_| "<unset>".into());
                self.notes.push(("x-env".into(), v));
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end: bool) -> Action {
        if self.action == "stream" {
            // Streamed: each chunk is rewritten as it passes, nothing buffered.
            let chunk = self.get_http_request_body(0, size).unwrap_or_default();
            self.set_http_request_body(0, size, &chunk.to_ascii_uppercase());
            self.streamed.0 += size;
            if end {
                log(
                    LogLevel::Info,
                    &format!("probe streamed request {} bytes", self.streamed.0),
                );
            }
            return Action::Continue;
        }
        if self.action != "upper" {
            return Action::Continue;
        }
        if !end {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.set_http_request_body(0, size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.add_http_response_header("x-probe-response-seen", &status);
        for (k, v) in std::mem::take(&mut self.notes) {
            self.add_http_response_header(&k, &v);
        }
        if self.action == "upper-response" {
            self.remove_http_response_header("content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end: bool) -> Action {
        if self.action == "stream" {
            let chunk = self.get_http_response_body(0, size).unwrap_or_default();
            self.set_http_response_body(0, size, &chunk.to_ascii_lowercase());
            self.streamed.1 += size;
            if end {
                log(
                    LogLevel::Info,
                    &format!("probe streamed response {} bytes", self.streamed.1),
                );
            }
            return Action::Continue;
        }
        if self.action != "upper-response" {
            return Action::Continue;
        }
        if !end {
            return Action::Pause;
        }
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        self.set_http_response_body(0, size, &body.to_ascii_uppercase());
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| "-".into());
        let path = self
            .get_http_request_header(":path")
            .unwrap_or_else(|| "-".into());
        log(LogLevel::Info, &format!("probe on_log {status} {path}"));
    }
}
