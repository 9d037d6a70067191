//! Adds `x-wasm-filter: <configuration>` to every request and response.
//! The configuration is the header value (default `wasp`).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { value: "wasp".into() })
    });
}}

struct Root {
    value: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(config) = self.get_plugin_configuration() {
            match String::from_utf8(config) {
                Ok(v) if !v.is_empty() => self.value = v,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AddHeader {
            value: self.value.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AddHeader {
    value: String,
}

impl Context for AddHeader {}

impl HttpContext for AddHeader {
    fn on_http_request_headers(&mut self, _n: usize, _end: bool) -> Action {
        self.add_http_request_header("x-wasm-filter", &self.value);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _end: bool) -> Action {
        self.add_http_response_header("x-wasm-filter", &self.value);
        Action::Continue
    }
}
