//! Access logs: Envoy's format strings (`%START_TIME%`, `%BYTES_SENT%`, ...)
//! rendered from a connection's or request's [`StreamInfo`] into a file,
//! stdout or stderr.
//!
//! A file is opened once with O_APPEND and shared by all workers; each entry
//! is one `write(2)`, so lines from different workers never interleave.

mod filter;
mod format;
mod stream_info;

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use crate::config::path::join;
use crate::config::{AccessLogConfig, Extension, LogFormatConfig, ValidationError};

pub use filter::LogFilter;
pub use format::Format;
pub use stream_info::{HttpInfo, ResponseFlags, StreamInfo};

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Where entries go.
#[derive(Debug, Clone)]
pub enum SinkSettings {
    File(String),
    Stdout,
    Stderr,
}

/// A validated access log.
#[derive(Debug, Clone)]
pub struct AccessLogSettings {
    pub sink: SinkSettings,
    pub format: Format,
    /// Which entries are written (all without one).
    pub filter: Option<LogFilter>,
}

impl AccessLogSettings {
    pub fn validate(
        config: &Extension<AccessLogConfig>,
        path: &str,
    ) -> Result<Self, ValidationError> {
        let at = join(path, "typed_config");
        let (sink, format) = match &config.config {
            AccessLogConfig::File(f) => {
                if f.path.is_empty() {
                    return Err(ValidationError::new(
                        join(&at, "path"),
                        "path must not be empty",
                    ));
                }
                let format = match (&f.format, &f.log_format, &f.json_format) {
                    (Some(text), None, None) => Format::text(text),
                    (None, Some(lf), None) => format_of(lf),
                    (None, None, Some(json)) => Format::json(json),
                    (None, None, None) => Format::text(DEFAULT_FORMAT),
                    _ => Err("set only one of format, log_format, json_format".to_string()),
                };
                (SinkSettings::File(f.path.clone()), format)
            }
            AccessLogConfig::Stdout(s) => (
                SinkSettings::Stdout,
                s.log_format
                    .as_ref()
                    .map_or_else(|| Format::text(DEFAULT_FORMAT), format_of),
            ),
            AccessLogConfig::Stderr(s) => (
                SinkSettings::Stderr,
                s.log_format
                    .as_ref()
                    .map_or_else(|| Format::text(DEFAULT_FORMAT), format_of),
            ),
        };
        let format = format.map_err(|m| ValidationError::new(at, m))?;
        let filter = config
            .filter
            .as_ref()
            .map(|f| LogFilter::validate(f, &join(path, "filter")))
            .transpose()?;
        Ok(AccessLogSettings {
            sink,
            format,
            filter,
        })
    }

    /// Opens the sink.
    pub fn open(&self) -> std::io::Result<AccessLog> {
        let sink = match &self.sink {
            SinkSettings::File(path) => Sink::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            SinkSettings::Stdout => Sink::Stdout,
            SinkSettings::Stderr => Sink::Stderr,
        };
        Ok(AccessLog {
            sink,
            format: self.format.clone(),
            filter: self.filter.clone(),
        })
    }
}

/// A `SubstitutionFormatString`'s format.
pub fn format_of(lf: &LogFormatConfig) -> Result<Format, String> {
    match (&lf.text_format, &lf.text_format_source, &lf.json_format) {
        (Some(t), None, None) => Format::text(t),
        (None, Some(src), None) => {
            let bytes = src.load()?;
            Format::text(&String::from_utf8(bytes).map_err(|_| "text_format_source is not UTF-8")?)
        }
        (None, None, Some(json)) => Format::json(json),
        (None, None, None) => Format::text(DEFAULT_FORMAT),
        _ => Err("set only one of text_format, text_format_source, json_format".to_string()),
    }
}

enum Sink {
    File(File),
    Stdout,
    Stderr,
}

/// An open access log.
pub struct AccessLog {
    sink: Sink,
    format: Format,
    filter: Option<LogFilter>,
}

impl AccessLog {
    /// Renders and writes one entry. Errors are logged, never returned: a full
    /// disk must not break proxying.
    pub fn log(&self, info: &StreamInfo) {
        if self.filter.as_ref().is_some_and(|f| !f.allows(info)) {
            return;
        }
        let line = self.format.render(info);
        let result = match &self.sink {
            Sink::File(f) => (&*f).write_all(line.as_bytes()),
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::Stderr => std::io::stderr().lock().write_all(line.as_bytes()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "access log write failed");
        }
    }
}

/// Opens every log of a filter.
pub fn open_all(settings: &[AccessLogSettings]) -> std::io::Result<Vec<Arc<AccessLog>>> {
    settings.iter().map(|s| s.open().map(Arc::new)).collect()
}
