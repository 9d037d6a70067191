//! The connection manager's `tracing`: which requests are traced, decided
//! as Envoy decides it and written where Envoy writes it, into the
//! request's UUID x-request-id (its 15th character), so that the proxies
//! and services behind see the same decision. wasp has no tracer: it
//! makes the decision, counts it in `http.<prefix>.tracing.*`, and sends
//! no spans.

use http::{HeaderMap, HeaderValue};

use super::mutation::{X_REQUEST_ID, request_id_number};
use crate::config::path::join;
use crate::config::{HttpConnectionManagerConfig, PercentConfig, ValidationError};

/// Why a request is traced, or not (Envoy's `Tracing::Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceReason {
    NotTraceable,
    /// `random_sampling` took it.
    Sampling,
    /// An internal request's `x-envoy-force-trace`.
    ServiceForced,
    /// `x-client-trace-id`, within `client_sampling`.
    ClientForced,
}

impl TraceReason {
    /// The names of the `tracing.*` stats, in [`Self::index`] order
    /// (Envoy's `health_check` is always 0: wasp serves no health checks).
    pub const STATS: [&'static str; 5] = [
        "not_traceable",
        "random_sampling",
        "service_forced",
        "client_enabled",
        "health_check",
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The character a UUID request id carries at [`MARK`] for it.
    fn mark(self) -> u8 {
        match self {
            TraceReason::NotTraceable => b'4',
            TraceReason::Sampling => b'9',
            TraceReason::ServiceForced => b'a',
            TraceReason::ClientForced => b'b',
        }
    }

    fn of(id: &[u8]) -> Self {
        match id.get(MARK) {
            Some(b'9') if id.len() == UUID_LEN => TraceReason::Sampling,
            Some(b'a') if id.len() == UUID_LEN => TraceReason::ServiceForced,
            Some(b'b') if id.len() == UUID_LEN => TraceReason::ClientForced,
            _ => TraceReason::NotTraceable,
        }
    }
}

const UUID_LEN: usize = 36;
/// Where the decision goes in the id: the UUID's version digit.
const MARK: usize = 14;

/// A validated `tracing`, with the request id extension's options.
#[derive(Debug, Clone)]
pub struct TraceSampling {
    /// Out of 100 (Envoy truncates `client_sampling` to whole percent).
    client: u64,
    /// Out of 10,000.
    random: u64,
    overall: u64,
    /// The request id extension's `pack_trace_reason`.
    pack_reason: bool,
    /// And its `use_request_id_for_trace_sampling`.
    use_request_id: bool,
}

impl TraceSampling {
    pub fn validate(
        c: &HttpConnectionManagerConfig,
        path: &str,
    ) -> Result<Option<Self>, ValidationError> {
        let Some(t) = &c.tracing else {
            return Ok(None);
        };
        let at = join(path, "tracing");
        if t.provider.is_some() {
            return Err(ValidationError::new(
                join(&at, "provider"),
                "tracing providers are not supported: wasp makes the tracing decision but sends no spans",
            ));
        }
        let percent = |p: Option<PercentConfig>, name: &str| match p {
            None => Ok(100.0),
            Some(p) if (0.0..=100.0).contains(&p.value) => Ok(p.value),
            Some(_) => Err(ValidationError::new(
                join(&join(&at, name), "value"),
                "a percentage from 0 to 100",
            )),
        };
        let id = c
            .request_id_extension
            .as_ref()
            .map(|e| e.typed_config.clone())
            .unwrap_or_default();
        Ok(Some(TraceSampling {
            client: percent(t.client_sampling, "client_sampling")? as u64,
            random: (percent(t.random_sampling, "random_sampling")? * 100.0).round() as u64,
            overall: (percent(t.overall_sampling, "overall_sampling")? * 100.0).round() as u64,
            pack_reason: id.pack_trace_reason,
            use_request_id: id.use_request_id_for_trace_sampling,
        }))
    }

    /// Decides whether a request (its headers readied, x-request-id set)
    /// is traced and marks its id, as Envoy's connection manager does: a
    /// decision already in the id stands; else a client's
    /// `x-client-trace-id` (within `client_sampling`), then
    /// `x-envoy-force-trace`, then `random_sampling` drawn on the id's
    /// first eight hex digits; `overall_sampling`, drawn the same way, can
    /// still turn it off.
    pub fn decide(&self, headers: &mut HeaderMap) -> TraceReason {
        let Some(id) = headers.get(X_REQUEST_ID) else {
            return TraceReason::NotTraceable;
        };
        let current = match self.pack_reason {
            true => TraceReason::of(id.as_bytes()),
            false => TraceReason::NotTraceable,
        };
        let number = request_id_number(id);
        let (Some(number), true) = (number, self.use_request_id) else {
            return current;
        };
        let draw = number % 10_000;
        let mut reason = current;
        if reason == TraceReason::NotTraceable {
            if headers.contains_key("x-client-trace-id") && fastrand::u64(..100) < self.client {
                reason = TraceReason::ClientForced;
            } else if headers.contains_key("x-envoy-force-trace") {
                reason = TraceReason::ServiceForced;
            } else if draw < self.random {
                reason = TraceReason::Sampling;
            }
        }
        if draw >= self.overall {
            reason = TraceReason::NotTraceable;
        }
        if self.pack_reason && reason != current {
            let mut marked = headers[X_REQUEST_ID].as_bytes().to_vec();
            if marked.len() == UUID_LEN {
                marked[MARK] = reason.mark();
                if let Ok(v) = HeaderValue::from_bytes(&marked) {
                    headers.insert(X_REQUEST_ID, v);
                }
            }
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(random: u64, overall: u64) -> TraceSampling {
        TraceSampling {
            client: 100,
            random,
            overall,
            pack_reason: true,
            use_request_id: true,
        }
    }

    fn decide(
        s: &TraceSampling,
        id: &'static str,
        extra: &[&'static str],
    ) -> (TraceReason, String) {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static(id));
        for name in extra {
            h.insert(*name, HeaderValue::from_static("1"));
        }
        let reason = s.decide(&mut h);
        (reason, h[X_REQUEST_ID].to_str().unwrap().to_string())
    }

    #[test]
    fn decisions_are_drawn_on_the_id_and_written_into_it() {
        let half = sampling(5000, 10_000);
        // 0x1387 = 4999 is in the first half, 0x1388 = 5000 is not.
        let (r, id) = decide(&half, "00001387-0000-4000-8000-000000000000", &[]);
        assert_eq!(
            (r, id.as_str()),
            (
                TraceReason::Sampling,
                "00001387-0000-9000-8000-000000000000"
            )
        );
        let (r, id) = decide(&half, "00001388-0000-4000-8000-000000000000", &[]);
        assert_eq!(
            (r, id.as_str()),
            (
                TraceReason::NotTraceable,
                "00001388-0000-4000-8000-000000000000"
            )
        );
        let (r, _) = decide(
            &half,
            "00001388-0000-4000-8000-000000000000",
            &["x-envoy-force-trace"],
        );
        assert_eq!(r, TraceReason::ServiceForced);
        let (r, id) = decide(
            &half,
            "00001388-0000-4000-8000-000000000000",
            &["x-client-trace-id"],
        );
        assert_eq!((r, &id[14..15]), (TraceReason::ClientForced, "b"));
        // A decision already made stands; overall_sampling overrides all.
        let (r, _) = decide(&half, "00001388-0000-9000-8000-000000000000", &[]);
        assert_eq!(r, TraceReason::Sampling);
        let (r, id) = decide(
            &sampling(10_000, 0),
            "00000001-0000-a000-8000-000000000000",
            &[],
        );
        assert_eq!((r, &id[14..15]), (TraceReason::NotTraceable, "4"));
        // Not a UUID: nothing to draw on or to mark.
        let (r, id) = decide(&half, "my-id", &[]);
        assert_eq!((r, id.as_str()), (TraceReason::NotTraceable, "my-id"));
    }
}
