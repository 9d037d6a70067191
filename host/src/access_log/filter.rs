//! Access log filters (Envoy's `AccessLogFilter`): which entries a log
//! writes, decided from the entry's [`StreamInfo`].

use super::{ResponseFlags, StreamInfo};
use crate::config::path::{index, join};
use crate::config::{AccessLogFilterConfig, ComparisonFilterConfig, ComparisonOp, ValidationError};
use crate::filter::http::mutation;
use crate::filter::http::route::{HeaderMatch, header_match};

/// A validated filter.
#[derive(Debug, Clone)]
pub enum LogFilter {
    /// The response code (0 for a connection).
    Status(Comparison),
    /// The duration, in milliseconds.
    Duration(Comparison),
    /// `not_health_check_filter`: wasp serves no health checks, so every
    /// entry passes.
    Always,
    /// Any of these flags set; empty: any flag at all.
    Flags(Vec<ResponseFlags>),
    /// A request header (entries without a request never pass).
    Header(HeaderMatch),
    /// `runtime_filter`: `numerator` in `denominator` entries, chosen by
    /// the request id (so that the entries of one request's hops agree)
    /// unless `independent`, or when there is none.
    Sampled {
        numerator: u64,
        denominator: u64,
        independent: bool,
    },
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
}

#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    op: ComparisonOp,
    value: u64,
}

impl Comparison {
    fn new(c: &ComparisonFilterConfig) -> Self {
        Comparison {
            op: c.op,
            value: c.value.default_value.into(),
        }
    }

    fn holds(&self, v: u64) -> bool {
        match self.op {
            ComparisonOp::Eq => v == self.value,
            ComparisonOp::Ge => v >= self.value,
            ComparisonOp::Le => v <= self.value,
            ComparisonOp::Ne => v != self.value,
        }
    }
}

impl LogFilter {
    pub fn validate(c: &AccessLogFilterConfig, at: &str) -> Result<Self, ValidationError> {
        let all = |filters: &[AccessLogFilterConfig], kind: &str| {
            let at = join(&join(at, kind), "filters");
            filters
                .iter()
                .enumerate()
                .map(|(i, f)| LogFilter::validate(f, &index(&at, i)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match c {
            AccessLogFilterConfig::StatusCodeFilter(c) => LogFilter::Status(Comparison::new(c)),
            AccessLogFilterConfig::DurationFilter(c) => LogFilter::Duration(Comparison::new(c)),
            AccessLogFilterConfig::NotHealthCheckFilter => LogFilter::Always,
            AccessLogFilterConfig::ResponseFlagFilter(flags) => LogFilter::Flags(
                flags
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        ResponseFlags::from_name(name).ok_or_else(|| {
                            ValidationError::new(
                                index(&join(&join(at, "response_flag_filter"), "flags"), i),
                                format!("unknown response flag `{name}`"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            AccessLogFilterConfig::HeaderFilter(header) => LogFilter::Header(header_match(
                header,
                &join(&join(at, "header_filter"), "header"),
            )?),
            AccessLogFilterConfig::RuntimeFilter(r) => LogFilter::Sampled {
                numerator: r.percent_sampled.numerator.into(),
                denominator: r.percent_sampled.denominator.value(),
                independent: r.use_independent_randomness,
            },
            AccessLogFilterConfig::AndFilter(filters) => {
                LogFilter::And(all(filters, "and_filter")?)
            }
            AccessLogFilterConfig::OrFilter(filters) => LogFilter::Or(all(filters, "or_filter")?),
        })
    }

    /// Whether the entry for `info` is written.
    pub fn allows(&self, info: &StreamInfo) -> bool {
        match self {
            LogFilter::Status(c) => {
                c.holds(info.http.as_ref().map_or(0, |h| h.response_code.into()))
            }
            LogFilter::Duration(c) => {
                let d = info.duration.unwrap_or_else(|| info.start.elapsed());
                c.holds(d.as_millis().min(u64::MAX.into()) as u64)
            }
            LogFilter::Always => true,
            LogFilter::Flags(flags) if flags.is_empty() => !info.response_flags.is_empty(),
            LogFilter::Flags(flags) => flags.iter().any(|f| info.response_flags.intersects(*f)),
            LogFilter::Header(h) => info
                .http
                .as_ref()
                .is_some_and(|http| h.matches(&http.request_headers)),
            LogFilter::Sampled {
                numerator,
                denominator,
                independent,
            } => {
                let by_id = (!independent).then(|| request_id_number(info)).flatten();
                by_id.unwrap_or_else(|| fastrand::u64(..)) % denominator < *numerator
            }
            LogFilter::And(all) => all.iter().all(|f| f.allows(info)),
            LogFilter::Or(any) => any.iter().any(|f| f.allows(info)),
        }
    }
}

/// The number the entry's request id stands for in sampling.
fn request_id_number(info: &StreamInfo) -> Option<u64> {
    let http = info.http.as_ref()?;
    mutation::request_id_number(http.request_headers.get(mutation::X_REQUEST_ID)?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn parse(yaml: &str) -> LogFilter {
        let c: AccessLogFilterConfig = serde_norway::from_str(yaml).unwrap();
        LogFilter::validate(&c, "filter").unwrap()
    }

    fn entry(code: u16, ms: u64, flags: ResponseFlags) -> StreamInfo {
        let addr = "127.0.0.1:1".parse().unwrap();
        let mut info = StreamInfo::new(1, addr, addr);
        info.duration = Some(Duration::from_millis(ms));
        info.response_flags = flags;
        info.http = Some(Box::new(super::super::HttpInfo {
            response_code: code,
            ..Default::default()
        }));
        info
    }

    #[test]
    fn filters_combine_as_envoys() {
        let f = parse(
            "or_filter: { filters: [ { status_code_filter: { comparison: { op: GE, value: { default_value: 500, runtime_key: k } } } }, { duration_filter: { comparison: { op: GE, value: { default_value: 1000 } } } } ] }",
        );
        assert!(f.allows(&entry(503, 5, ResponseFlags::default())));
        assert!(f.allows(&entry(200, 1500, ResponseFlags::default())));
        assert!(!f.allows(&entry(404, 5, ResponseFlags::default())));
        let flags = parse(
            "and_filter: { filters: [ { response_flag_filter: { flags: [UF, UH] } }, { not_health_check_filter: {} } ] }",
        );
        assert!(flags.allows(&entry(503, 1, ResponseFlags::UPSTREAM_CONNECTION_FAILURE)));
        assert!(!flags.allows(&entry(503, 1, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)));
        let any = parse("response_flag_filter: {}");
        assert!(any.allows(&entry(504, 1, ResponseFlags::UPSTREAM_REQUEST_TIMEOUT)));
        assert!(!any.allows(&entry(200, 1, ResponseFlags::default())));
        let ne =
            parse("status_code_filter: { comparison: { op: NE, value: { default_value: 200 } } }");
        assert!(ne.allows(&entry(201, 1, ResponseFlags::default())));
        assert!(!ne.allows(&entry(200, 1, ResponseFlags::default())));
    }

    #[test]
    fn unknown_flags_are_named() {
        let c: AccessLogFilterConfig =
            serde_norway::from_str("response_flag_filter: { flags: [UF, XX] }").unwrap();
        let e = LogFilter::validate(&c, "f").unwrap_err();
        assert!(e.to_string().contains("unknown response flag `XX`"), "{e}");
    }
}
