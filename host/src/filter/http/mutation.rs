//! What the connection manager does to a request before any HTTP filter
//! sees it, and to its response on the way out (Envoy's
//! `ConnectionManagerUtility`): the path's normal form and the Host's
//! port; x-forwarded-for and -proto; whether the request is internal,
//! and if not, the removal of the `x-envoy-*` headers only trusted hops
//! may set; x-request-id; Via; and the client certificate header.
//!
//! Requests that need none of it pay a scan of their header names and the
//! x-request-id; everything else is looked up only when configured.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::config::path::{index, join};
use crate::config::{
    EscapedSlashesAction, ForwardClientCertDetails, HttpConnectionManagerConfig,
    InternalAddressConfig, ValidationError,
};
use crate::filter::http::path::{self, EscapedSlashes, Normalization};
use crate::filter::http::retry::RETRY_HEADERS;
use crate::filter::http::tracing::{TraceReason, TraceSampling};

// Consts, so that their names are checked once, at compile time, and not
// on every request.
pub const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Which port a request's Host loses before filters and routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    Keep,
    /// `strip_any_host_port`.
    Any,
    /// `strip_matching_host_port`: the listener's own port only.
    Matching,
}

/// What [`RequestMutation::request`] found of a request.
pub struct Readied {
    /// The client: the peer, or the address x-forwarded-for names. It is
    /// the request's `%DOWNSTREAM_REMOTE_ADDRESS%`, the wasm filters'
    /// `source.address` and the source IP hash policies hash.
    pub client: SocketAddr,
    pub path_accepted: bool,
    /// The tracing decision, when `tracing` is configured.
    pub traced: Option<TraceReason>,
}

/// The connection manager's settings for what it does to requests and
/// responses, validated.
#[derive(Debug, Clone)]
pub struct RequestMutation {
    use_remote_address: bool,
    /// `internal_address_config.cidr_ranges`: (network, prefix length).
    internal_ranges: Vec<(IpAddr, u8)>,
    generate_request_id: bool,
    /// Keep an x-request-id from an external client (else an edge
    /// request gets a new one).
    preserve_external_request_id: bool,
    /// Copy the request's x-request-id onto its response.
    request_id_in_response: bool,
    /// `skip_xff_append`: use_remote_address without adding to x-forwarded-for.
    skip_xff_append: bool,
    /// How many proxies in front, each having appended to x-forwarded-for,
    /// are trusted (see `client`).
    xff_num_trusted_hops: u32,
    /// `via`: appended to the Via of requests and responses.
    via: Option<HeaderValue>,
    /// Which Host ports are dropped before routing.
    strip_port: StripPort,
    /// How paths are normalized before filters and routing.
    paths: Normalization,
    /// `forward_client_cert_details: ALWAYS_FORWARD_ONLY`: the client's
    /// x-forwarded-client-cert goes on (else it is removed).
    forward_client_cert: bool,
    /// `tracing`: the decision made for each request.
    tracing: Option<TraceSampling>,
}

impl RequestMutation {
    pub fn validate(c: &HttpConnectionManagerConfig, path: &str) -> Result<Self, ValidationError> {
        Ok(RequestMutation {
            use_remote_address: c.use_remote_address,
            internal_ranges: internal_ranges(c.internal_address_config.as_ref(), path)?,
            generate_request_id: c.generate_request_id.unwrap_or(true),
            preserve_external_request_id: c.preserve_external_request_id,
            request_id_in_response: c.always_set_request_id_in_response,
            skip_xff_append: c.skip_xff_append,
            xff_num_trusted_hops: c.xff_num_trusted_hops,
            via: match c.via.as_deref() {
                None | Some("") => None,
                Some(v) => Some(HeaderValue::from_str(v).map_err(|_| {
                    ValidationError::new(join(path, "via"), "not a valid header value")
                })?),
            },
            strip_port: match (c.strip_any_host_port, c.strip_matching_host_port) {
                (true, true) => {
                    return Err(ValidationError::new(
                        join(path, "strip_any_host_port"),
                        "set strip_any_host_port or strip_matching_host_port, not both",
                    ));
                }
                (true, false) => StripPort::Any,
                (false, true) => StripPort::Matching,
                (false, false) => StripPort::Keep,
            },
            forward_client_cert: c.forward_client_cert_details
                == ForwardClientCertDetails::AlwaysForwardOnly,
            tracing: TraceSampling::validate(c, path)?,
            paths: Normalization {
                dot_segments: c.normalize_path.unwrap_or(false),
                merge_slashes: c.merge_slashes,
                escaped_slashes: match c.path_with_escaped_slashes_action {
                    EscapedSlashesAction::ImplementationSpecificDefault
                    | EscapedSlashesAction::KeepUnchanged => EscapedSlashes::Keep,
                    EscapedSlashesAction::RejectRequest => EscapedSlashes::Reject,
                    EscapedSlashesAction::UnescapeAndForward => EscapedSlashes::Unescape,
                    EscapedSlashesAction::UnescapeAndRedirect => {
                        return Err(ValidationError::new(
                            join(path, "path_with_escaped_slashes_action"),
                            "UNESCAPE_AND_REDIRECT is not supported (UNESCAPE_AND_FORWARD is)",
                        ));
                    }
                },
            },
        })
    }

    /// Readies a request from `peer` (on the listener at `local`) for the
    /// filters. Returns who the client is (see `client` below) and
    /// whether its path is accepted; a refused one is answered 400, with
    /// the headers still readied for the access log.
    pub fn request<B>(&self, req: &mut Request<B>, peer: SocketAddr, local: SocketAddr) -> Readied {
        let path_accepted = self.paths.is_off() || self.normalize_path(req);
        let client = self.headers(req, peer, local);
        let traced = self.tracing.as_ref().map(|t| t.decide(req.headers_mut()));
        Readied {
            client,
            path_accepted,
            traced,
        }
    }

    /// What a response gets on its way out: Via.
    pub fn response(&self, headers: &mut http::HeaderMap) {
        if let Some(via) = &self.via {
            append_via(headers, via);
        }
    }

    /// What Envoy's connection manager does to a request before any HTTP
    /// filter sees it: x-forwarded-for, x-envoy-internal or (with
    /// use_remote_address) x-envoy-external-address, x-forwarded-proto and
    /// x-request-id. Requests that are not internal lose the `x-envoy-*`
    /// headers only trusted hops may set.
    fn headers<B>(&self, req: &mut Request<B>, peer: SocketAddr, local: SocketAddr) -> SocketAddr {
        if self.strip_port != StripPort::Keep {
            strip_host_port(
                req,
                (self.strip_port == StripPort::Matching).then_some(local.port()),
            );
        }
        let headers = req.headers_mut();
        // A scan of the names, so that requests with none of these headers
        // (most) pay no hashed lookups.
        let (mut envoy, mut client_cert, mut forwarded) = (false, false, false);
        for name in headers.keys() {
            envoy |= name.as_str().starts_with("x-envoy-");
            client_cert |= name == X_FORWARDED_CLIENT_CERT;
            forwarded |= name == X_FORWARDED_FOR;
        }
        let xff = match forwarded {
            true => headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()),
            false => None,
        };
        let (client, internal) = self.client(xff, peer);
        let appended = (self.use_remote_address && !self.skip_xff_append).then(|| {
            let ip = peer.ip();
            match xff {
                Some(existing) => format!("{existing},{ip}"),
                None => ip.to_string(),
            }
        });
        if let Some(v) = appended.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if internal {
            headers.insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
        } else if self.use_remote_address {
            if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
            }
        }
        if envoy && !internal {
            for name in EXTERNAL_STRIPPED.iter().chain(&RETRY_HEADERS) {
                headers.remove(name);
            }
        }
        if client_cert && !self.forward_client_cert {
            headers.remove(X_FORWARDED_CLIENT_CERT);
        }
        // The client's own x-forwarded-proto is not to be trusted at the
        // edge; one hashing each (`entry`) rather than a lookup and an insert.
        let http = HeaderValue::from_static("http");
        if self.use_remote_address && self.xff_num_trusted_hops == 0 {
            headers.insert(X_FORWARDED_PROTO, http);
        } else {
            headers.entry(X_FORWARDED_PROTO).or_insert(http);
        }
        if self.generate_request_id {
            // An edge request's id is wasp's own unless told to keep it.
            let edge = self.use_remote_address && !internal;
            if edge && !self.preserve_external_request_id {
                headers.insert(X_REQUEST_ID, request_id());
            } else if let header::Entry::Vacant(slot) = headers.entry(X_REQUEST_ID) {
                slot.insert(request_id());
            }
        }
        if let Some(via) = &self.via {
            append_via(headers, via);
        }
        client
    }

    /// Who the client of a request from `peer` with x-forwarded-for `xff`
    /// is, and whether the request is internal, as Envoy decides:
    /// - with use_remote_address, the peer, unless `xff_num_trusted_hops`
    ///   (N) is set: then the Nth address from the right of the
    ///   x-forwarded-for it came with. It is internal if it came without
    ///   one from a peer in `internal_address_config`.
    /// - without, the (N+1)th address from the right of x-forwarded-for
    ///   (the peer if there is no such address). It is internal if that
    ///   is the only address there and is in `internal_address_config`.
    ///
    /// A client named by x-forwarded-for has port 0, as in Envoy's logs.
    fn client(&self, xff: Option<&str>, peer: SocketAddr) -> (SocketAddr, bool) {
        let hops = self.xff_num_trusted_hops as usize;
        let from_right = |n: usize| -> Option<IpAddr> {
            let entry = xff?.rsplit(',').nth(n)?;
            entry.trim().parse().ok()
        };
        if self.use_remote_address {
            let trusted = hops.checked_sub(1).and_then(from_right);
            let internal = xff.is_none() && self.is_internal(peer.ip());
            return (trusted.map_or(peer, |ip| SocketAddr::new(ip, 0)), internal);
        }
        match from_right(hops) {
            Some(ip) => {
                let single = hops == 0 && xff.is_some_and(|x| !x.contains(','));
                (SocketAddr::new(ip, 0), single && self.is_internal(ip))
            }
            None => (peer, false),
        }
    }

    /// `always_set_request_id_in_response`: the x-request-id a request's
    /// response gets.
    pub fn request_id_for_response(&self, request: &http::HeaderMap) -> Option<HeaderValue> {
        match self.request_id_in_response {
            true => request.get(X_REQUEST_ID).cloned(),
            false => None,
        }
    }

    /// Normalizes the request's path as configured; false if the path is
    /// refused.
    fn normalize_path<B>(&self, req: &mut Request<B>) -> bool {
        let Some(pq) = req.uri().path_and_query() else {
            return true;
        };
        let normal = match path::normalize(pq.as_str(), self.paths) {
            Ok(None) => return true,
            Ok(Some(normal)) => normal,
            Err(path::Rejected) => return false,
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = normal.parse().ok();
        match Uri::from_parts(parts) {
            Ok(uri) => {
                *req.uri_mut() = uri;
                true
            }
            Err(_) => false,
        }
    }

    fn is_internal(&self, ip: IpAddr) -> bool {
        self.internal_ranges
            .iter()
            .any(|&(net, len)| in_range(ip, net, len))
    }
}

/// Adds `via` to a message's Via list.
fn append_via(headers: &mut http::HeaderMap, via: &HeaderValue) {
    let value = match headers.get(header::VIA) {
        Some(old) => {
            let mut v = old.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(via.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| via.clone())
        }
        None => via.clone(),
    };
    headers.insert(header::VIA, value);
}

/// Drops the port of a request's Host (or HTTP/2 authority): any port, or
/// only `port`.
fn strip_host_port<B>(req: &mut Request<B>, port: Option<u16>) {
    let strip = |host: &str| -> Option<String> {
        let (name, p) = host.rsplit_once(':')?;
        // An IPv6 literal without a port ("[::1]") has its colons inside.
        if name.is_empty() || p.contains(']') {
            return None;
        }
        let p: u16 = p.parse().ok()?;
        port.is_none_or(|want| want == p).then(|| name.to_string())
    };
    if let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if let Some(v) = strip(h).and_then(|h| HeaderValue::from_str(&h).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let stripped = req.uri().authority().and_then(|a| strip(a.as_str()));
    if let Some(authority) = stripped {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = authority.parse().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Whether `ip` is in `net`/`len`.
fn in_range(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// `internal_address_config.cidr_ranges`, validated.
fn internal_ranges(
    c: Option<&InternalAddressConfig>,
    path: &str,
) -> Result<Vec<(IpAddr, u8)>, ValidationError> {
    let Some(c) = c else { return Ok(Vec::new()) };
    let at = join(path, "internal_address_config.cidr_ranges");
    c.cidr_ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let net: IpAddr = r.address_prefix.parse().map_err(|_| {
                ValidationError::new(
                    join(&index(&at, i), "address_prefix"),
                    format!("`{}` is not an IP address", r.address_prefix),
                )
            })?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let len = r.prefix_len.unwrap_or(max);
            if len > max {
                return Err(ValidationError::new(
                    join(&index(&at, i), "prefix_len"),
                    format!("must be at most {max}"),
                ));
            }
            Ok((net, len as u8))
        })
        .collect()
}

/// What Envoy strips from requests that are not internal, besides the
/// retry headers: `x-envoy-*` headers that would steer this hop or that
/// only Envoy itself may set.
const EXTERNAL_STRIPPED: [HeaderName; 12] = [
    X_ENVOY_INTERNAL,
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
    X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    X_ENVOY_EXPECTED_RQ_TIMEOUT_MS,
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
    HeaderName::from_static("x-envoy-original-url"),
];

/// The number a UUID request id stands for where Envoy samples by it
/// (access log `runtime_filter`, tracing): its first eight hex digits.
pub fn request_id_number(id: &HeaderValue) -> Option<u64> {
    let digits = id.as_bytes().get(..8)?;
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// A random (version 4) UUID as a header value. The values are cut from
/// a per-thread block of a few KiB, one allocation per ~100 requests
/// rather than one each.
fn request_id() -> HeaderValue {
    thread_local! {
        static BLOCK: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    }
    BLOCK.with_borrow_mut(|block| {
        if block.capacity() < 36 {
            *block = BytesMut::with_capacity(4096);
        }
        block.extend_from_slice(&uuid_v4());
        let id = block.split().freeze();
        HeaderValue::from_maybe_shared(id).expect("hex digits and dashes")
    })
}

/// A random (version 4) UUID, as Envoy's x-request-id, written out
/// without the formatting machinery (this runs for every request).
fn uuid_v4() -> [u8; 36] {
    /// Each byte's two hex digits.
    const HEX: [[u8; 2]; 256] = {
        let digits = b"0123456789abcdef";
        let mut table = [[0; 2]; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = [digits[b >> 4], digits[b & 0xf]];
            b += 1;
        }
        table
    };
    let mut bytes =
        (u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(..))).to_be_bytes();
    // 122 random bits, then the version (4) and variant (10) bits.
    bytes[6] = bytes[6] & 0x0f | 0x40;
    bytes[8] = bytes[8] & 0x3f | 0x80;
    let mut out = [b'-'; 36];
    // Where each byte's digits go: groups of 4, 2, 2, 2 and 6 bytes.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    for (b, at) in bytes.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&HEX[usize::from(*b)]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = super::uuid_v4();
        let s = std::str::from_utf8(&a).unwrap();
        let groups: Vec<&str> = s.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(
            s.bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(groups[2].starts_with('4'), "{s}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{s}"
        );
        assert_ne!(a, super::uuid_v4());
        let (x, y) = (super::request_id(), super::request_id());
        assert_ne!(x, y);
        assert_eq!((x.len(), y.len()), (36, 36));
    }
}
