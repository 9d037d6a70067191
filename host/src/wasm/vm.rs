//! A VM: one wasmtime store and instance on one worker, shared by the
//! plugins with the same vm_id and code, each with its own root context.
//!
//! Every guest call runs with an epoch deadline. A trap (or a deadline)
//! poisons the instance: it is dropped, the streams it served are woken to
//! apply their failure policy, and the next use builds a new instance
//! (after a backoff if it keeps failing) and starts every plugin again.
//! Hostcalls that change the flow record [`Effect`]s, applied here after
//! the callback returns, so nothing awaits inside the guest.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use wasmtime::{Instance, Store, StoreLimitsBuilder, TypedFunc};

use super::abi::AbiVersion;
use super::context::{CallResponse, CallScope, Effect, HostState, RootContext, SharedStream};
use super::engine::{EPOCH_TICK, engine};
use super::plugin::PluginSettings;
use super::shared::VmEvent;
use crate::cluster::WorkerClusters;
use crate::stats::Scope;

impl HostState {
    pub fn new(vm_id: &str, env: Vec<(String, String)>, max_memory: usize) -> Self {
        let (events, _) = unbounded_channel();
        HostState {
            vm_id: vm_id.to_string(),
            vm: Weak::new(),
            env,
            limits: StoreLimitsBuilder::new()
                .memory_size(max_memory.max(1 << 16))
                .instances(1)
                .build(),
            memory: None,
            alloc: None,
            roots: Default::default(),
            streams: Default::default(),
            next_context_id: 1,
            current: 0,
            effective: 0,
            scope: CallScope::default(),
            effects: Vec::new(),
            calls: Default::default(),
            next_call_id: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            pending_done: HashSet::new(),
            properties: HashMap::new(),
            metrics: Vec::new(),
            stats: crate::stats::Store::new().root(),
            events,
        }
    }
}

type F1 = TypedFunc<u32, ()>;
type F1R = TypedFunc<u32, u32>;
type F2 = TypedFunc<(u32, u32), ()>;
type F2R = TypedFunc<(u32, u32), u32>;
type F3 = TypedFunc<(u32, u32, u32), ()>;
type F3R = TypedFunc<(u32, u32, u32), u32>;
type F5 = TypedFunc<(u32, u32, u32, u32, u32), ()>;

/// The module's callbacks (all optional).
#[derive(Default)]
struct Exports {
    on_context_create: Option<F2>,
    on_vm_start: Option<F2R>,
    on_configure: Option<F2R>,
    on_tick: Option<F1>,
    on_done: Option<F1R>,
    on_log: Option<F1>,
    on_delete: Option<F1>,
    on_new_connection: Option<F1R>,
    on_downstream_data: Option<F3R>,
    on_downstream_connection_close: Option<F2>,
    on_upstream_data: Option<F3R>,
    on_upstream_connection_close: Option<F2>,
    on_request_headers: Option<F3R>,
    on_request_headers_v1: Option<F2R>,
    on_request_body: Option<F3R>,
    on_request_trailers: Option<F2R>,
    on_response_headers: Option<F3R>,
    on_response_headers_v1: Option<F2R>,
    on_response_body: Option<F3R>,
    on_response_trailers: Option<F2R>,
    on_http_call_response: Option<F5>,
    on_grpc_close: Option<F3>,
    on_queue_ready: Option<F2>,
    on_foreign_function: Option<F3>,
}

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<HostState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, String> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|_| {
            format!(
                "export `{name}` has the wrong signature ({})",
                f.ty(&*store)
            )
        }),
    }
}

impl Exports {
    fn load(
        instance: &Instance,
        store: &mut Store<HostState>,
        abi: AbiVersion,
    ) -> Result<Self, String> {
        let v1 = abi == AbiVersion::V0_1_0;
        let mut e = Exports {
            on_context_create: typed(instance, store, "proxy_on_context_create")?,
            on_vm_start: typed(instance, store, "proxy_on_vm_start")?,
            on_configure: typed(instance, store, "proxy_on_configure")?,
            on_tick: typed(instance, store, "proxy_on_tick")?,
            on_done: typed(instance, store, "proxy_on_done")?,
            on_log: typed(instance, store, "proxy_on_log")?,
            on_delete: typed(instance, store, "proxy_on_delete")?,
            on_new_connection: typed(instance, store, "proxy_on_new_connection")?,
            on_downstream_data: typed(instance, store, "proxy_on_downstream_data")?,
            on_downstream_connection_close: typed(
                instance,
                store,
                "proxy_on_downstream_connection_close",
            )?,
            on_upstream_data: typed(instance, store, "proxy_on_upstream_data")?,
            on_upstream_connection_close: typed(
                instance,
                store,
                "proxy_on_upstream_connection_close",
            )?,
            on_request_body: typed(instance, store, "proxy_on_request_body")?,
            on_request_trailers: typed(instance, store, "proxy_on_request_trailers")?,
            on_response_body: typed(instance, store, "proxy_on_response_body")?,
            on_response_trailers: typed(instance, store, "proxy_on_response_trailers")?,
            on_http_call_response: typed(instance, store, "proxy_on_http_call_response")?,
            on_grpc_close: typed(instance, store, "proxy_on_grpc_close")?,
            on_queue_ready: typed(instance, store, "proxy_on_queue_ready")?,
            ..Exports::default()
        };
        if v1 {
            e.on_request_headers_v1 = typed(instance, store, "proxy_on_request_headers")?;
            e.on_response_headers_v1 = typed(instance, store, "proxy_on_response_headers")?;
        } else {
            e.on_request_headers = typed(instance, store, "proxy_on_request_headers")?;
            e.on_response_headers = typed(instance, store, "proxy_on_response_headers")?;
            e.on_foreign_function = typed(instance, store, "proxy_on_foreign_function")?;
        }
        Ok(e)
    }
}

/// A live instance.
struct Live {
    store: Store<HostState>,
    exports: Rc<Exports>,
    deadline_ticks: u64,
    /// Root context id of each plugin, in the VM's plugin order.
    roots: Vec<u32>,
    started: Instant,
}

/// Why a guest call did not complete.
#[derive(Debug, Clone)]
pub struct Failed(pub String);

impl Live {
    /// Instantiates the module and starts every plugin on it.
    fn start(plugins: &[Arc<PluginSettings>], mut state: HostState) -> Result<Self, String> {
        let first = plugins.first().ok_or("a VM needs a plugin")?;
        state.vm_id = first.vm_id.clone();
        let mut store = Store::new(engine(), state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        let deadline_ticks = ticks(first.callback_deadline);
        store.set_epoch_deadline(deadline_ticks);
        let instance = first
            .instance_pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate: {e:#}"))?;
        let memory = instance.get_memory(&mut store, "memory");
        if memory.is_none() {
            return Err("the module exports no memory".into());
        }
        // Envoy prefers `malloc` and falls back to `proxy_on_memory_allocate`.
        let alloc = match typed::<u32, u32>(&instance, &mut store, "malloc")? {
            Some(f) => Some(f),
            None => typed(&instance, &mut store, "proxy_on_memory_allocate")?,
        };
        let Some(alloc) = alloc else {
            return Err(
                "the module exports no allocator (malloc or proxy_on_memory_allocate)".into(),
            );
        };
        {
            let s = store.data_mut();
            s.memory = memory;
            s.alloc = Some(alloc);
        }
        let exports = Rc::new(Exports::load(&instance, &mut store, first.abi)?);
        let mut live = Live {
            store,
            exports,
            deadline_ticks,
            roots: Vec::new(),
            started: Instant::now(),
        };
        live.initialize(&instance)?;
        for plugin in plugins {
            let root = live.start_plugin(plugin)?;
            live.roots.push(root);
        }
        Ok(live)
    }

    /// `_initialize` (+ `main`/`__main_void`) for reactors, `_start` for
    /// commands.
    fn initialize(&mut self, instance: &Instance) -> Result<(), String> {
        let store = &mut self.store;
        store.set_epoch_deadline(self.deadline_ticks);
        if let Some(init) = typed::<(), ()>(instance, store, "_initialize")? {
            init.call(&mut *store, ()).map_err(describe)?;
            if let Some(main) = typed::<(u32, u32), u32>(instance, store, "main")? {
                main.call(&mut *store, (0, 0)).map_err(describe)?;
            } else if let Some(main) = typed::<(), u32>(instance, store, "__main_void")? {
                main.call(&mut *store, ()).map_err(describe)?;
            }
        } else if let Some(start) = typed::<(), ()>(instance, store, "_start")? {
            start.call(&mut *store, ()).map_err(describe)?;
        }
        Ok(())
    }

    /// Creates the plugin's root context and runs `proxy_on_vm_start` and
    /// `proxy_on_configure`; an error names the one that said no.
    fn start_plugin(&mut self, plugin: &Arc<PluginSettings>) -> Result<u32, String> {
        let id = self.next_id();
        self.store.data_mut().roots.insert(
            id,
            RootContext {
                plugin: plugin.clone(),
                tick_period_ms: 0,
                tick_generation: 0,
            },
        );
        if let Some(f) = self.exports.on_context_create.clone() {
            self.call(id, |s| f.call(s, (id, 0)))?;
        }
        self.store.data_mut().scope.vm_configuration = Some(plugin.vm_configuration.clone());
        let started = match self.exports.on_vm_start.clone() {
            Some(f) => self.call(id, |s| {
                f.call(s, (id, plugin.vm_configuration.len() as u32))
            })?,
            None => 1,
        };
        self.store.data_mut().scope = CallScope::default();
        if started == 0 {
            return Err("proxy_on_vm_start returned false".into());
        }
        self.store.data_mut().scope.plugin_configuration = Some(plugin.configuration.clone());
        let configured = match self.exports.on_configure.clone() {
            Some(f) => self.call(id, |s| f.call(s, (id, plugin.configuration.len() as u32)))?,
            None => 1,
        };
        self.store.data_mut().scope = CallScope::default();
        if configured == 0 {
            return Err("proxy_on_configure returned false".into());
        }
        Ok(id)
    }

    fn next_id(&mut self) -> u32 {
        let s = self.store.data_mut();
        let id = s.next_context_id;
        s.next_context_id += 1;
        id
    }

    /// One guest call for `context`, under the deadline.
    fn call<R>(
        &mut self,
        context: u32,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, String> {
        {
            let s = self.store.data_mut();
            s.current = context;
            s.effective = context;
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        f(&mut self.store).map_err(describe)
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64
}

fn describe(e: wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "the callback ran past its deadline".into(),
        Some(t) => format!("wasm trap: {t}"),
        None => format!("{e:#}"),
    }
}

/// Starts `plugin` once on a throw-away VM (validation).
pub fn canary(plugin: &Arc<PluginSettings>) -> Result<(), String> {
    let state = HostState::new(&plugin.vm_id, plugin.env.clone(), plugin.max_memory_bytes);
    Live::start(std::slice::from_ref(plugin), state).map(|_| ())
}

/// A stream context on a VM.
pub struct StreamContext {
    pub id: u32,
    generation: u64,
}

/// A stream callback.
#[derive(Debug, Clone, Copy)]
pub enum StreamCall {
    RequestHeaders { headers: u32, end: bool },
    RequestBody { size: u32, end: bool },
    RequestTrailers { trailers: u32 },
    ResponseHeaders { headers: u32, end: bool },
    ResponseBody { size: u32, end: bool },
    ResponseTrailers { trailers: u32 },
    NewConnection,
    DownstreamData { size: u32, end: bool },
    UpstreamData { size: u32, end: bool },
    DownstreamClose { peer: u32 },
    UpstreamClose { peer: u32 },
}

/// `proxy_action_t`, or that the VM failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    Failed,
}

/// One worker's VM.
pub struct VmHandle {
    plugins: RefCell<Vec<Arc<PluginSettings>>>,
    live: RefCell<Option<Live>>,
    /// Bumped on every (re)build; stream contexts of an older instance are
    /// gone.
    generation: Cell<u64>,
    failures: Cell<u32>,
    retry_at: Cell<Option<Instant>>,
    events: UnboundedSender<VmEvent>,
    pub clusters: WorkerClusters,
    pub upstreams: RefCell<HashMap<String, Rc<crate::filter::http::router::Upstream>>>,
    stats: Scope,
    this: Weak<VmHandle>,
}

/// A plugin's root context on a worker's VM.
#[derive(Clone)]
pub struct PluginHandle {
    pub vm: Rc<VmHandle>,
    /// The plugin's place in the VM's plugin list (its root id can change
    /// when the VM is rebuilt).
    index: usize,
    pub plugin: Arc<PluginSettings>,
}

thread_local! {
    static VMS: RefCell<HashMap<(String, String), Rc<VmHandle>>> = RefCell::new(HashMap::new());
}

/// This worker's instance of `plugin`: on the VM it shares with plugins of
/// the same vm_id and code, started now.
pub fn plugin_on_worker(
    plugin: &Arc<PluginSettings>,
    clusters: &WorkerClusters,
    stats: &Scope,
) -> PluginHandle {
    let vm = VMS.with(|vms| {
        vms.borrow_mut()
            .entry(plugin.vm_key())
            .or_insert_with(|| VmHandle::new(clusters.clone(), stats.clone()))
            .clone()
    });
    let index = vm.add_plugin(plugin.clone());
    PluginHandle {
        vm,
        index,
        plugin: plugin.clone(),
    }
}

impl VmHandle {
    fn new(clusters: WorkerClusters, stats: Scope) -> Rc<Self> {
        let (events, rx) = unbounded_channel();
        let vm = Rc::new_cyclic(|this| VmHandle {
            plugins: RefCell::new(Vec::new()),
            live: RefCell::new(None),
            generation: Cell::new(0),
            failures: Cell::new(0),
            retry_at: Cell::new(None),
            events,
            clusters,
            upstreams: RefCell::new(HashMap::new()),
            stats,
            this: this.clone(),
        });
        tokio::task::spawn_local(event_loop(Rc::downgrade(&vm), rx));
        vm
    }

    /// Adds a plugin (a root context), starting it on the live instance.
    fn add_plugin(&self, plugin: Arc<PluginSettings>) -> usize {
        let index = {
            let mut plugins = self.plugins.borrow_mut();
            plugins.push(plugin.clone());
            plugins.len() - 1
        };
        let started = self
            .live
            .borrow_mut()
            .as_mut()
            .map(|live| live.start_plugin(&plugin).map(|root| live.roots.push(root)));
        match started {
            Some(Ok(())) => self.apply_effects(),
            Some(Err(e)) => self.fail(&plugin, &e),
            None => {
                self.ensure_live();
            }
        }
        index
    }

    fn new_state(&self, plugin: &PluginSettings) -> HostState {
        let mut state = HostState::new(&plugin.vm_id, plugin.env.clone(), plugin.max_memory_bytes);
        state.vm = self.this.clone();
        state.events = self.events.clone();
        state.stats = self.stats.clone();
        state
    }

    /// Builds the instance if there is none and the backoff allows.
    fn ensure_live(&self) -> bool {
        if self.live.borrow().is_some() {
            return true;
        }
        if self.retry_at.get().is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let plugins = self.plugins.borrow().clone();
        let Some(first) = plugins.first() else {
            return false;
        };
        match Live::start(&plugins, self.new_state(first)) {
            Ok(live) => {
                *self.live.borrow_mut() = Some(live);
                self.generation.set(self.generation.get() + 1);
                self.apply_effects();
                true
            }
            Err(e) => {
                tracing::error!(target: "wasm", vm_id = %first.vm_id, error = %e, "cannot start the wasm VM");
                self.schedule_retry();
                false
            }
        }
    }

    fn schedule_retry(&self) {
        // The first failure is rebuilt at once; one that keeps failing
        // waits 100ms, 200ms, ... up to 10s between attempts.
        let n = self.failures.get().saturating_add(1);
        self.failures.set(n);
        if n > 1 {
            let backoff =
                Duration::from_millis(100u64 << (n - 2).min(7)).min(Duration::from_secs(10));
            self.retry_at.set(Some(Instant::now() + backoff));
        }
    }

    /// Drops a failed instance: its streams are woken to apply their
    /// failure policy and the next use rebuilds it.
    fn fail(&self, plugin: &PluginSettings, error: &str) {
        tracing::error!(target: "wasm", plugin = %plugin.name, vm_id = %plugin.vm_id, error = %error, "wasm VM failed; it will be rebuilt");
        let Some(live) = self.live.borrow_mut().take() else {
            return;
        };
        // An instance that keeps failing soon after start is rebuilt with a
        // growing backoff.
        if live.started.elapsed() < Duration::from_secs(10) {
            self.schedule_retry();
        } else {
            self.failures.set(0);
            self.retry_at.set(None);
        }
        self.generation.set(self.generation.get() + 1);
        for (_, stream) in live.store.data().streams.values() {
            let s = stream.borrow();
            s.notify.notify_one();
        }
    }

    /// Runs a guest call on the live instance; a failure poisons it.
    fn with_live<R>(
        &self,
        plugin: &PluginSettings,
        f: impl FnOnce(&mut Live) -> Result<R, String>,
    ) -> Option<R> {
        let result = {
            let mut live = self.live.borrow_mut();
            let live = live.as_mut()?;
            f(live)
        };
        match result {
            Ok(r) => {
                self.apply_effects();
                Some(r)
            }
            Err(e) => {
                self.fail(plugin, &e);
                None
            }
        }
    }

    fn root_id(&self, index: usize) -> Option<u32> {
        self.live.borrow().as_ref()?.roots.get(index).copied()
    }

    /// Applies what the last callback's hostcalls asked for.
    fn apply_effects(&self) {
        loop {
            let effects = match self.live.borrow_mut().as_mut() {
                Some(live) => std::mem::take(&mut live.store.data_mut().effects),
                None => return,
            };
            if effects.is_empty() {
                return;
            }
            for effect in effects {
                match effect {
                    Effect::Wake(id) => {
                        let stream =
                            self.live.borrow().as_ref().and_then(|l| {
                                l.store.data().streams.get(&id).map(|(_, s)| s.clone())
                            });
                        if let Some(s) = stream {
                            s.borrow().notify.notify_one();
                        }
                    }
                    Effect::Tick(root) => self.start_ticker(root),
                    Effect::Done(id) => self.finish_context(id),
                }
            }
        }
    }

    fn start_ticker(&self, root: u32) {
        let Some((period, tick_gen)) = self.live.borrow().as_ref().and_then(|l| {
            let r = l.store.data().roots.get(&root)?;
            Some((r.tick_period_ms, r.tick_generation))
        }) else {
            return;
        };
        if period == 0 {
            return;
        }
        let vm = self.this.clone();
        let generation = self.generation.get();
        let period = Duration::from_millis(period.into());
        tokio::task::spawn_local(async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(vm) = vm.upgrade() else { return };
                if vm.generation.get() != generation || !vm.tick(root, tick_gen) {
                    return;
                }
            }
        });
    }

    /// Delivers a tick; false once this ticker is obsolete.
    fn tick(&self, root: u32, tick_gen: u64) -> bool {
        let current = self.live.borrow().as_ref().and_then(|l| {
            let r = l.store.data().roots.get(&root)?;
            Some((r.tick_generation, r.plugin.clone()))
        });
        let Some((g, plugin)) = current else {
            return false;
        };
        if g != tick_gen {
            return false;
        }
        self.with_live(&plugin, |l| match l.exports.on_tick.clone() {
            Some(f) => l.call(root, |s| f.call(s, root)),
            None => Ok(()),
        });
        true
    }

    /// A shared queue this VM registered has an item.
    fn queue_ready(&self, root: u32, queue: u32) {
        let Some(plugin) = self
            .live
            .borrow()
            .as_ref()
            .and_then(|l| Some(l.store.data().roots.get(&root)?.plugin.clone()))
        else {
            return;
        };
        self.with_live(&plugin, |l| match l.exports.on_queue_ready.clone() {
            Some(f) => l.call(root, |s| f.call(s, (root, queue))),
            None => Ok(()),
        });
    }

    /// An http_call finished (`None`: it failed or timed out).
    pub fn call_response(&self, generation: u64, call_id: u32, response: Option<CallResponse>) {
        let Some((root, plugin)) = self.take_call(generation, call_id) else {
            return;
        };
        self.with_live(&plugin, |l| {
            let Some(f) = l.exports.on_http_call_response.clone() else {
                return Ok(());
            };
            let (h, b, t) = response.as_ref().map_or((0, 0, 0), |r| {
                (
                    r.headers.len() as u32,
                    r.body.len() as u32,
                    r.trailers.len() as u32,
                )
            });
            let status = match &response {
                Some(_) => None,
                None => Some((14, "upstream request failed or timed out".to_string())),
            };
            l.store.data_mut().scope = CallScope {
                call_response: response,
                call_status: status,
                ..CallScope::default()
            };
            let r = l.call(root, |s| f.call(s, (root, call_id, h, b, t)));
            l.store.data_mut().scope = CallScope::default();
            r
        });
    }

    /// A gRPC call or stream ended with `status` (and `message`, for
    /// `proxy_get_status` during the callback).
    pub fn grpc_close(&self, generation: u64, call_id: u32, status: u32, message: &str) {
        let Some((root, plugin)) = self.take_call(generation, call_id) else {
            return;
        };
        self.with_live(&plugin, |l| {
            let Some(f) = l.exports.on_grpc_close.clone() else {
                return Ok(());
            };
            l.store.data_mut().scope = CallScope {
                call_status: Some((status, message.to_string())),
                ..CallScope::default()
            };
            let r = l.call(root, |s| f.call(s, (root, call_id, status)));
            l.store.data_mut().scope = CallScope::default();
            r
        });
    }

    /// The root context and plugin of a pending call, which ends here;
    /// `None` if it was cancelled or its VM is not the live one any more.
    fn take_call(&self, generation: u64, call_id: u32) -> Option<(u32, Arc<PluginSettings>)> {
        if generation != self.generation.get() {
            return None;
        }
        let mut live = self.live.borrow_mut();
        let s = live.as_mut()?.store.data_mut();
        let root = s.calls.remove(&call_id)?.root_id;
        Some((root, s.roots.get(&root)?.plugin.clone()))
    }

    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Creates a stream context under the plugin's root; `None` if the VM
    /// is down (the caller applies the failure policy).
    pub fn create_stream(
        &self,
        handle: &PluginHandle,
        data: SharedStream,
    ) -> Option<StreamContext> {
        if !self.ensure_live() {
            return None;
        }
        let root = self.root_id(handle.index)?;
        let generation = self.generation.get();
        self.with_live(&handle.plugin, |l| {
            let id = l.next_id();
            l.store.data_mut().streams.insert(id, (root, data));
            if let Some(f) = l.exports.on_context_create.clone() {
                l.call(id, |s| f.call(s, (id, root)))?;
            }
            Ok(StreamContext { id, generation })
        })
    }

    /// Whether `stream`'s instance is still the live one.
    pub fn alive(&self, stream: &StreamContext) -> bool {
        stream.generation == self.generation.get() && self.live.borrow().is_some()
    }

    /// Runs a stream callback.
    pub fn call_stream(
        &self,
        plugin: &PluginSettings,
        stream: &StreamContext,
        call: StreamCall,
    ) -> Action {
        if !self.alive(stream) {
            return Action::Failed;
        }
        let id = stream.id;
        let r = self.with_live(plugin, |l| {
            let e = l.exports.clone();
            use StreamCall as C;
            let b = u32::from;
            let r = match call {
                C::RequestHeaders { headers, end } => match (
                    e.on_request_headers.clone(),
                    e.on_request_headers_v1.clone(),
                ) {
                    (Some(f), _) => l.call(id, |s| f.call(s, (id, headers, b(end))))?,
                    (None, Some(f)) => l.call(id, |s| f.call(s, (id, headers)))?,
                    _ => 0,
                },
                C::ResponseHeaders { headers, end } => match (
                    e.on_response_headers.clone(),
                    e.on_response_headers_v1.clone(),
                ) {
                    (Some(f), _) => l.call(id, |s| f.call(s, (id, headers, b(end))))?,
                    (None, Some(f)) => l.call(id, |s| f.call(s, (id, headers)))?,
                    _ => 0,
                },
                C::RequestBody { size, end } => match e.on_request_body.clone() {
                    Some(f) => l.call(id, |s| f.call(s, (id, size, b(end))))?,
                    None => 0,
                },
                C::ResponseBody { size, end } => match e.on_response_body.clone() {
                    Some(f) => l.call(id, |s| f.call(s, (id, size, b(end))))?,
                    None => 0,
                },
                C::RequestTrailers { trailers } => match e.on_request_trailers.clone() {
                    Some(f) => l.call(id, |s| f.call(s, (id, trailers)))?,
                    None => 0,
                },
                C::ResponseTrailers { trailers } => match e.on_response_trailers.clone() {
                    Some(f) => l.call(id, |s| f.call(s, (id, trailers)))?,
                    None => 0,
                },
                C::NewConnection => match e.on_new_connection.clone() {
                    Some(f) => l.call(id, |s| f.call(s, id))?,
                    None => 0,
                },
                C::DownstreamData { size, end } => match e.on_downstream_data.clone() {
                    Some(f) => l.call(id, |s| f.call(s, (id, size, b(end))))?,
                    None => 0,
                },
                C::UpstreamData { size, end } => match e.on_upstream_data.clone() {
                    Some(f) => l.call(id, |s| f.call(s, (id, size, b(end))))?,
                    None => 0,
                },
                C::DownstreamClose { peer } => {
                    if let Some(f) = e.on_downstream_connection_close.clone() {
                        l.call(id, |s| f.call(s, (id, peer)))?;
                    }
                    0
                }
                C::UpstreamClose { peer } => {
                    if let Some(f) = e.on_upstream_connection_close.clone() {
                        l.call(id, |s| f.call(s, (id, peer)))?;
                    }
                    0
                }
            };
            Ok(r)
        });
        match r {
            None => Action::Failed,
            Some(0) => Action::Continue,
            Some(_) => Action::Pause,
        }
    }

    /// Whether the module has a callback for request or response bodies.
    pub fn wants_bodies(&self) -> (bool, bool) {
        self.live.borrow().as_ref().map_or((false, false), |l| {
            (
                l.exports.on_request_body.is_some(),
                l.exports.on_response_body.is_some(),
            )
        })
    }

    /// Ends a stream: `proxy_on_done`, then (now, or after `proxy_done`)
    /// `proxy_on_log` and `proxy_on_delete`.
    pub fn end_stream(&self, plugin: &PluginSettings, stream: &StreamContext) {
        if !self.alive(stream) {
            return;
        }
        let id = stream.id;
        let done = self.with_live(plugin, |l| match l.exports.on_done.clone() {
            Some(f) => l.call(id, |s| f.call(s, id)).map(|r| r != 0),
            None => Ok(true),
        });
        match done {
            Some(true) => self.finish_context(id),
            Some(false) => {
                if let Some(l) = self.live.borrow_mut().as_mut() {
                    l.store.data_mut().pending_done.insert(id);
                }
            }
            None => {}
        }
    }

    /// `proxy_on_log` and `proxy_on_delete`, then forgets the context.
    fn finish_context(&self, id: u32) {
        let Some(plugin) = self.live.borrow().as_ref().and_then(|l| {
            let s = l.store.data();
            let root = s.root_of(id)?;
            Some(s.roots.get(&root)?.plugin.clone())
        }) else {
            return;
        };
        self.with_live(&plugin, |l| {
            if let Some(f) = l.exports.on_log.clone() {
                l.call(id, |s| f.call(s, id))?;
            }
            if let Some(f) = l.exports.on_delete.clone() {
                l.call(id, |s| f.call(s, id))?;
            }
            l.store.data_mut().streams.remove(&id);
            Ok(())
        });
    }
}

async fn event_loop(vm: Weak<VmHandle>, mut rx: UnboundedReceiver<VmEvent>) {
    while let Some(event) = rx.recv().await {
        let Some(vm) = vm.upgrade() else { return };
        match event {
            VmEvent::QueueReady { root_id, queue_id } => vm.queue_ready(root_id, queue_id),
        }
    }
}
