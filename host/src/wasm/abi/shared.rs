//! Shared data, shared queues and metrics.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use wasmtime::Linker;

use super::memory::{copy_out, read, read_string, write_u32, write_u64};
use super::{Status, proxy};
use crate::stats::Gauge;
use crate::wasm::context::{HostState, Metric};
use crate::wasm::shared;

/// A gauge is one value for the whole process (set from any worker), so
/// every worker's VM shares the first shard created for a name.
fn shared_gauge(name: &str, make: impl FnOnce() -> Gauge) -> Gauge {
    static GAUGES: OnceLock<Mutex<HashMap<String, Gauge>>> = OnceLock::new();
    let mut map = GAUGES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    map.entry(name.to_string()).or_insert_with(make).clone()
}

/// Metric ids carry their type in the low two bits, as Envoy's do.
fn metric(state: &HostState, id: i32) -> Option<&Metric> {
    state.metrics.get((id as u32 >> 2) as usize)
}

pub fn add(linker: &mut Linker<HostState>) {
    proxy!(
        linker,
        "proxy_get_shared_data",
        |c, key_ptr: i32, key_len: i32, ptr_out: i32, len_out: i32, cas_out: i32| {
            let key = read_string(&c, key_ptr, key_len)?;
            let Some((value, cas)) = shared::get(&c.data().vm_id, &key) else {
                return Ok(Status::NotFound);
            };
            write_u32(&mut c, cas_out, cas)?;
            Ok(copy_out(&mut c, &value, ptr_out, len_out)?)
        }
    );
    proxy!(
        linker,
        "proxy_set_shared_data",
        |c, key_ptr: i32, key_len: i32, v_ptr: i32, v_len: i32, cas: i32| {
            let key = read_string(&c, key_ptr, key_len)?;
            let value = read(&c, v_ptr, v_len)?;
            if shared::set(&c.data().vm_id, &key, value.into(), cas as u32) {
                Ok(Status::Ok)
            } else {
                Ok(Status::CasMismatch)
            }
        }
    );
    proxy!(
        linker,
        "proxy_register_shared_queue",
        |c, name_ptr: i32, name_len: i32, id_out: i32| {
            let name = read_string(&c, name_ptr, name_len)?;
            let state = c.data();
            let Some(root) = state.root_of(state.effective) else {
                return Ok(Status::NotFound);
            };
            let id = shared::register_queue(&state.vm_id, &name, state.events.clone(), root);
            write_u32(&mut c, id_out, id)?;
            Ok(Status::Ok)
        }
    );
    proxy!(
        linker,
        "proxy_resolve_shared_queue",
        |c, vm_ptr: i32, vm_len: i32, name_ptr: i32, name_len: i32, id_out: i32| {
            let vm_id = read_string(&c, vm_ptr, vm_len)?;
            let name = read_string(&c, name_ptr, name_len)?;
            let vm_id = if vm_id.is_empty() {
                c.data().vm_id.clone()
            } else {
                vm_id
            };
            let Some(id) = shared::resolve_queue(&vm_id, &name) else {
                return Ok(Status::NotFound);
            };
            write_u32(&mut c, id_out, id)?;
            Ok(Status::Ok)
        }
    );
    proxy!(
        linker,
        "proxy_enqueue_shared_queue",
        |c, id: i32, ptr: i32, len: i32| {
            let value = read(&c, ptr, len)?;
            Ok(if shared::enqueue(id as u32, value.into()) {
                Status::Ok
            } else {
                Status::NotFound
            })
        }
    );
    proxy!(
        linker,
        "proxy_dequeue_shared_queue",
        |c, id: i32, ptr_out: i32, len_out: i32| {
            match shared::dequeue(id as u32) {
                None => Ok(Status::NotFound),
                Some(None) => Ok(Status::Empty),
                Some(Some(v)) => Ok(copy_out(&mut c, &v, ptr_out, len_out)?),
            }
        }
    );
    proxy!(
        linker,
        "proxy_define_metric",
        |c, kind: i32, name_ptr: i32, name_len: i32, id_out: i32| {
            if !(0..=2).contains(&kind) {
                return Ok(Status::BadArgument);
            }
            let name = read_string(&c, name_ptr, name_len)?;
            let state = c.data_mut();
            let index = match state.metrics.iter().position(|m| m.name() == name) {
                Some(i) => i,
                None => {
                    let scope = state.stats.child("wasmcustom");
                    state.metrics.push(match kind {
                        0 => Metric::Counter(name.clone(), scope.counter(&name)),
                        1 => {
                            Metric::Gauge(name.clone(), shared_gauge(&name, || scope.gauge(&name)))
                        }
                        _ => Metric::Histogram(name.clone(), scope.histogram(&name)),
                    });
                    state.metrics.len() - 1
                }
            };
            let id = (index as u32) << 2 | state.metrics[index].kind();
            write_u32(&mut c, id_out, id)?;
            Ok(Status::Ok)
        }
    );
    proxy!(
        linker,
        "proxy_increment_metric",
        |c, id: i32, delta: i64| {
            Ok(match metric(c.data(), id) {
                None => Status::NotFound,
                Some(Metric::Counter(_, counter)) if delta >= 0 => {
                    counter.add(delta as u64);
                    Status::Ok
                }
                Some(Metric::Gauge(_, g)) => {
                    g.add(delta);
                    Status::Ok
                }
                Some(_) => Status::BadArgument,
            })
        }
    );
    proxy!(linker, "proxy_record_metric", |c, id: i32, value: i64| {
        Ok(match metric(c.data(), id) {
            None => Status::NotFound,
            Some(Metric::Counter(name, counter)) => {
                // Recording a counter sets its total: add the difference.
                let now = c.data().stats.child("wasmcustom").value(name).unwrap_or(0);
                if value >= now {
                    counter.add((value - now) as u64);
                    Status::Ok
                } else {
                    Status::BadArgument
                }
            }
            Some(Metric::Gauge(_, g)) => {
                g.set(value);
                Status::Ok
            }
            Some(Metric::Histogram(_, h)) => {
                h.record(value as u64);
                Status::Ok
            }
        })
    });
    proxy!(linker, "proxy_get_metric", |c, id: i32, out: i32| {
        let value = match metric(c.data(), id) {
            None => return Ok(Status::NotFound),
            Some(Metric::Counter(name, _)) => {
                c.data().stats.child("wasmcustom").value(name).unwrap_or(0)
            }
            Some(Metric::Gauge(_, g)) => g.get(),
            Some(Metric::Histogram(..)) => return Ok(Status::BadArgument),
        };
        write_u64(&mut c, out, value as u64)?;
        Ok(Status::Ok)
    });
}
