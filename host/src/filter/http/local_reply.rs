//! `local_reply_config`: what wasp's own answers (404, 503, a direct
//! response, a filter's reply...) become before they go out. The first
//! mapper whose access log filter takes the reply may change its status,
//! body and headers; then a body format (the mapper's, else the config's)
//! renders the body, `%LOCAL_REPLY_BODY%` being the body so far.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use tokio::time::Instant;

use super::grpc::{self, LocalReply};
use super::route::HeaderOps;
use super::router::Body;
use crate::access_log::{Format, HttpInfo, LogFilter, ResponseFlags, StreamInfo, format_of};
use crate::config::path::{index, join};
use crate::config::{LocalReplyConfig, LogFormatConfig, ValidationError};

/// A validated `local_reply_config`.
#[derive(Debug, Clone)]
pub struct LocalReplies {
    mappers: Vec<Mapper>,
    format: Option<BodyFormat>,
}

#[derive(Debug, Clone)]
struct Mapper {
    filter: LogFilter,
    status: Option<StatusCode>,
    body: Option<Bytes>,
    format: Option<BodyFormat>,
    headers: HeaderOps,
}

#[derive(Debug, Clone)]
struct BodyFormat {
    format: Format,
    content_type: HeaderValue,
}

impl BodyFormat {
    fn validate(c: &LogFormatConfig, at: &str) -> Result<Self, ValidationError> {
        let format = format_of(c).map_err(|e| ValidationError::new(at, e))?;
        let content_type = match (&c.content_type, &c.json_format) {
            (Some(t), _) => HeaderValue::from_str(t).map_err(|_| {
                ValidationError::new(join(at, "content_type"), "not a valid header value")
            })?,
            (None, Some(_)) => HeaderValue::from_static("application/json"),
            (None, None) => HeaderValue::from_static("text/plain"),
        };
        Ok(BodyFormat {
            format,
            content_type,
        })
    }
}

impl LocalReplies {
    pub fn validate(c: &LocalReplyConfig, at: &str) -> Result<Self, ValidationError> {
        let mappers = c
            .mappers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let at = index(&join(at, "mappers"), i);
                Ok(Mapper {
                    filter: LogFilter::validate(&m.filter, &join(&at, "filter"))?,
                    status: m
                        .status_code
                        .map(|s| {
                            StatusCode::from_u16(s).map_err(|_| {
                                ValidationError::new(join(&at, "status_code"), "not an HTTP status")
                            })
                        })
                        .transpose()?,
                    body: m
                        .body
                        .as_ref()
                        .map(|b| b.load().map(Bytes::from))
                        .transpose()
                        .map_err(|e| ValidationError::new(join(&at, "body"), e))?,
                    format: m
                        .body_format_override
                        .as_ref()
                        .map(|f| BodyFormat::validate(f, &join(&at, "body_format_override")))
                        .transpose()?,
                    headers: HeaderOps::build(
                        &m.headers_to_add,
                        &[],
                        &join(&at, "headers_to_add"),
                    )?,
                })
            })
            .collect::<Result<_, ValidationError>>()?;
        let format = c
            .body_format
            .as_ref()
            .map(|f| BodyFormat::validate(f, &join(at, "body_format")))
            .transpose()?;
        Ok(LocalReplies { mappers, format })
    }

    /// A local reply rewritten by the first mapper that takes it and the
    /// body format. `request` is the request's head, for header filters
    /// and `%REQ(...)%`.
    fn rewrite(
        &self,
        request: &RequestHead,
        conn: &StreamInfo,
        started: Instant,
        local: LocalReply,
        mut parts: http::response::Parts,
    ) -> Response<Body> {
        let mut info = StreamInfo::new(
            conn.connection_id,
            conn.downstream_remote,
            conn.downstream_local,
        );
        info.started_at(started);
        info.response_flags = parts
            .extensions
            .get::<ResponseFlags>()
            .copied()
            .unwrap_or_default();
        info.http = Some(Box::new(HttpInfo {
            method: request.method.to_string(),
            path: request
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            authority: request
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or(request.uri.authority().map(|a| a.as_str()))
                .unwrap_or_default()
                .to_string(),
            request_headers: request.headers.clone(),
            response_code: parts.status.as_u16(),
            local_reply_body: String::from_utf8_lossy(&local.message).into_owned(),
            ..HttpInfo::default()
        }));
        let mapper = self.mappers.iter().find(|m| m.filter.allows(&info));
        let mut body = local.message;
        if let Some(m) = mapper {
            if let Some(status) = m.status {
                parts.status = status;
            }
            if let Some(b) = &m.body {
                body = b.clone();
            }
            m.headers.apply(&mut parts.headers);
        }
        if let Some(f) = mapper
            .and_then(|m| m.format.as_ref())
            .or(self.format.as_ref())
        {
            let http = info.http.as_mut().expect("set above");
            http.response_code = parts.status.as_u16();
            http.local_reply_body = String::from_utf8_lossy(&body).into_owned();
            body = f.format.render(&info).into();
            parts.headers.insert(CONTENT_TYPE, f.content_type.clone());
        }
        parts.headers.remove(http::header::CONTENT_LENGTH);
        parts.extensions.insert(LocalReply {
            message: body.clone(),
            grpc_status: local.grpc_status,
        });
        Response::from_parts(parts, Body::full(body))
    }
}

/// How one stream's local replies are finished, at each point one is made,
/// so that the wasm filters' response callbacks see them finished, as in
/// Envoy: `local_reply_config`'s rewrite first, then the gRPC form if the
/// request is gRPC. Any other response passes untouched.
pub struct StreamReplies<'s> {
    /// The config, with the request's head it looks at (kept only when
    /// there is a config; boxed, as it would otherwise widen every
    /// request's future).
    config: Option<(&'s LocalReplies, Box<RequestHead>)>,
    grpc: bool,
    conn: &'s StreamInfo,
    started: Instant,
}

impl<'s> StreamReplies<'s> {
    pub fn new<B>(
        config: Option<&'s LocalReplies>,
        req: &http::Request<B>,
        conn: &'s StreamInfo,
        started: Instant,
    ) -> Self {
        StreamReplies {
            config: config.map(|c| {
                let head = RequestHead {
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    headers: req.headers().clone(),
                };
                (c, Box::new(head))
            }),
            grpc: grpc::is_grpc(req.headers()),
            conn,
            started,
        }
    }

    pub fn finish(&self, resp: Response<Body>) -> Response<Body> {
        let Some(local) = resp.extensions().get::<LocalReply>() else {
            return resp;
        };
        let resp = match &self.config {
            Some((replies, head)) => {
                let local = local.clone();
                let (parts, _) = resp.into_parts();
                replies.rewrite(head, self.conn, self.started, local, parts)
            }
            None => resp,
        };
        match self.grpc {
            true => grpc::answer(resp),
            false => resp,
        }
    }
}

/// What a local reply's rewriting may look at of its request.
struct RequestHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}
