//! The proxy-wasm ABI: version detection, status codes, and the linker
//! holding every hostcall (grouped by the spec's sections in the
//! submodules). Hostcalls never panic on guest input: a bad pointer is
//! `INVALID_MEMORY_ACCESS`, an unknown enum `BAD_ARGUMENT`; only a trap in
//! the guest's own allocator ends a callback.

mod headers;
mod http;
mod memory;
pub mod pairs;
mod properties;
mod runtime;
pub use runtime::log;
mod shared;
mod wasi;

use wasmtime::{Caller, Linker, Module};

use super::context::HostState;
use super::engine;

/// The ABI versions wasp implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    /// From the module's marker export.
    pub fn detect(module: &Module) -> Option<Self> {
        let mut found = None;
        for export in module.exports() {
            let v = match export.name() {
                "proxy_abi_version_0_1_0" => AbiVersion::V0_1_0,
                "proxy_abi_version_0_2_0" => AbiVersion::V0_2_0,
                "proxy_abi_version_0_2_1" => AbiVersion::V0_2_1,
                _ => continue,
            };
            if export.ty().func().is_some() {
                found = Some(v);
            }
        }
        found
    }
}

/// `proxy_status_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
}

/// How a hostcall body ends early: with a status for the guest, or a trap
/// (from the guest's allocator).
pub enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Self {
        Fail::Status(s)
    }
}

impl From<wasmtime::Error> for Fail {
    fn from(e: wasmtime::Error) -> Self {
        Fail::Trap(e)
    }
}

pub type HostResult = Result<Status, Fail>;

/// The hostcall's return value, or its trap.
fn finish(r: HostResult) -> wasmtime::Result<i32> {
    match r {
        Ok(s) | Err(Fail::Status(s)) => Ok(s as i32),
        Err(Fail::Trap(e)) => Err(e),
    }
}

/// Whether the calling plugin may use hostcall `name`
/// (`capability_restriction_config`).
fn capable(caller: &Caller<'_, HostState>, name: &str) -> bool {
    match caller
        .data()
        .plugin()
        .and_then(|p| p.allowed_capabilities.as_ref())
    {
        None => true,
        Some(allowed) => {
            let ok = allowed.contains(name);
            if !ok {
                tracing::warn!(target: "wasm", hostcall = name, "attempted call to restricted proxy-wasm capability");
            }
            ok
        }
    }
}

/// Registers an `env.proxy_*` hostcall returning a status: the body returns
/// a [`HostResult`] and may use `?` on memory accesses and allocations.
macro_rules! proxy {
    ($linker:expr, $name:literal, |$c:ident $(, $a:ident : $t:ty)*| $body:expr) => {
        $linker
            .func_wrap(
                "env",
                $name,
                #[allow(unused_mut)]
                move |mut $c: wasmtime::Caller<'_, $crate::wasm::context::HostState> $(, $a: $t)*|
                      -> wasmtime::Result<i32> {
                    if !$crate::wasm::abi::capable(&$c, $name) {
                        return Ok($crate::wasm::abi::Status::InternalFailure as i32);
                    }
                    #[allow(clippy::redundant_closure_call)]
                    let r: $crate::wasm::abi::HostResult = (|| $body)();
                    $crate::wasm::abi::finish(r)
                },
            )
            .expect("hostcall names are unique");
    };
}
pub(crate) use proxy;

/// The linker for modules of ABI version `abi`.
pub fn linker(abi: AbiVersion) -> Linker<HostState> {
    let mut linker = Linker::new(engine::engine());
    runtime::add(&mut linker, abi);
    http::add(&mut linker, abi);
    shared::add(&mut linker);
    properties::add(&mut linker);
    wasi::add(&mut linker);
    linker
}
