//! A network filter for tests:
//! - downstream data: `ping` becomes `PING` (same length), a line starting
//!   with `close` closes the connection, `hold` is held until more arrives;
//! - upstream data (to the client) gets `[wasm]` prefixed to each chunk;
//! - counters `tcp_probe.downstream_bytes` / `tcp_probe.upstream_bytes`;
//! - logs on new connection (with `source.address`), both closes and
//!   `on_log`.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct Root {
    metrics: Option<(u32, u32)>,
    /// Configuration `passthrough`: count and log only (for protocols
    /// such as RESP that must not be rewritten).
    passthrough: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        let down = hostcalls::define_metric(MetricType::Counter, "tcp_probe.downstream_bytes").ok();
        let up = hostcalls::define_metric(MetricType::Counter, "tcp_probe.upstream_bytes").ok();
        self.metrics = down.zip(up);
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        self.passthrough = self.get_plugin_configuration().as_deref() == Some(b"passthrough");
        true
    }

    fn create_stream_context(&self, _id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Probe {
            metrics: self.metrics,
            passthrough: self.passthrough,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Probe {
    metrics: Option<(u32, u32)>,
    passthrough: bool,
}

impl Context for Probe {}

fn text(bytes: Option<proxy_wasm::types::Bytes>) -> String {
    String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
}

impl StreamContext for Probe {
    fn on_new_connection(&mut self) -> Action {
        let source = text(self.get_property(vec!["source", "address"]));
        let ip = source
            .rsplit_once(':')
            .map_or(source.as_str(), |(ip, _)| ip);
        hostcalls::log(
            LogLevel::Info,
            &format!("tcp_probe new connection from {ip}"),
        )
        .ok();
        Action::Continue
    }

    fn on_downstream_data(&mut self, size: usize, _end: bool) -> Action {
        if let Some((down, _)) = self.metrics {
            hostcalls::increment_metric(down, size as i64).ok();
        }
        if self.passthrough {
            return Action::Continue;
        }
        let data = self.get_downstream_data(0, size).unwrap_or_default();
        if data.starts_with(b"close") {
            self.close_downstream();
            return Action::Pause;
        }
        if data.ends_with(b"hold") {
            return Action::Pause;
        }
        if let Some(at) = data.windows(4).position(|w| w == b"ping") {
            // Envoy takes only a start of 0 (replace a prefix) or the end
            // (append), so the whole chunk is replaced.
            let mut changed = data.clone();
            changed[at..at + 4].copy_from_slice(b"PING");
            self.set_downstream_data(0, size, &changed);
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, size: usize, _end: bool) -> Action {
        if let Some((_, up)) = self.metrics {
            hostcalls::increment_metric(up, size as i64).ok();
        }
        if size > 0 && !self.passthrough {
            self.set_upstream_data(0, 0, b"[wasm]");
        }
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer: PeerType) {
        hostcalls::log(
            LogLevel::Info,
            &format!("tcp_probe downstream close {}", peer as u32),
        )
        .ok();
    }

    fn on_log(&mut self) {
        hostcalls::log(LogLevel::Info, "tcp_probe on_log").ok();
    }
}
