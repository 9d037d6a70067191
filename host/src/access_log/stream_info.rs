use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

/// What happened to one downstream connection (or, later, request): the
/// facts access logs and filters read.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub start_time: SystemTime,
    pub start: Instant,
    pub connection_id: u64,
    /// The client's address: the peer's, or for an HTTP request the one
    /// its x-forwarded-for names (see `filter::http::mutation`).
    pub downstream_remote: SocketAddr,
    /// The peer's address, whatever x-forwarded-for says.
    pub downstream_direct_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_local: Option<SocketAddr>,
    pub upstream_cluster: Option<Arc<str>>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub response_flags: ResponseFlags,
    pub duration: Option<std::time::Duration>,
    /// For HTTP streams: the request and response as the log sees them.
    pub http: Option<Box<HttpInfo>>,
}

/// The HTTP facts of a stream, for `%REQ(...)%`, `%RESP(...)%`,
/// `%PROTOCOL%` and `%RESPONSE_CODE%`.
#[derive(Debug, Clone, Default)]
pub struct HttpInfo {
    pub method: String,
    pub path: String,
    pub authority: String,
    pub protocol: &'static str,
    pub request_headers: http::HeaderMap,
    pub response_code: u16,
    pub response_headers: http::HeaderMap,
    /// `%LOCAL_REPLY_BODY%`: the body of a reply wasp made itself.
    pub local_reply_body: String,
}

impl HttpInfo {
    /// A request header, with Envoy's pseudo-header names.
    pub fn request_header(&self, name: &str) -> Option<&str> {
        match name {
            ":method" => Some(&self.method),
            ":path" => Some(&self.path),
            ":authority" => Some(&self.authority),
            _ => self.request_headers.get(name).and_then(|v| v.to_str().ok()),
        }
    }

    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
    }
}

impl StreamInfo {
    pub fn new(
        connection_id: u64,
        downstream_remote: SocketAddr,
        downstream_local: SocketAddr,
    ) -> Self {
        StreamInfo {
            start_time: SystemTime::now(),
            start: Instant::now(),
            connection_id,
            downstream_remote,
            downstream_direct_remote: downstream_remote,
            downstream_local,
            upstream_host: None,
            upstream_local: None,
            upstream_cluster: None,
            bytes_received: 0,
            bytes_sent: 0,
            response_flags: ResponseFlags::default(),
            duration: None,
            http: None,
        }
    }

    /// Dates the stream from `started` (for `%START_TIME%` and
    /// `%DURATION%`), when it began before this record was made.
    pub fn started_at(&mut self, started: Instant) {
        self.start_time -= started.elapsed();
        self.start = started;
    }

    /// Marks the stream finished now.
    pub fn finish(&mut self) {
        self.duration = Some(self.start.elapsed());
    }
}

/// Envoy's response flags, printed by `%RESPONSE_FLAGS%`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// UH: no healthy upstream.
    pub const NO_HEALTHY_UPSTREAM: ResponseFlags = ResponseFlags(1);
    /// UF: upstream connection failure.
    pub const UPSTREAM_CONNECTION_FAILURE: ResponseFlags = ResponseFlags(1 << 1);
    /// UT: upstream request timeout.
    pub const UPSTREAM_REQUEST_TIMEOUT: ResponseFlags = ResponseFlags(1 << 2);
    /// UO: upstream overflow.
    pub const UPSTREAM_OVERFLOW: ResponseFlags = ResponseFlags(1 << 3);
    /// NR: no route.
    pub const NO_ROUTE_FOUND: ResponseFlags = ResponseFlags(1 << 4);
    /// DC: downstream connection termination.
    pub const DOWNSTREAM_CONNECTION_TERMINATION: ResponseFlags = ResponseFlags(1 << 5);
    /// UC: upstream connection termination.
    pub const UPSTREAM_CONNECTION_TERMINATION: ResponseFlags = ResponseFlags(1 << 6);
    /// SI: stream idle timeout.
    pub const STREAM_IDLE_TIMEOUT: ResponseFlags = ResponseFlags(1 << 7);
    /// DT: max duration reached.
    pub const DURATION_TIMEOUT: ResponseFlags = ResponseFlags(1 << 8);
    /// URX: upstream retry limit exceeded.
    pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: ResponseFlags = ResponseFlags(1 << 9);
    /// UR: upstream remote reset.
    pub const UPSTREAM_REMOTE_RESET: ResponseFlags = ResponseFlags(1 << 10);

    const NAMES: [(ResponseFlags, &'static str); 11] = [
        (Self::NO_HEALTHY_UPSTREAM, "UH"),
        (Self::UPSTREAM_CONNECTION_FAILURE, "UF"),
        (Self::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Self::UPSTREAM_OVERFLOW, "UO"),
        (Self::NO_ROUTE_FOUND, "NR"),
        (Self::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Self::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Self::STREAM_IDLE_TIMEOUT, "SI"),
        (Self::DURATION_TIMEOUT, "DT"),
        (Self::UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX"),
        (Self::UPSTREAM_REMOTE_RESET, "UR"),
    ];

    /// Envoy's names of the flags wasp never sets: a filter may name
    /// them (and then never matches).
    const OTHER_NAMES: [&'static str; 24] = [
        "LH", "LR", "DI", "FI", "RL", "UAEX", "RLSE", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "UPE",
        "NC", "OM", "DF", "DO", "DR", "UDO", "ODO", "UHCE", "DIEE", "IHE", "PFCE",
    ];

    /// The flag Envoy names `name` (no flag at all if wasp never sets it).
    pub fn from_name(name: &str) -> Option<ResponseFlags> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(f, _)| *f)
            .or_else(|| {
                Self::OTHER_NAMES
                    .contains(&name)
                    .then_some(ResponseFlags(0))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Whether any flag of `other` is set here.
    pub fn intersects(&self, other: ResponseFlags) -> bool {
        self.0 & other.0 != 0
    }

    pub fn set(&mut self, flag: ResponseFlags) {
        self.0 |= flag.0;
    }

    pub fn contains(&self, flag: ResponseFlags) -> bool {
        self.0 & flag.0 == flag.0
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}
