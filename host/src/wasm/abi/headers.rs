//! Header maps as filters see them: HTTP/2-style pairs with the pseudo
//! headers (`:method`, `:path`, `:authority`, `:scheme`, `:status`) over
//! wasp's `http` request and response heads.

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

/// One header map a hostcall can reach.
pub enum MapMut<'a> {
    Request(&'a mut http::request::Parts),
    Response(&'a mut http::response::Parts),
    Trailers(&'a mut HeaderMap),
    /// An http_call response's headers or trailers (read only).
    Pairs(&'a [(String, Bytes)]),
}

fn request_pseudo(p: &http::request::Parts, name: &str) -> Option<Option<Vec<u8>>> {
    Some(match name {
        ":method" => Some(p.method.as_str().as_bytes().to_vec()),
        ":path" => Some(
            p.uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes()
                .to_vec(),
        ),
        ":authority" => p
            .headers
            .get(HOST)
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| p.uri.authority().map(|a| a.as_str().as_bytes().to_vec())),
        ":scheme" => Some(p.uri.scheme_str().unwrap_or("http").as_bytes().to_vec()),
        _ if name.starts_with(':') => None,
        _ => return None,
    })
}

fn set_request_pseudo(p: &mut http::request::Parts, name: &str, value: &[u8]) {
    match name {
        ":method" => {
            if let Ok(m) = Method::from_bytes(value) {
                p.method = m;
            }
        }
        ":path" => {
            let mut parts = std::mem::take(&mut p.uri).into_parts();
            parts.path_and_query = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            p.uri = Uri::from_parts(parts).unwrap_or_default();
        }
        ":authority" => {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                p.headers.insert(HOST, v);
            }
            if p.uri.authority().is_some() {
                let mut parts = std::mem::take(&mut p.uri).into_parts();
                parts.authority = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                p.uri = Uri::from_parts(parts).unwrap_or_default();
            }
        }
        _ => {}
    }
}

/// The first value of `name`.
pub fn get(map: &MapMut<'_>, name: &str) -> Option<Vec<u8>> {
    let name = name.to_ascii_lowercase();
    match map {
        MapMut::Request(p) => {
            if let Some(v) = request_pseudo(p, &name) {
                return v;
            }
            p.headers.get(&name).map(|v| v.as_bytes().to_vec())
        }
        MapMut::Response(p) if name == ":status" => Some(p.status.as_str().as_bytes().to_vec()),
        MapMut::Response(p) => p.headers.get(&name).map(|v| v.as_bytes().to_vec()),
        MapMut::Trailers(h) => h.get(&name).map(|v| v.as_bytes().to_vec()),
        MapMut::Pairs(pairs) => pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.to_vec()),
    }
}

/// Every pair, pseudo headers first.
pub fn pairs(map: &MapMut<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let headers = match map {
        MapMut::Request(p) => {
            for name in [":authority", ":path", ":method", ":scheme"] {
                if let Some(Some(v)) = request_pseudo(p, name) {
                    out.push((name.as_bytes().to_vec(), v));
                }
            }
            &p.headers
        }
        MapMut::Response(p) => {
            out.push((b":status".to_vec(), p.status.as_str().as_bytes().to_vec()));
            &p.headers
        }
        MapMut::Trailers(h) => &**h,
        MapMut::Pairs(pairs) => {
            return pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
                .collect();
        }
    };
    let skip_host = matches!(map, MapMut::Request(_));
    for (k, v) in headers {
        if skip_host && k == HOST {
            continue;
        }
        out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    out
}

fn headers_mut<'a>(map: &'a mut MapMut<'_>) -> Option<&'a mut HeaderMap> {
    match map {
        MapMut::Request(p) => Some(&mut p.headers),
        MapMut::Response(p) => Some(&mut p.headers),
        MapMut::Trailers(h) => Some(h),
        MapMut::Pairs(_) => None,
    }
}

/// Sets a pseudo header; false if `name` is not one.
fn set_pseudo(map: &mut MapMut<'_>, name: &str, value: &[u8]) -> bool {
    if !name.starts_with(':') {
        return false;
    }
    match map {
        MapMut::Request(p) => set_request_pseudo(p, name, value),
        MapMut::Response(p) if name == ":status" => {
            if let Some(s) = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                p.status = s;
            }
        }
        _ => {}
    }
    true
}

fn header(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

/// Appends `name: value`; false if the map is read-only.
pub fn add(map: &mut MapMut<'_>, name: &str, value: &[u8]) -> bool {
    if set_pseudo(map, name, value) {
        return true;
    }
    let Some(h) = headers_mut(map) else {
        return false;
    };
    if let Some((n, v)) = header(name, value) {
        h.append(n, v);
    }
    true
}

/// Replaces every value of `name` with `value`.
pub fn replace(map: &mut MapMut<'_>, name: &str, value: &[u8]) -> bool {
    if set_pseudo(map, name, value) {
        return true;
    }
    let Some(h) = headers_mut(map) else {
        return false;
    };
    if let Some((n, v)) = header(name, value) {
        h.insert(n, v);
    }
    true
}

pub fn remove(map: &mut MapMut<'_>, name: &str) -> bool {
    if name.starts_with(':') {
        return !matches!(map, MapMut::Pairs(_));
    }
    let Some(h) = headers_mut(map) else {
        return false;
    };
    if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
        h.remove(n);
    }
    true
}

/// Replaces the whole map.
pub fn set_all(map: &mut MapMut<'_>, pairs: &[(String, Bytes)]) -> bool {
    let Some(h) = headers_mut(map) else {
        return false;
    };
    h.clear();
    for (k, v) in pairs.iter().filter(|(k, _)| !k.starts_with(':')) {
        if let Some((n, v)) = header(k, v) {
            h.append(n, v);
        }
    }
    for (k, v) in pairs.iter().filter(|(k, _)| k.starts_with(':')) {
        set_pseudo(map, k, v);
    }
    true
}
