use serde::Deserialize;
use serde::de::Deserializer;

use super::DataSourceConfig;
use super::extension::{Extensions, unsupported};

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
