//! Contexts, logging, clocks, timers and foreign functions.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::Linker;

use super::memory::{copy_out, read, read_string, write_u32, write_u64};
use super::{AbiVersion, Status, proxy};
use crate::wasm::context::{Effect, HostState, StreamType};

/// Logs a guest's message the way Envoy does: `wasm log <name> <root_id>
/// <vm_id>: <message>` from a stream context, without the name from the
/// root context.
pub fn log(state: &HostState, level: i32, message: &str) {
    let root = state.roots.contains_key(&state.effective);
    let prefix = state.plugin().map_or("", |p| {
        if root {
            p.root_log_prefix.as_str()
        } else {
            p.log_prefix.as_str()
        }
    });
    match level {
        0 => tracing::trace!(target: "wasm", "wasm log{prefix}: {message}"),
        1 => tracing::debug!(target: "wasm", "wasm log{prefix}: {message}"),
        2 => tracing::info!(target: "wasm", "wasm log{prefix}: {message}"),
        3 => tracing::warn!(target: "wasm", "wasm log{prefix}: {message}"),
        _ => tracing::error!(target: "wasm", "wasm log{prefix}: {message}"),
    }
}

/// The host's log level as `proxy_log_level_t`.
fn log_level() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Marks the effective stream to resume (or close) and wakes its filter.
pub fn signal(state: &mut HostState, kind: StreamType, close: bool) -> Status {
    let id = state.effective;
    let Some(stream) = state.stream() else {
        return Status::NotFound;
    };
    {
        let mut s = stream.borrow_mut();
        if close {
            s.close = true;
        } else {
            match kind {
                StreamType::HttpRequest => s.resume_request = true,
                StreamType::HttpResponse => s.resume_response = true,
                StreamType::Downstream => s.resume_downstream = true,
                StreamType::Upstream => s.resume_upstream = true,
            }
        }
    }
    state.effects.push(Effect::Wake(id));
    Status::Ok
}

pub fn add(linker: &mut Linker<HostState>, abi: AbiVersion) {
    proxy!(linker, "proxy_log", |c, level: i32, ptr: i32, len: i32| {
        if !(0..=5).contains(&level) {
            return Ok(Status::BadArgument);
        }
        let message = read_string(&c, ptr, len)?;
        log(c.data(), level, &message);
        Ok(Status::Ok)
    });
    proxy!(linker, "proxy_get_log_level", |c, out: i32| {
        write_u32(&mut c, out, log_level())?;
        Ok(Status::Ok)
    });
    proxy!(
        linker,
        "proxy_get_current_time_nanoseconds",
        |c, out: i32| {
            write_u64(&mut c, out, now_nanos())?;
            Ok(Status::Ok)
        }
    );
    proxy!(
        linker,
        "proxy_set_tick_period_milliseconds",
        |c, period: i32| {
            let state = c.data_mut();
            let Some(root) = state.root_of(state.effective) else {
                return Ok(Status::NotFound);
            };
            if let Some(r) = state.roots.get_mut(&root) {
                r.tick_period_ms = period as u32;
                r.tick_generation += 1;
            }
            state.effects.push(Effect::Tick(root));
            Ok(Status::Ok)
        }
    );
    proxy!(linker, "proxy_done", |c| {
        let state = c.data_mut();
        let id = state.effective;
        if state.pending_done.remove(&id) {
            state.effects.push(Effect::Done(id));
            Ok(Status::Ok)
        } else {
            Ok(Status::NotFound)
        }
    });
    proxy!(linker, "proxy_set_effective_context", |c, id: i32| {
        let state = c.data_mut();
        let id = id as u32;
        if state.roots.contains_key(&id) || state.streams.contains_key(&id) {
            state.effective = id;
            Ok(Status::Ok)
        } else {
            Ok(Status::BadArgument)
        }
    });
    proxy!(
        linker,
        "proxy_call_foreign_function",
        |c,
         name_ptr: i32,
         name_len: i32,
         args_ptr: i32,
         args_len: i32,
         _out_ptr: i32,
         _out_len: i32| {
            let name = read_string(&c, name_ptr, name_len)?;
            read(&c, args_ptr, args_len)?;
            tracing::debug!(target: "wasm", function = %name, "no such foreign function");
            Ok(Status::NotFound)
        }
    );
    if abi == AbiVersion::V0_1_0 {
        proxy!(
            linker,
            "proxy_get_configuration",
            |c, ptr_out: i32, len_out: i32| {
                let config = c
                    .data()
                    .scope
                    .plugin_configuration
                    .clone()
                    .or_else(|| c.data().plugin().map(|p| p.configuration.clone()))
                    .unwrap_or_default();
                Ok(copy_out(&mut c, &config, ptr_out, len_out)?)
            }
        );
        proxy!(linker, "proxy_continue_request", |c| {
            Ok(signal(c.data_mut(), StreamType::HttpRequest, false))
        });
        proxy!(linker, "proxy_continue_response", |c| {
            Ok(signal(c.data_mut(), StreamType::HttpResponse, false))
        });
        proxy!(linker, "proxy_clear_route_cache", |_c| Ok(Status::Ok));
    }
}
