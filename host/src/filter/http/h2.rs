//! HTTP/2 connection settings from Envoy's `Http2ProtocolOptions`, for
//! hyper's client (upstream) and server (downstream) connections (what is
//! left unset keeps hyper's default), and WebSockets over HTTP/2 (RFC 8441
//! extended CONNECT) from downstream clients.
//!
//! As Envoy does, an extended CONNECT is forwarded as an HTTP/1.1 upgrade
//! (`GET` with `upgrade: <:protocol>`), routed and allowed as one, and an
//! upstream's 101 is answered 200 on the client's stream, which then
//! carries the tunnel's bytes.

use std::time::Duration;

use http::header::{CONNECTION, CONTENT_LENGTH, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{Body, ResponseBody};
use super::h1;
use super::tunnel::ConnectTunnel;
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
    /// Whether clients may open tunnels with extended CONNECT
    /// (`allow_connect`, downstream only).
    allow_connect: bool,
}

impl Http2Settings {
    /// Validates a cluster's: an upgrade goes upstream over HTTP/1.1,
    /// never as an extended CONNECT, so `allow_connect` is refused there.
    pub fn validate_upstream(
        c: &Http2ProtocolOptionsConfig,
        path: &str,
    ) -> Result<Self, ValidationError> {
        if c.allow_connect {
            return Err(ValidationError::new(
                join(path, "allow_connect"),
                "CONNECT to upstreams is not supported (upgrades go upstream over HTTP/1.1)",
            ));
        }
        Self::validate(c, path)
    }

    pub fn validate(c: &Http2ProtocolOptionsConfig, path: &str) -> Result<Self, ValidationError> {
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
            allow_connect: c.allow_connect,
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
        if self.allow_connect {
            b.enable_connect_protocol();
        }
    }
}

/// Takes the client's side of the tunnel a CONNECT asks for. An extended
/// CONNECT (`:protocol`) becomes the HTTP/1.1 upgrade request the router
/// forwards; a plain one stays a CONNECT (for a route that ends it). Any
/// other request is left as it is.
pub fn connect(req: &mut Request<Body>) -> Option<OnUpgrade> {
    if req.method() != Method::CONNECT {
        return None;
    }
    if let Some(protocol) = req.extensions_mut().remove::<hyper::ext::Protocol>() {
        let kind = HeaderValue::from_str(protocol.as_str()).ok()?;
        *req.method_mut() = Method::GET;
        req.extensions_mut().insert(h1::Upgrade(kind));
    }
    req.extensions_mut().remove::<OnUpgrade>()
}

/// The answer to an extended CONNECT: an upstream's 101 becomes a 200
/// without its HTTP/1.1 connection fields (as Envoy answers), and the
/// tunnel runs on a task of its own once hyper hands over the client's
/// stream. Other answers (a 403, a 503, ...) go back as they are.
pub fn answer_upgrade(
    resp: Response<ResponseBody>,
    client: OnUpgrade,
    idle: Option<Duration>,
) -> Response<ResponseBody> {
    if resp.extensions().get::<ConnectTunnel>().is_some() {
        return answer_connect(resp, client, idle);
    }
    // A 101 to an upgrade, or the upstream's 2xx to a CONNECT it took.
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (resp.status().is_success() && resp.extensions().get::<OnUpgrade>().is_some());
    if !switched {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Some(upstream) = parts.extensions.remove::<OnUpgrade>() else {
        // A 101 from no upstream that switched: nothing to tunnel to.
        return super::router::local(StatusCode::BAD_GATEWAY, "").map(ResponseBody::from);
    };
    parts.status = StatusCode::OK;
    for name in [CONNECTION, UPGRADE, CONTENT_LENGTH] {
        parts.headers.remove(name);
    }
    tokio::task::spawn_local(async move {
        let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else {
            return;
        };
        let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = super::tunnel::carry(client, upstream, idle, None).await {
            tracing::debug!(error = %e, "http/2 tunnel ended with an error");
        }
        // The upstream connection's stats and the request in flight end here.
        drop(body);
    });
    Response::from_parts(parts, ResponseBody::from(Body::empty()))
}

/// The answer to a CONNECT wasp ends itself: the 200 goes out, and the
/// client's stream and the TCP connection to the cluster become one
/// tunnel on a task of its own.
fn answer_connect(
    resp: Response<ResponseBody>,
    client: OnUpgrade,
    idle: Option<Duration>,
) -> Response<ResponseBody> {
    let (mut parts, _) = resp.into_parts();
    let upstream = parts
        .extensions
        .remove::<ConnectTunnel>()
        .and_then(|t| t.take());
    parts.headers.remove(CONTENT_LENGTH);
    if let Some(upstream) = upstream {
        tokio::task::spawn_local(async move {
            let Ok(client) = client.await else {
                return;
            };
            if let Err(e) = super::tunnel::carry(TokioIo::new(client), upstream, idle, None).await {
                tracing::debug!(error = %e, "http/2 CONNECT tunnel ended with an error");
            }
        });
    }
    Response::from_parts(parts, ResponseBody::from(Body::empty()))
}
