use serde::Deserialize;
use serde::de::Deserializer;

use super::extension::{Extensions, unsupported};
use super::{DataSourceConfig, HeaderMatcherConfig};

/// The access loggers wasp has.
#[derive(Debug, Clone)]
pub enum AccessLogConfig {
    File(FileAccessLogConfig),
    Stdout(StreamAccessLogConfig),
    Stderr(StreamAccessLogConfig),
}

/// `envoy.access_loggers.file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLogConfig {
    pub path: String,
    /// v2's format string.
    pub format: Option<String>,
    pub log_format: Option<LogFormatConfig>,
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `envoy.access_loggers.stdout` and `.stderr`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamAccessLogConfig {
    pub log_format: Option<LogFormatConfig>,
}

/// Envoy's `SubstitutionFormatString`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogFormatConfig {
    pub text_format: Option<String>,
    pub text_format_source: Option<DataSourceConfig>,
    pub json_format: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub omit_empty_values: bool,
    pub content_type: Option<String>,
}

const TYPES: &[&str] = &[
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.config.accesslog.v2.FileAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
];
const NAMES: &[&str] = &[
    "envoy.access_loggers.file",
    "envoy.file_access_log",
    "envoy.access_loggers.stdout",
    "envoy.access_loggers.stderr",
];

impl Extensions for AccessLogConfig {
    const KIND: &'static str = "access logger";
    const FILTERED: bool = true;

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        match TYPES.iter().position(|t| *t == type_name) {
            Some(0 | 1) => Ok(AccessLogConfig::File(FileAccessLogConfig::deserialize(d)?)),
            Some(2) => Ok(AccessLogConfig::Stdout(StreamAccessLogConfig::deserialize(
                d,
            )?)),
            Some(_) => Ok(AccessLogConfig::Stderr(StreamAccessLogConfig::deserialize(
                d,
            )?)),
            None => Err(unsupported(Self::KIND, type_name, TYPES)),
        }
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        match NAMES.iter().position(|t| *t == name) {
            Some(i) => Self::from_type(TYPES[i], d),
            None => Err(unsupported(Self::KIND, name, NAMES)),
        }
    }
}

/// Envoy's `AccessLogFilter`: which entries an access log writes.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "OneFilter")]
pub enum AccessLogFilterConfig {
    StatusCodeFilter(ComparisonFilterConfig),
    DurationFilter(ComparisonFilterConfig),
    NotHealthCheckFilter,
    /// Empty: any flag.
    ResponseFlagFilter(Vec<String>),
    HeaderFilter(Box<HeaderMatcherConfig>),
    RuntimeFilter(RuntimeFilterConfig),
    AndFilter(Vec<AccessLogFilterConfig>),
    OrFilter(Vec<AccessLogFilterConfig>),
}

/// The proto's `oneof`, as YAML spells it: a map with one of these keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneFilter {
    status_code_filter: Option<Comparing>,
    duration_filter: Option<Comparing>,
    not_health_check_filter: Option<super::extension::Empty>,
    response_flag_filter: Option<Flags>,
    header_filter: Option<Header>,
    runtime_filter: Option<RuntimeFilterConfig>,
    and_filter: Option<Filters>,
    or_filter: Option<Filters>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Comparing {
    comparison: ComparisonFilterConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flags {
    #[serde(default)]
    flags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    header: HeaderMatcherConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Filters {
    filters: Vec<AccessLogFilterConfig>,
}

impl TryFrom<OneFilter> for AccessLogFilterConfig {
    type Error = String;

    fn try_from(f: OneFilter) -> Result<Self, String> {
        use AccessLogFilterConfig as F;
        let all = [
            f.status_code_filter
                .map(|c| F::StatusCodeFilter(c.comparison)),
            f.duration_filter.map(|c| F::DurationFilter(c.comparison)),
            f.not_health_check_filter.map(|_| F::NotHealthCheckFilter),
            f.response_flag_filter
                .map(|r| F::ResponseFlagFilter(r.flags)),
            f.header_filter.map(|h| F::HeaderFilter(Box::new(h.header))),
            f.runtime_filter.map(F::RuntimeFilter),
            f.and_filter.map(|a| F::AndFilter(a.filters)),
            f.or_filter.map(|o| F::OrFilter(o.filters)),
        ];
        let mut set = all.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(one), None) => Ok(one),
            _ => Err("an access log filter needs exactly one of status_code_filter, duration_filter, \
                      not_health_check_filter, response_flag_filter, header_filter, runtime_filter, and_filter, \
                      or_filter"
                .to_string()),
        }
    }
}

/// `RuntimeFilter`: a sample of the entries, `percent_sampled` being the
/// share (wasp has no runtime to override it by `runtime_key`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFilterConfig {
    pub runtime_key: String,
    #[serde(default)]
    pub percent_sampled: FractionalPercentConfig,
    #[serde(default)]
    pub use_independent_randomness: bool,
}

/// Envoy's `FractionalPercent`: `numerator` out of `denominator`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercentConfig {
    #[serde(default)]
    pub numerator: u32,
    #[serde(default)]
    pub denominator: Denominator,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Denominator {
    #[default]
    #[serde(rename = "HUNDRED")]
    Hundred,
    #[serde(rename = "TEN_THOUSAND")]
    TenThousand,
    #[serde(rename = "MILLION")]
    Million,
}

impl Denominator {
    pub fn value(self) -> u64 {
        match self {
            Denominator::Hundred => 100,
            Denominator::TenThousand => 10_000,
            Denominator::Million => 1_000_000,
        }
    }
}

/// `ComparisonFilter`: `op` against a runtime value's default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonFilterConfig {
    #[serde(default)]
    pub op: ComparisonOp,
    pub value: RuntimeUInt32Config,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
pub enum ComparisonOp {
    #[default]
    #[serde(rename = "EQ")]
    Eq,
    #[serde(rename = "GE")]
    Ge,
    #[serde(rename = "LE")]
    Le,
    #[serde(rename = "NE")]
    Ne,
}

/// `RuntimeUInt32`: wasp has no runtime, so the default is the value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeUInt32Config {
    #[serde(default)]
    pub default_value: u32,
    pub runtime_key: Option<String>,
}
