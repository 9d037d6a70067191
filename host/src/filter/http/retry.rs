//! Envoy's retry policy: which outcomes of a try are tried again, how
//! many times, after how long, and on which endpoint.
//!
//! A route's [`RetryPolicy`] is built once at load; each request that has
//! one gets a [`RetryState`], which also takes the `x-envoy-retry-*`
//! headers of requests the connection manager trusts. The router asks it
//! after every try ([`RetryState::retries_response`],
//! [`RetryState::retries_failure`]), and replays the request body
//! through [`super::replay`].

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::route::{HeaderMatch, header_match};
use crate::config::path::{index, join};
use crate::config::{RetryHostPredicateConfig, RetryPolicyConfig, ValidationError};

/// Conditions of `retry_on` (and `x-envoy-retry-on`,
/// `x-envoy-retry-grpc-on`), one bit each.
mod on {
    pub const FIVE_XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const CONNECT_FAILURE: u32 = 1 << 2;
    pub const RETRIABLE_4XX: u32 = 1 << 3;
    pub const REFUSED_STREAM: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    pub const RETRIABLE_HEADERS: u32 = 1 << 6;
    pub const RESET: u32 = 1 << 7;
    pub const RESET_BEFORE_REQUEST: u32 = 1 << 8;
    pub const ENVOY_RATE_LIMITED: u32 = 1 << 9;
    pub const GRPC_CANCELLED: u32 = 1 << 10;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 11;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 12;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 13;
    pub const GRPC_INTERNAL: u32 = 1 << 14;
    /// HTTP/3 only: accepted, never met (wasp has no HTTP/3 upstreams).
    pub const HTTP3_POST_CONNECT_FAILURE: u32 = 1 << 15;
}

/// Each `retry_on` word and its bit. The gRPC ones are also what
/// `x-envoy-retry-grpc-on` takes.
const CONDITIONS: &[(&str, u32)] = &[
    ("5xx", on::FIVE_XX),
    ("gateway-error", on::GATEWAY_ERROR),
    ("connect-failure", on::CONNECT_FAILURE),
    ("retriable-4xx", on::RETRIABLE_4XX),
    ("refused-stream", on::REFUSED_STREAM),
    ("retriable-status-codes", on::RETRIABLE_STATUS_CODES),
    ("retriable-headers", on::RETRIABLE_HEADERS),
    ("reset", on::RESET),
    ("reset-before-request", on::RESET_BEFORE_REQUEST),
    ("envoy-ratelimited", on::ENVOY_RATE_LIMITED),
    ("http3-post-connect-failure", on::HTTP3_POST_CONNECT_FAILURE),
    ("cancelled", on::GRPC_CANCELLED),
    ("deadline-exceeded", on::GRPC_DEADLINE_EXCEEDED),
    ("resource-exhausted", on::GRPC_RESOURCE_EXHAUSTED),
    ("unavailable", on::GRPC_UNAVAILABLE),
    ("internal", on::GRPC_INTERNAL),
];

/// The gRPC conditions and the `grpc-status` code each is about.
const GRPC: [(u32, u32); 5] = [
    (on::GRPC_CANCELLED, 1),
    (on::GRPC_DEADLINE_EXCEEDED, 4),
    (on::GRPC_RESOURCE_EXHAUSTED, 8),
    (on::GRPC_UNAVAILABLE, 14),
    (on::GRPC_INTERNAL, 13),
];

/// The bits of a comma-separated list of conditions, and the first word
/// that is none (Envoy ignores such words in headers, refuses them in
/// config).
fn parse_conditions(list: &str, words: &[(&str, u32)]) -> (u32, Option<String>) {
    let mut bits = 0;
    let mut unknown = None;
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match words.iter().find(|(w, _)| *w == word) {
            Some((_, bit)) => bits |= bit,
            None => {
                unknown.get_or_insert_with(|| word.to_string());
            }
        }
    }
    (bits, unknown)
}

/// When and how often a route retries, validated.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    on: u32,
    num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    retriable_status_codes: Vec<u16>,
    retriable_headers: Vec<HeaderMatch>,
    /// A request is retried only if it matches one of these (if any).
    retriable_request_headers: Vec<HeaderMatch>,
    base_interval: Duration,
    max_interval: Duration,
    /// `previous_hosts`: a retry avoids the endpoints already tried.
    pub previous_hosts: bool,
    /// How many more picks a retry may make to find an endpoint the
    /// predicates accept (then it takes the last one).
    pub host_selection_attempts: u32,
}

/// Envoy's default base interval of the back-off (`upstream.base_retry_backoff_ms`).
const BASE_INTERVAL: Duration = Duration::from_millis(25);

impl RetryPolicy {
    pub fn validate(r: &RetryPolicyConfig, at: &str) -> Result<Self, ValidationError> {
        let (on, unknown) = parse_conditions(&r.retry_on, CONDITIONS);
        if let Some(word) = unknown {
            let known: Vec<&str> = CONDITIONS.iter().map(|c| c.0).collect();
            return Err(ValidationError::new(
                join(at, "retry_on"),
                format!("unknown retry_on `{word}`; known: {}", known.join(", ")),
            ));
        }
        let (base_interval, max_interval) = match &r.retry_back_off {
            None => (BASE_INTERVAL, BASE_INTERVAL * 10),
            Some(b) => {
                let base = b.base_interval.0;
                let bat = join(at, "retry_back_off");
                if base < Duration::from_millis(1) {
                    return Err(ValidationError::new(
                        join(&bat, "base_interval"),
                        "must be at least 1ms",
                    ));
                }
                let max = b.max_interval.map_or(base * 10, |m| m.0);
                if max < base {
                    return Err(ValidationError::new(
                        join(&bat, "max_interval"),
                        "must not be less than base_interval",
                    ));
                }
                (base, max)
            }
        };
        let matchers = |list: &[crate::config::HeaderMatcherConfig], field: &str| {
            list.iter()
                .enumerate()
                .map(|(i, h)| header_match(h, &index(&join(at, field), i)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(RetryPolicy {
            on,
            num_retries: r.num_retries.unwrap_or(1),
            per_try_timeout: r.per_try_timeout.map(|d| d.0).filter(|d| !d.is_zero()),
            retriable_status_codes: r.retriable_status_codes.clone(),
            retriable_headers: matchers(&r.retriable_headers, "retriable_headers")?,
            retriable_request_headers: matchers(
                &r.retriable_request_headers,
                "retriable_request_headers",
            )?,
            base_interval,
            max_interval,
            previous_hosts: r
                .retry_host_predicate
                .iter()
                .any(|p| matches!(p.config, RetryHostPredicateConfig::PreviousHosts)),
            host_selection_attempts: r.host_selection_retry_max_attempts.unwrap_or(1),
        })
    }
}

/// How a try failed without a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connecting failed or timed out: nothing was sent.
    Connect,
    /// The upstream reset the stream with REFUSED_STREAM (HTTP/2): it did
    /// not process the request.
    RefusedStream,
    /// The connection broke or the stream was reset.
    Reset,
    /// The per-try timeout passed (Envoy resets the try, so it is a reset
    /// to the policy).
    Timeout,
}

/// Request headers that steer retries (Envoy's router consumes them; the
/// connection manager strips them from requests it does not trust).
pub const RETRY_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
];

/// One request's retries: what the policy and the request's headers say,
/// and how many are left.
pub struct RetryState<'p> {
    policy: Option<&'p RetryPolicy>,
    on: u32,
    remaining: u32,
    /// Extra codes and header names from the request.
    status_codes: Vec<u16>,
    header_names: Vec<HeaderName>,
    /// The back-off's next ceiling.
    next_interval: Duration,
    /// A per-try timeout the request set, overriding the policy's.
    per_try: Option<Option<Duration>>,
}

impl<'p> RetryState<'p> {
    /// The state for a request to a route with `policy` (if any). With
    /// `steered` (a request trusted to carry them), the `x-envoy-retry-*`
    /// headers are taken out of `headers` and add to the policy. `None`
    /// when nothing can be retried.
    pub fn new(
        policy: Option<&'p RetryPolicy>,
        headers: &mut HeaderMap,
        steered: bool,
    ) -> Option<Self> {
        let [retry_on, grpc_on, max_retries, codes, names] = match steered {
            true => RETRY_HEADERS.each_ref().map(|h| headers.remove(h)),
            false => Default::default(),
        };
        let text = |v: &Option<HeaderValue>| {
            v.as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let mut on = policy.map_or(0, |p| p.on);
        let mut state = RetryState {
            policy,
            on: 0,
            remaining: policy.map_or(1, |p| p.num_retries),
            status_codes: Vec::new(),
            header_names: Vec::new(),
            next_interval: policy.map_or(BASE_INTERVAL, |p| p.base_interval),
            per_try: None,
        };
        if steered {
            let (http, grpc) = CONDITIONS.split_at(CONDITIONS.len() - GRPC.len());
            on |= parse_conditions(&text(&retry_on), http).0;
            on |= parse_conditions(&text(&grpc_on), grpc).0;
            state.status_codes = text(&codes)
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            state.header_names = text(&names)
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
        }
        if let Some(p) = policy {
            if !p.retriable_request_headers.is_empty()
                && !p
                    .retriable_request_headers
                    .iter()
                    .any(|m| m.matches(headers))
            {
                on = 0;
            }
        }
        if on == 0 {
            return None;
        }
        if let Some(n) = steered.then(|| text(&max_retries).parse().ok()).flatten() {
            state.remaining = n;
        }
        state.on = on;
        Some(state)
    }

    fn has(&self, bits: u32) -> bool {
        self.on & bits != 0
    }

    /// Whether a response with this head would be retried.
    pub fn retries_response(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        // An upstream Envoy rate-limited it: only that condition retries.
        if headers.contains_key("x-envoy-ratelimited") {
            return self.has(on::ENVOY_RATE_LIMITED);
        }
        let code = status.as_u16();
        let codes = self.policy.map_or(&[][..], |p| &p.retriable_status_codes);
        (self.has(on::FIVE_XX) && status.is_server_error())
            || (self.has(on::GATEWAY_ERROR) && matches!(code, 502..=504))
            || (self.has(on::RETRIABLE_4XX) && code == 409)
            || (self.has(on::RETRIABLE_STATUS_CODES)
                && (codes.contains(&code) || self.status_codes.contains(&code)))
            || (self.has(on::RETRIABLE_HEADERS)
                && (self
                    .policy
                    .is_some_and(|p| p.retriable_headers.iter().any(|m| m.matches(headers)))
                    || self.header_names.iter().any(|n| headers.contains_key(n))))
            || self.grpc_retriable(headers)
    }

    fn grpc_retriable(&self, headers: &HeaderMap) -> bool {
        if !self.has(GRPC.iter().fold(0, |all, g| all | g.0)) {
            return false;
        }
        let Some(status) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        else {
            return false;
        };
        GRPC.iter()
            .any(|&(bit, code)| self.has(bit) && code == status)
    }

    /// Whether a try that failed this way would be retried.
    pub fn retries_failure(&self, failure: Failure) -> bool {
        if self.has(on::RESET | on::FIVE_XX | on::GATEWAY_ERROR) {
            return true;
        }
        match failure {
            Failure::Connect => self.has(on::CONNECT_FAILURE | on::RESET_BEFORE_REQUEST),
            Failure::RefusedStream => self.has(on::REFUSED_STREAM | on::RESET_BEFORE_REQUEST),
            Failure::Reset | Failure::Timeout => false,
        }
    }

    /// Takes one retry, if any is left.
    pub fn take(&mut self) -> bool {
        let left = self.remaining > 0;
        self.remaining = self.remaining.saturating_sub(1);
        left
    }

    /// How long to wait before the next retry: fully jittered, the
    /// ceiling doubling each time up to `max_interval`, as Envoy's
    /// `JitteredExponentialBackOffStrategy`.
    pub fn backoff(&mut self) -> Duration {
        let (base, max) = self
            .policy
            .map_or((BASE_INTERVAL, BASE_INTERVAL * 10), |p| {
                (p.base_interval, p.max_interval)
            });
        let ceiling = self.next_interval.max(base);
        self.next_interval = if ceiling < max / 2 { ceiling * 2 } else { max };
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(..ms)).min(max)
    }

    /// Each try's timeout: the route's, unless the request set one.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        match self.per_try {
            Some(set) => set,
            None => self.policy.and_then(|p| p.per_try_timeout),
        }
    }

    /// Sets each try's timeout (`None`: none), as a request header may.
    pub fn set_per_try_timeout(&mut self, timeout: Option<Duration>) {
        self.per_try = Some(timeout);
    }

    /// Whether retries avoid endpoints already tried, and how many more
    /// picks they may make to find another.
    pub fn host_selection(&self) -> Option<u32> {
        self.policy
            .filter(|p| p.previous_hosts)
            .map(|p| p.host_selection_attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<RetryPolicy, ValidationError> {
        let c: RetryPolicyConfig = serde_norway::from_str(yaml).unwrap();
        RetryPolicy::validate(&c, "retry_policy")
    }

    #[test]
    fn conditions_follow_envoy() {
        let p = policy("retry_on: 'connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes'\nretriable_status_codes: [503]").unwrap();
        let mut h = HeaderMap::new();
        let s = RetryState::new(Some(&p), &mut h, false).unwrap();
        assert!(s.retries_failure(Failure::Connect));
        assert!(s.retries_failure(Failure::RefusedStream));
        assert!(!s.retries_failure(Failure::Reset));
        assert!(!s.retries_failure(Failure::Timeout));
        assert!(s.retries_response(StatusCode::SERVICE_UNAVAILABLE, &h));
        assert!(!s.retries_response(StatusCode::BAD_GATEWAY, &h));
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(s.retries_response(StatusCode::OK, &grpc));
        grpc.insert("grpc-status", HeaderValue::from_static("13"));
        assert!(!s.retries_response(StatusCode::OK, &grpc));
        // A rate-limited answer is retried only on envoy-ratelimited.
        h.insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
        assert!(!s.retries_response(StatusCode::SERVICE_UNAVAILABLE, &h));

        let p = policy("retry_on: 5xx").unwrap();
        let s = RetryState::new(Some(&p), &mut HeaderMap::new(), false).unwrap();
        assert!(s.retries_failure(Failure::Timeout) && s.retries_failure(Failure::Reset));
        assert!(!s.retries_response(StatusCode::CONFLICT, &HeaderMap::new()));
        let p = policy("retry_on: retriable-4xx").unwrap();
        let s = RetryState::new(Some(&p), &mut HeaderMap::new(), false).unwrap();
        assert!(s.retries_response(StatusCode::CONFLICT, &HeaderMap::new()));
        assert!(!s.retries_failure(Failure::Connect));
    }

    #[test]
    fn unknown_conditions_are_refused_with_their_path() {
        let e = policy("retry_on: '5xx,sometimes'").unwrap_err().to_string();
        assert!(
            e.contains("retry_policy.retry_on") && e.contains("`sometimes`"),
            "{e}"
        );
        let e = policy("retry_on: 5xx\nretry_back_off: { base_interval: 1s, max_interval: 0.5s }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry_back_off.max_interval"), "{e}");
    }

    #[test]
    fn request_headers_steer_only_when_trusted_and_are_taken() {
        let p = policy("retry_on: connect-failure\nnum_retries: 1").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-envoy-retry-on", HeaderValue::from_static("5xx"));
        h.insert("x-envoy-max-retries", HeaderValue::from_static("4"));
        let mut s = RetryState::new(Some(&p), &mut h.clone(), false).unwrap();
        assert!(!s.retries_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));
        assert!(s.take() && !s.take());
        let mut trusted = h.clone();
        let mut s = RetryState::new(Some(&p), &mut trusted, true).unwrap();
        assert!(trusted.is_empty());
        assert!(s.retries_response(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new()));
        assert_eq!((0..6).filter(|_| s.take()).count(), 4);
        // Headers alone enable retries on a route without a policy.
        assert!(RetryState::new(None, &mut h.clone(), true).is_some());
        assert!(RetryState::new(None, &mut h, false).is_none());
    }

    #[test]
    fn retriable_request_headers_gate_every_condition() {
        let p = policy("retry_on: 5xx\nretriable_request_headers: [{ name: x-retry-me }]").unwrap();
        assert!(RetryState::new(Some(&p), &mut HeaderMap::new(), false).is_none());
        let mut h = HeaderMap::new();
        h.insert("x-retry-me", HeaderValue::from_static("1"));
        assert!(RetryState::new(Some(&p), &mut h, false).is_some());
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_ceiling() {
        let p =
            policy("retry_on: 5xx\nretry_back_off: { base_interval: 0.1s, max_interval: 0.3s }")
                .unwrap();
        let mut s = RetryState::new(Some(&p), &mut HeaderMap::new(), false).unwrap();
        let ceilings = [100, 200, 300, 300];
        for ceiling in ceilings {
            let d = s.backoff();
            assert!(d < Duration::from_millis(ceiling), "{d:?} >= {ceiling}ms");
        }
        // Jittered: not always the same wait.
        let waits: std::collections::HashSet<_> = (0..20)
            .map(|_| {
                RetryState::new(Some(&p), &mut HeaderMap::new(), false)
                    .unwrap()
                    .backoff()
            })
            .collect();
        assert!(waits.len() > 1);
    }
}
