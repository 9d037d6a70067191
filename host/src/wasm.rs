//! The proxy-wasm host: user filters compiled to WebAssembly, run through
//! the proxy-wasm ABI (0.1.0, 0.2.0, 0.2.1) on wasmtime.
//!
//! ```text
//! validation (main thread)            each worker
//! ────────────────────────            ───────────
//! plugin::PluginSettings::validate    vm::plugin_on_worker → VmHandle (one per vm_id + code)
//!   engine::compile (sha256, disk       root context per plugin: create → vm_start → configure
//!   cache) → imports checked          per stream: create_stream → call_stream(...)* → end_stream
//!   → InstancePre                       (done → log → delete), driven by filter::http::wasm
//!   → vm::canary (throw-away start)     and filter::network::wasm
//!                                     hostcalls (abi/*) act on context::StreamData and
//!                                       record Effects applied after each callback
//! ```
//!
//! This module knows no hyper types: it sees request and response heads
//! (`http` crate), byte buffers, and the cluster manager for callouts.

pub mod abi;
pub mod callout;
pub mod context;
pub mod engine;
pub mod plugin;
pub mod shared;
pub mod vm;

use std::sync::OnceLock;

pub use context::{ConnectionFacts, LocalResponse, SharedStream, StreamData};
pub use plugin::{FailurePolicy, PluginSettings};
pub use vm::{Action, PluginHandle, StreamCall, StreamContext, plugin_on_worker};

/// The bootstrap's node, for the `node.*` properties.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

static NODE: OnceLock<NodeInfo> = OnceLock::new();

/// Records the node (once, at start-up).
pub fn set_node(node: NodeInfo) {
    let _ = NODE.set(node);
}

pub fn node() -> &'static NodeInfo {
    NODE.get_or_init(NodeInfo::default)
}
