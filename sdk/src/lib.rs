//! The SDK for wasp filter authors.
//!
//! A filter written against the `proxy-wasm` crate runs unchanged on Envoy and
//! on wasp, so this crate re-exports it rather than wrapping it: depend on
//! `wasp-sdk` or on `proxy-wasm` directly, the result is the same module.

pub use proxy_wasm;
pub use proxy_wasm::traits;
pub use proxy_wasm::types;
