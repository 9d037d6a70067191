//! HTTP/2 connection settings from Envoy's `Http2ProtocolOptions`, for
//! hyper's client (upstream) and server (downstream) connections. What is
//! left unset keeps hyper's default.

use std::time::Duration;

use crate::config::path::join;
use crate::config::{Http2ProtocolOptionsConfig, ValidationError};

/// Flow-control windows must lie in this range (RFC 9113 §6.9.2, and
/// Envoy's bounds).
const WINDOW: std::ops::RangeInclusive<u32> = 65_535..=2_147_483_647;

/// Validated `Http2ProtocolOptions`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Http2Settings {
    /// Streams at once on one connection: what a downstream client is
    /// allowed, or how many wasp opens on one upstream connection before
    /// it opens another.
    pub max_concurrent_streams: Option<u32>,
    header_table_size: Option<u32>,
    stream_window: Option<u32>,
    connection_window: Option<u32>,
    /// PING every `interval`; the connection is closed if an answer
    /// takes longer than `timeout`.
    keepalive: Option<(Duration, Duration)>,
}

impl Http2Settings {
    pub fn validate(c: &Http2ProtocolOptionsConfig, path: &str) -> Result<Self, ValidationError> {
        if c.allow_connect {
            return Err(ValidationError::new(
                join(path, "allow_connect"),
                "CONNECT over HTTP/2 is not supported",
            ));
        }
        if c.max_concurrent_streams == Some(0) {
            return Err(ValidationError::new(
                join(path, "max_concurrent_streams"),
                "must be at least 1",
            ));
        }
        let window = |size: Option<u32>, field: &str| match size {
            Some(s) if !WINDOW.contains(&s) => Err(ValidationError::new(
                join(path, field),
                format!("must be between {} and {}", WINDOW.start(), WINDOW.end()),
            )),
            _ => Ok(size),
        };
        Ok(Http2Settings {
            max_concurrent_streams: c.max_concurrent_streams,
            header_table_size: c.hpack_table_size,
            stream_window: window(c.initial_stream_window_size, "initial_stream_window_size")?,
            connection_window: window(
                c.initial_connection_window_size,
                "initial_connection_window_size",
            )?,
            keepalive: c
                .connection_keepalive
                .as_ref()
                .and_then(|k| Some((k.interval?.0, k.timeout.0))),
        })
    }

    /// Applies them to an upstream connection's builder.
    pub fn client<E: Clone>(&self, b: &mut hyper::client::conn::http2::Builder<E>) {
        b.header_table_size(self.header_table_size)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window);
        if let Some((interval, timeout)) = self.keepalive {
            // Envoy pings whether or not streams are open.
            b.keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
    }

    /// Applies them to a downstream connection's builder.
    pub fn server<E>(&self, b: &mut hyper::server::conn::http2::Builder<E>) {
        b.header_table_size(self.header_table_size)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window);
        if let Some(max) = self.max_concurrent_streams {
            b.max_concurrent_streams(max);
        }
        if let Some((interval, timeout)) = self.keepalive {
            b.keep_alive_interval(interval).keep_alive_timeout(timeout);
        }
    }
}
