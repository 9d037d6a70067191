//! What decides a forwarded request's timeouts and retries: its route's
//! `timeout` and retry policy (or, for gRPC on a route with
//! `max_grpc_timeout`, its own `grpc-timeout`), and the `x-envoy-*`
//! headers of an internal request.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use super::grpc;
use super::mutation::{X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS, X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS};
use super::retry::RetryState;
use super::route;

/// What a request's route and its `x-envoy-*` headers say about its
/// retries and timeouts.
pub struct Controls<'p> {
    /// Boxed: most requests have none, and inline it would widen every
    /// request's future (and so every connection's task).
    pub retry: Option<Box<RetryState<'p>>>,
    pub timeout: Option<Duration>,
    /// `x-envoy-expected-rq-timeout-ms`: the per-try timeout, else the
    /// route's.
    pub expected: Option<HeaderValue>,
}

/// The controls of a request to `fwd`. Internal requests (the only ones
/// that still have them: [`super::mutation::RequestMutation::request`]
/// removed them from the others) may steer retries with the
/// `x-envoy-retry-*` headers and set the timeouts with
/// `x-envoy-upstream-rq-timeout-ms` (0: none) and
/// `x-envoy-upstream-rq-per-try-timeout-ms` (ignored unless shorter); none
/// of these go upstream. Requests with no `x-envoy-*` header at all (most)
/// pay a scan of the names and no hashed lookups.
pub fn controls<'p>(fwd: &'p route::Forward, headers: &mut http::HeaderMap) -> Controls<'p> {
    let Some(grpc) = fwd.grpc_timeout.as_ref().filter(|_| grpc::is_grpc(headers)) else {
        return steered_controls(fwd, fwd.timeout, fwd.expected_timeout.clone(), headers);
    };
    // A gRPC request on a route with max_grpc_timeout: its own deadline is
    // the route's timeout, and the upstream is told in its grpc-timeout
    // what it is given in the end, as Envoy does.
    let timeout = grpc.of(headers);
    let per_try = fwd.retry.as_ref().and_then(|p| p.per_try_timeout);
    let expected = per_try
        .filter(|p| timeout.is_none_or(|t| *p < t))
        .or(timeout)
        .map(|t| HeaderValue::from(t.as_millis() as u64));
    let controls = steered_controls(fwd, timeout, expected, headers);
    if let Some(ms) = &controls.expected {
        let mut value = ms.as_bytes().to_vec();
        value.push(b'm');
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.insert("grpc-timeout", v);
        }
    }
    controls
}

/// The controls given the route's timeout and what the upstream is told
/// of it, and what the request's `x-envoy-*` headers change.
fn steered_controls<'p>(
    fwd: &'p route::Forward,
    timeout: Option<Duration>,
    expected: Option<HeaderValue>,
    headers: &mut http::HeaderMap,
) -> Controls<'p> {
    let mut plain = Controls {
        retry: None,
        timeout,
        expected,
    };
    let steered = headers.keys().any(|k| k.as_str().starts_with("x-envoy-"));
    let mut retry = match (&fwd.retry, steered) {
        (None, false) => return plain,
        (policy, _) => RetryState::new(policy.as_deref(), headers, steered).map(Box::new),
    };
    if !steered {
        plain.retry = retry;
        return plain;
    }
    let mut ms = |name: &HeaderName| {
        let v = headers.remove(name)?;
        v.to_str().ok()?.parse().ok().map(Duration::from_millis)
    };
    let (global, per_try) = (
        ms(&X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS),
        ms(&X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS),
    );
    if global.is_none() && per_try.is_none() {
        plain.retry = retry;
        return plain;
    }
    let timeout = match global {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None => plain.timeout,
    };
    let per_try = per_try
        .or_else(|| fwd.retry.as_ref().and_then(|p| p.per_try_timeout))
        .filter(|p| !p.is_zero() && timeout.is_none_or(|t| *p < t));
    let (retry_per_try, timeout) = match &mut retry {
        Some(r) => {
            r.set_per_try_timeout(per_try);
            (per_try, timeout)
        }
        // A single try: its timeout is the shorter one.
        None => (None, per_try.or(timeout)),
    };
    Controls {
        retry,
        timeout,
        expected: retry_per_try
            .or(timeout)
            .map(|t| t.as_millis() as u64)
            .filter(|&ms| ms > 0)
            .map(HeaderValue::from),
    }
}
