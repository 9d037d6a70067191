//! Properties: Envoy's attribute paths (`request.path`, `source.address`,
//! `plugin_name`, ...) with Envoy's encodings: strings as bytes, integers
//! as 8-byte little-endian, booleans as one byte, times and durations as
//! nanoseconds, maps as serialized pairs. Paths arrive as NUL-separated
//! segments (with or without a trailing NUL: SDKs differ).

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use wasmtime::Linker;

use super::headers::{self, MapMut};
use super::memory::{copy_out, read};
use super::{Status, pairs, proxy};
use crate::wasm::context::{HostState, StreamData};

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn header_map(map: &MapMut<'_>) -> Vec<u8> {
    let list = headers::pairs(map);
    pairs::serialize(list.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

fn stream_property(s: &mut StreamData, path: &[&str]) -> Option<Vec<u8>> {
    let c = &s.connection;
    let started = s.started;
    Some(match path {
        ["source", "address"] => c.source.to_string().into_bytes(),
        ["source", "port"] => int(c.source.port().into()),
        ["destination", "address"] => c.destination.to_string().into_bytes(),
        ["destination", "port"] => int(c.destination.port().into()),
        ["connection", "id"] => int(c.id as i64),
        ["connection", "mtls"] => vec![0],
        ["upstream", "address"] => s.upstream?.to_string().into_bytes(),
        ["upstream", "port"] => int(s.upstream?.port().into()),
        ["request", "time"] => int(started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)),
        ["request", "duration"] => int(started.elapsed().map_or(0, |d| d.as_nanos() as i64)),
        ["request", "protocol"] => s.protocol.as_bytes().to_vec(),
        ["request", "size"] => int(s.request_size as i64),
        ["response", "size"] => int(s.response_size as i64),
        ["request", rest @ ..] => {
            let req = s.request.as_mut()?;
            let map = MapMut::Request(req);
            let header = |name: &str| headers::get(&map, name);
            match rest {
                ["path"] => header(":path")?,
                ["url_path"] => {
                    let p = header(":path")?;
                    let end = p.iter().position(|b| *b == b'?').unwrap_or(p.len());
                    p[..end].to_vec()
                }
                ["query"] => {
                    let p = header(":path")?;
                    let start = p.iter().position(|b| *b == b'?')?;
                    p[start + 1..].to_vec()
                }
                ["host"] => header(":authority")?,
                ["scheme"] => header(":scheme")?,
                ["method"] => header(":method")?,
                ["referer"] => header("referer")?,
                ["useragent"] => header("user-agent")?,
                ["id"] => header("x-request-id")?,
                ["headers"] => header_map(&map),
                ["headers", name] => header(name)?,
                _ => return None,
            }
        }
        ["response", rest @ ..] => {
            let resp = s.response.as_mut()?;
            let map = MapMut::Response(resp);
            match rest {
                ["code"] => int(resp_code(&map)),
                ["headers"] => header_map(&map),
                ["headers", name] => headers::get(&map, name)?,
                _ => return None,
            }
        }
        _ => return None,
    })
}

fn resp_code(map: &MapMut<'_>) -> i64 {
    headers::get(map, ":status")
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0)
}

fn get(state: &HostState, raw: &[u8]) -> Option<Vec<u8>> {
    let joined = path_key(raw);
    let segments: Vec<&str> = joined.split('\0').collect();
    let plugin = state.plugin();
    match segments.as_slice() {
        ["plugin_name"] => return Some(plugin?.name.as_bytes().to_vec()),
        ["plugin_root_id"] => return Some(plugin?.root_id.as_bytes().to_vec()),
        ["plugin_vm_id"] => return Some(state.vm_id.as_bytes().to_vec()),
        ["node", "id"] => return Some(crate::wasm::node().id.as_bytes().to_vec()),
        ["node", "cluster"] => return Some(crate::wasm::node().cluster.as_bytes().to_vec()),
        ["listener_direction"] => {
            let stream = state.stream()?;
            return Some(int(stream.borrow().connection.direction));
        }
        _ => {}
    }
    // Like Envoy, values set with proxy_set_property are found by the
    // path's first segment (so only one-segment paths read back).
    let custom = segments[0];
    if let Some(stream) = state.stream() {
        let mut s = stream.borrow_mut();
        if let Some(v) = s.properties.get(custom) {
            return Some(v.to_vec());
        }
        if let Some(v) = stream_property(&mut s, &segments) {
            return Some(v);
        }
    }
    state.properties.get(custom).map(|v| v.to_vec())
}

/// A path as stored: segments joined by NUL, trailing NULs dropped.
fn path_key(raw: &[u8]) -> String {
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(raw);
    String::from_utf8_lossy(trimmed).into_owned()
}

pub fn add(linker: &mut Linker<HostState>) {
    proxy!(
        linker,
        "proxy_get_property",
        |c, path_ptr: i32, path_len: i32, ptr_out: i32, len_out: i32| {
            let path = read(&c, path_ptr, path_len)?;
            match get(c.data(), &path) {
                Some(v) => Ok(copy_out(&mut c, &v, ptr_out, len_out)?),
                None => Ok(Status::NotFound),
            }
        }
    );
    proxy!(
        linker,
        "proxy_set_property",
        |c, path_ptr: i32, path_len: i32, v_ptr: i32, v_len: i32| {
            let key = path_key(&read(&c, path_ptr, path_len)?);
            let value = Bytes::from(read(&c, v_ptr, v_len)?);
            let state = c.data_mut();
            match state.stream() {
                Some(stream) => {
                    stream.borrow_mut().properties.insert(key, value);
                }
                None => {
                    state.properties.insert(key, value);
                }
            }
            Ok(Status::Ok)
        }
    );
}
