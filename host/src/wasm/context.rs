//! What hostcalls act on: the store's per-VM state, and each stream
//! context's data (headers, bodies, connection facts), shared with the
//! filter that drives the stream.
//!
//! A stream's data lives in an `Rc<RefCell<StreamData>>` held by both the
//! filter (HTTP or network) and the VM's context table, so a callback on
//! the root context (an http_call response, a tick) can still read and
//! change a paused stream after `proxy_set_effective_context`. The filter
//! borrows it only between guest calls.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime::{Memory, StoreLimits, TypedFunc};

use super::plugin::PluginSettings;
use super::shared::VmEvent;
use super::vm::VmHandle;
use crate::stats::{Counter, Gauge, Histogram, Scope};

/// `proxy_stream_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamType {
    HttpRequest,
    HttpResponse,
    Downstream,
    Upstream,
}

impl StreamType {
    pub fn from_abi(v: i32) -> Option<Self> {
        Some(match v {
            0 => StreamType::HttpRequest,
            1 => StreamType::HttpResponse,
            2 => StreamType::Downstream,
            3 => StreamType::Upstream,
            _ => return None,
        })
    }
}

/// A response a filter asked to send instead of proxying.
#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u16,
    pub details: String,
    pub body: Bytes,
    pub headers: Vec<(String, Bytes)>,
    pub grpc_status: i32,
}

/// The connection a stream belongs to, for properties.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub id: u64,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// The listener's traffic direction (0 unspecified, 1 inbound, 2
    /// outbound).
    pub direction: i64,
}

/// One stream context's data.
pub struct StreamData {
    pub connection: ConnectionFacts,
    pub started: SystemTime,
    /// Request head while the filter has it (from request headers until it
    /// moves on upstream; kept for `proxy_on_log` as a copy).
    pub request: Option<http::request::Parts>,
    pub response: Option<http::response::Parts>,
    pub request_trailers: Option<HeaderMap>,
    pub response_trailers: Option<HeaderMap>,
    /// The body (or, for network filters, data) buffered by the filter in
    /// the current direction.
    pub request_body: BytesMut,
    pub response_body: BytesMut,
    pub downstream_data: BytesMut,
    pub upstream_data: BytesMut,
    /// Which buffers the current callback may touch.
    pub readable: Readable,
    pub request_size: u64,
    pub response_size: u64,
    pub upstream: Option<SocketAddr>,
    pub protocol: &'static str,
    /// Set by hostcalls, consumed by the filter.
    pub local_response: Option<LocalResponse>,
    pub resume_request: bool,
    pub resume_response: bool,
    pub resume_downstream: bool,
    pub resume_upstream: bool,
    pub close: bool,
    /// Properties set with `proxy_set_property`.
    pub properties: HashMap<String, Bytes>,
    /// Wakes the filter when a flag above changes.
    pub notify: Rc<Notify>,
}

/// The buffers the current callback may read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Readable {
    #[default]
    None,
    RequestBody,
    ResponseBody,
    DownstreamData,
    UpstreamData,
}

impl StreamData {
    pub fn new(connection: ConnectionFacts) -> Self {
        StreamData {
            connection,
            started: SystemTime::now(),
            request: None,
            response: None,
            request_trailers: None,
            response_trailers: None,
            request_body: BytesMut::new(),
            response_body: BytesMut::new(),
            downstream_data: BytesMut::new(),
            upstream_data: BytesMut::new(),
            readable: Readable::None,
            request_size: 0,
            response_size: 0,
            upstream: None,
            protocol: "HTTP/1.1",
            local_response: None,
            resume_request: false,
            resume_response: false,
            resume_downstream: false,
            resume_upstream: false,
            close: false,
            properties: HashMap::new(),
            notify: Rc::new(Notify::new()),
        }
    }
}

pub type SharedStream = Rc<RefCell<StreamData>>;

/// A root (plugin) context in a VM.
pub struct RootContext {
    pub plugin: Arc<PluginSettings>,
    pub tick_period_ms: u32,
    /// Bumped whenever the tick period changes, ending older tick tasks.
    pub tick_generation: u64,
}

/// What a callback exposes beyond its stream: configuration buffers, an
/// http_call response, foreign function arguments.
#[derive(Default)]
pub struct CallScope {
    pub vm_configuration: Option<Bytes>,
    pub plugin_configuration: Option<Bytes>,
    pub call_response: Option<CallResponse>,
    /// `proxy_get_status` inside an http_call response: gRPC-style code
    /// and message (set when the call failed).
    pub call_status: Option<(u32, String)>,
    pub foreign_arguments: Option<Bytes>,
}

/// A metric a plugin defined.
pub enum Metric {
    Counter(String, Counter),
    Gauge(String, Gauge),
    Histogram(String, Histogram),
}

impl Metric {
    pub fn name(&self) -> &str {
        match self {
            Metric::Counter(n, _) | Metric::Gauge(n, _) | Metric::Histogram(n, _) => n,
        }
    }

    /// `proxy_metric_type_t`.
    pub fn kind(&self) -> u32 {
        match self {
            Metric::Counter(..) => 0,
            Metric::Gauge(..) => 1,
            Metric::Histogram(..) => 2,
        }
    }
}

/// An http_call's response as `proxy_on_http_call_response` sees it.
pub struct CallResponse {
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(String, Bytes)>,
}

/// A deferred consequence of a hostcall, applied after the callback returns.
pub enum Effect {
    /// The tick period of this root changed.
    Tick(u32),
    /// The stream's filter must look at its flags.
    Wake(u32),
    /// `proxy_done` for this context.
    Done(u32),
}

/// An http_call in flight: the root context its answer goes to.
pub struct PendingCall {
    pub root_id: u32,
}

/// A map keyed by context or call id. Every hostcall looks contexts up, so
/// the key hash is one multiplication rather than SipHash (the ids are
/// ours, not an attacker's).
pub type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential ids over the high bits
        // hashbrown uses for its control bytes.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Everything a VM's hostcalls can reach (the wasmtime store's data).
pub struct HostState {
    pub vm_id: String,
    pub vm: Weak<VmHandle>,
    pub env: Vec<(String, String)>,
    pub limits: StoreLimits,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    pub roots: IdMap<RootContext>,
    pub streams: IdMap<(u32, SharedStream)>,
    /// The context the current callback was called for.
    pub current: u32,
    /// The context hostcalls act on (`proxy_set_effective_context`).
    pub effective: u32,
    pub scope: CallScope,
    pub effects: Vec<Effect>,
    pub calls: IdMap<PendingCall>,
    pub next_call_id: u32,
    /// Log lines buffered from `fd_write` until a newline.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub next_context_id: u32,
    /// Contexts whose `proxy_on_done` returned false.
    pub pending_done: HashSet<u32>,
    /// Properties set on root contexts.
    pub properties: HashMap<String, Bytes>,
    pub metrics: Vec<Metric>,
    pub stats: Scope,
    /// Where other workers send this VM's queue events.
    pub events: UnboundedSender<VmEvent>,
}

impl HostState {
    /// The root context id of `context` (itself if it is a root).
    pub fn root_of(&self, context: u32) -> Option<u32> {
        if self.roots.contains_key(&context) {
            return Some(context);
        }
        self.streams.get(&context).map(|(root, _)| *root)
    }

    /// The plugin whose context hostcalls act on.
    pub fn plugin(&self) -> Option<&Arc<PluginSettings>> {
        let root = self
            .root_of(self.effective)
            .or_else(|| self.root_of(self.current))?;
        self.roots.get(&root).map(|r| &r.plugin)
    }

    /// The stream hostcalls act on, if the effective context is one.
    pub fn stream(&self) -> Option<&SharedStream> {
        self.streams
            .get(&self.effective)
            .or_else(|| self.streams.get(&self.current))
            .map(|(_, s)| s)
    }
}
