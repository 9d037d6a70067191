//! Header maps, buffers, stream control, local responses, HTTP and gRPC
//! callouts.

use bytes::{Bytes, BytesMut};
use wasmtime::Linker;

use super::headers::{self, MapMut};
use super::memory::{Ctx, copy_out, read, read_string, write_u32};
use super::runtime::signal;
use super::{AbiVersion, Status, pairs, proxy};
use crate::wasm::context::{HostState, LocalResponse, StreamType};

/// Runs `f` on header map `map_type` of the effective context.
fn with_map<R>(
    state: &HostState,
    map_type: i32,
    f: impl FnOnce(&mut MapMut<'_>) -> R,
) -> Result<R, Status> {
    match map_type {
        0..=3 => {
            let stream = state.stream().ok_or(Status::BadArgument)?;
            let mut s = stream.borrow_mut();
            let mut map = match map_type {
                0 => MapMut::Request(s.request.as_mut().ok_or(Status::BadArgument)?),
                1 => MapMut::Trailers(s.request_trailers.get_or_insert_with(Default::default)),
                2 => MapMut::Response(s.response.as_mut().ok_or(Status::BadArgument)?),
                _ => MapMut::Trailers(s.response_trailers.get_or_insert_with(Default::default)),
            };
            Ok(f(&mut map))
        }
        6 | 7 => {
            let call = state
                .scope
                .call_response
                .as_ref()
                .ok_or(Status::BadArgument)?;
            let list = if map_type == 6 {
                &call.headers
            } else {
                &call.trailers
            };
            Ok(f(&mut MapMut::Pairs(list)))
        }
        4 | 5 => Err(Status::BadArgument),
        _ => Err(Status::BadArgument),
    }
}

/// A map serialized; a known map that is not available in this callback
/// reads as empty (the SDKs trap on anything but OK here).
fn serialized_map(state: &HostState, map_type: i32) -> Result<Vec<u8>, Status> {
    if !(0..=7).contains(&map_type) {
        return Err(Status::BadArgument);
    }
    Ok(with_map(state, map_type, |m| {
        let list = headers::pairs(m);
        pairs::serialize(list.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
    })
    .unwrap_or_default())
}

/// A copy of buffer `kind` of the current callback.
fn buffer(state: &HostState, kind: i32) -> Result<Bytes, Status> {
    let stream_buffer = |pick: fn(&crate::wasm::context::StreamData) -> &BytesMut| {
        let s = state.stream().ok_or(Status::NotFound)?.borrow();
        Ok(Bytes::copy_from_slice(pick(&s)))
    };
    match kind {
        0 => stream_buffer(|s| &s.request_body),
        1 => stream_buffer(|s| &s.response_body),
        2 => stream_buffer(|s| &s.downstream_data),
        3 => stream_buffer(|s| &s.upstream_data),
        4 => state
            .scope
            .call_response
            .as_ref()
            .map(|c| c.body.clone())
            .ok_or(Status::NotFound),
        5 => Err(Status::NotFound),
        6 => state.scope.vm_configuration.clone().ok_or(Status::NotFound),
        7 => state
            .scope
            .plugin_configuration
            .clone()
            .ok_or(Status::NotFound),
        8 => state
            .scope
            .foreign_arguments
            .clone()
            .ok_or(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

/// The size of buffer `kind` without copying it.
fn buffer_len(state: &HostState, kind: i32) -> Result<usize, Status> {
    match kind {
        0..=3 => {
            let s = state.stream().ok_or(Status::NotFound)?.borrow();
            Ok(match kind {
                0 => s.request_body.len(),
                1 => s.response_body.len(),
                2 => s.downstream_data.len(),
                _ => s.upstream_data.len(),
            })
        }
        _ => buffer(state, kind).map(|b| b.len()),
    }
}

/// `proxy_set_buffer_bytes` on a body or data buffer: `start == 0, size
/// == 0` prepends, `start >= len` appends, otherwise `size` bytes at
/// `start` are replaced.
fn set_buffer(buf: &mut BytesMut, start: usize, size: usize, value: &[u8]) {
    let len = buf.len();
    if start >= len {
        buf.extend_from_slice(value);
        return;
    }
    let end = start.saturating_add(size).min(len);
    let mut out = BytesMut::with_capacity(len - (end - start) + value.len());
    out.extend_from_slice(&buf[..start]);
    out.extend_from_slice(value);
    out.extend_from_slice(&buf[end..]);
    *buf = out;
}

pub fn add(linker: &mut Linker<HostState>, abi: AbiVersion) {
    proxy!(
        linker,
        "proxy_get_header_map_size",
        |c, map: i32, out: i32| {
            let size = serialized_map(c.data(), map)?.len();
            write_u32(&mut c, out, size as u32)?;
            Ok(Status::Ok)
        }
    );
    proxy!(
        linker,
        "proxy_get_header_map_pairs",
        |c, map: i32, ptr_out: i32, len_out: i32| {
            let bytes = serialized_map(c.data(), map)?;
            Ok(copy_out(&mut c, &bytes, ptr_out, len_out)?)
        }
    );
    proxy!(
        linker,
        "proxy_set_header_map_pairs",
        |c, map: i32, ptr: i32, len: i32| {
            let data = read(&c, ptr, len)?;
            let list = pairs::deserialize(&data).unwrap_or_default();
            let ok = with_map(c.data(), map, |m| headers::set_all(m, &list))?;
            Ok(if ok { Status::Ok } else { Status::BadArgument })
        }
    );
    let v0_1 = abi == AbiVersion::V0_1_0;
    proxy!(
        linker,
        "proxy_get_header_map_value",
        |c, map: i32, key_ptr: i32, key_len: i32, ptr_out: i32, len_out: i32| {
            let key = read_string(&c, key_ptr, key_len)?;
            if !(0..=7).contains(&map) {
                return Ok(Status::BadArgument);
            }
            // A map not available in this callback has no values.
            match with_map(c.data(), map, |m| headers::get(m, &key)).unwrap_or(None) {
                Some(v) => Ok(copy_out(&mut c, &v, ptr_out, len_out)?),
                // ABI 0.1.0 reported a missing header as an empty value.
                None if v0_1 => Ok(copy_out(&mut c, &[], ptr_out, len_out)?),
                None => Ok(Status::NotFound),
            }
        }
    );
    proxy!(
        linker,
        "proxy_add_header_map_value",
        |c, map: i32, key_ptr: i32, key_len: i32, v_ptr: i32, v_len: i32| {
            let key = read_string(&c, key_ptr, key_len)?;
            let value = read(&c, v_ptr, v_len)?;
            let ok = with_map(c.data(), map, |m| headers::add(m, &key, &value))?;
            Ok(if ok { Status::Ok } else { Status::BadArgument })
        }
    );
    proxy!(
        linker,
        "proxy_replace_header_map_value",
        |c, map: i32, key_ptr: i32, key_len: i32, v_ptr: i32, v_len: i32| {
            let key = read_string(&c, key_ptr, key_len)?;
            let value = read(&c, v_ptr, v_len)?;
            let ok = with_map(c.data(), map, |m| headers::replace(m, &key, &value))?;
            Ok(if ok { Status::Ok } else { Status::BadArgument })
        }
    );
    proxy!(
        linker,
        "proxy_remove_header_map_value",
        |c, map: i32, key_ptr: i32, key_len: i32| {
            let key = read_string(&c, key_ptr, key_len)?.to_ascii_lowercase();
            let ok = with_map(c.data(), map, |m| headers::remove(m, &key))?;
            Ok(if ok { Status::Ok } else { Status::BadArgument })
        }
    );
    proxy!(
        linker,
        "proxy_get_buffer_status",
        |c, kind: i32, len_out: i32, flags_out: i32| {
            let len = buffer_len(c.data(), kind)?;
            write_u32(&mut c, len_out, len as u32)?;
            write_u32(&mut c, flags_out, 0)?;
            Ok(Status::Ok)
        }
    );
    proxy!(
        linker,
        "proxy_get_buffer_bytes",
        |c, kind: i32, start: i32, max: i32, ptr_out: i32, len_out: i32| {
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start.checked_add(max).is_none() {
                return Ok(Status::BadArgument);
            }
            let data = buffer(c.data(), kind)?;
            let from = start.min(data.len());
            let to = (start + max).min(data.len());
            let slice = data.slice(from..to);
            Ok(copy_out(&mut c, &slice, ptr_out, len_out)?)
        }
    );
    proxy!(
        linker,
        "proxy_set_buffer_bytes",
        |c, kind: i32, start: i32, size: i32, ptr: i32, len: i32| {
            let value = read(&c, ptr, len)?;
            if !(0..=3).contains(&kind) {
                return Ok(Status::BadArgument);
            }
            let stream = c.data().stream().ok_or(Status::NotFound)?;
            let mut s = stream.borrow_mut();
            let buf = match kind {
                0 => &mut s.request_body,
                1 => &mut s.response_body,
                2 => &mut s.downstream_data,
                _ => &mut s.upstream_data,
            };
            set_buffer(buf, start as u32 as usize, size as u32 as usize, &value);
            Ok(Status::Ok)
        }
    );
    proxy!(linker, "proxy_continue_stream", |c, kind: i32| {
        let Some(kind) = StreamType::from_abi(kind) else {
            return Ok(Status::BadArgument);
        };
        Ok(signal(c.data_mut(), kind, false))
    });
    proxy!(linker, "proxy_close_stream", |c, kind: i32| {
        let Some(kind) = StreamType::from_abi(kind) else {
            return Ok(Status::BadArgument);
        };
        Ok(signal(c.data_mut(), kind, true))
    });
    proxy!(
        linker,
        "proxy_send_local_response",
        |c,
         status: i32,
         details_ptr: i32,
         details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc_status: i32| {
            let details = read_string(&c, details_ptr, details_len)?;
            let body = read(&c, body_ptr, body_len)?;
            let hdrs = read(&c, headers_ptr, headers_len)?;
            let headers = pairs::deserialize(&hdrs).unwrap_or_default();
            let stream = c.data().stream().ok_or(Status::NotFound)?.clone();
            stream.borrow_mut().local_response = Some(LocalResponse {
                status: status as u32 as u16,
                details,
                body: body.into(),
                headers,
                grpc_status,
            });
            Ok(signal(c.data_mut(), StreamType::HttpRequest, false))
        }
    );
    proxy!(
        linker,
        "proxy_get_status",
        |c, code_out: i32, ptr_out: i32, len_out: i32| {
            let (code, message) = c
                .data()
                .scope
                .call_status
                .clone()
                .unwrap_or((0, String::new()));
            write_u32(&mut c, code_out, code)?;
            Ok(copy_out(&mut c, message.as_bytes(), ptr_out, len_out)?)
        }
    );
    proxy!(
        linker,
        "proxy_http_call",
        |c,
         up_ptr: i32,
         up_len: i32,
         h_ptr: i32,
         h_len: i32,
         body_ptr: i32,
         body_len: i32,
         t_ptr: i32,
         t_len: i32,
         timeout_ms: i32,
         id_out: i32| {
            let upstream = read_string(&c, up_ptr, up_len)?;
            let hdrs = pairs::deserialize(&read(&c, h_ptr, h_len)?).ok_or(Status::BadArgument)?;
            let body = read(&c, body_ptr, body_len)?;
            let trailers = pairs::deserialize(&read(&c, t_ptr, t_len)?).unwrap_or_default();
            // Check the out-pointer before anything is sent.
            write_u32(&mut c, id_out, 0)?;
            let id = crate::wasm::callout::dispatch(
                c.data_mut(),
                &upstream,
                hdrs,
                body.into(),
                trailers,
                timeout_ms as u32,
            )?;
            write_u32(&mut c, id_out, id)?;
            Ok(Status::Ok)
        }
    );
    // gRPC callouts are not implemented: the call is taken and ends with
    // UNIMPLEMENTED in `proxy_on_grpc_close` (see callout.rs).
    proxy!(
        linker,
        "proxy_grpc_call",
        |c,
         _a: i32,
         _b: i32,
         _c2: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _j: i32,
         _k: i32,
         token_out: i32| { grpc_unimplemented(&mut c, token_out) }
    );
    proxy!(
        linker,
        "proxy_grpc_stream",
        |c,
         _a: i32,
         _b: i32,
         _c2: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         token_out: i32| { grpc_unimplemented(&mut c, token_out) }
    );
    proxy!(
        linker,
        "proxy_grpc_send",
        |_c, _a: i32, _b: i32, _d: i32, _e: i32| { Ok(Status::NotFound) }
    );
    // Cancelling or closing a call that has not ended yet drops it: no
    // `proxy_on_grpc_close` follows, as in Envoy.
    proxy!(linker, "proxy_grpc_cancel", |c, token: i32| Ok(
        grpc_forget(c.data_mut(), token)
    ));
    proxy!(linker, "proxy_grpc_close", |c, token: i32| Ok(grpc_forget(
        c.data_mut(),
        token
    )));
}

fn grpc_unimplemented(c: &mut Ctx<'_>, token_out: i32) -> super::HostResult {
    super::runtime::log(
        c.data(),
        3,
        "gRPC callouts are not implemented by wasp: the call ends with UNIMPLEMENTED",
    );
    // INTERNAL_FAILURE is the one failure every SDK expects here.
    let Ok(id) = super::super::callout::grpc_unimplemented(c.data_mut()) else {
        return Ok(Status::InternalFailure);
    };
    write_u32(c, token_out, id)?;
    Ok(Status::Ok)
}

fn grpc_forget(state: &mut HostState, token: i32) -> Status {
    match state.calls.remove(&(token as u32)) {
        Some(_) => Status::Ok,
        None => Status::NotFound,
    }
}
