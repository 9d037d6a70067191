//! Local replies to gRPC requests, as Envoy sends them: an error wasp (or
//! a filter) answers itself goes to a gRPC client as a trailers-only
//! response, HTTP 200 with `grpc-status` and `grpc-message`, since gRPC
//! clients read the status from there, not from the HTTP status.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::router::Body;

/// Marks a response wasp made itself (see [`super::router::local`]): its
/// body, and the gRPC status a wasm filter gave it, if any.
#[derive(Debug, Clone)]
pub struct LocalReply {
    pub message: Bytes,
    pub grpc_status: Option<u32>,
}

/// Whether a request is gRPC: its content-type is `application/grpc`,
/// alone or with a `+` subtype or parameters (gRPC-Web is not).
pub fn is_grpc(request: &HeaderMap) -> bool {
    request
        .get(CONTENT_TYPE)
        .and_then(|v| v.as_bytes().strip_prefix(b"application/grpc"))
        .is_some_and(|rest| matches!(rest.first(), None | Some(b'+' | b';')))
}

/// A request's `grpc-timeout` (up to 8 digits and a unit: H, M, S, m,
/// u, n), if it has a valid one.
pub fn timeout(request: &HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = request.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A local reply recast for a gRPC client; any other response as it is.
pub fn answer(resp: Response<Body>) -> Response<Body> {
    let Some(local) = resp.extensions().get::<LocalReply>() else {
        return resp;
    };
    let status = local
        .grpc_status
        .unwrap_or_else(|| from_http(resp.status()));
    // A JSON body loses the newline its format ends with, as in Envoy
    // (which keeps a text one's, percent-encoded).
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t == "application/json");
    let text = match json {
        true => local.message.strip_suffix(b"\n").unwrap_or(&local.message),
        false => &local.message,
    };
    let message = (!text.is_empty()).then(|| percent_encode(text));
    let (mut parts, _) = resp.into_parts();
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.remove(CONTENT_LENGTH);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(status));
    if let Some(m) = message.and_then(|m| HeaderValue::from_maybe_shared(m).ok()) {
        headers.insert("grpc-message", m);
    }
    Response::from_parts(parts, Body::empty())
}

/// Envoy's mapping of an HTTP status to a gRPC one (the gRPC spec's, with
/// UNKNOWN for the rest).
fn from_http(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as
/// `%XX`.
fn percent_encode(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len());
    for &b in message {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_by_content_type() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_are_read() {
        let t = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            timeout(&h)
        };
        use std::time::Duration;
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5u"), Some(Duration::from_micros(5)));
        assert_eq!(t("123456789S"), None);
        assert_eq!(t("10x"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            &percent_encode("a b%é\n".as_bytes())[..],
            b"a b%25%C3%A9%0A"
        );
    }

    #[test]
    fn local_replies_become_trailers_only_responses() {
        let resp = answer(super::super::router::local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
        ));
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no healthy upstream");
        assert!(hyper::body::Body::is_end_stream(resp.body()));
        let not_found = answer(super::super::router::local(StatusCode::NOT_FOUND, ""));
        assert_eq!(not_found.headers()["grpc-status"], "12");
        assert!(not_found.headers().get("grpc-message").is_none());
    }
}
