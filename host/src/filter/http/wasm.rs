//! `envoy.filters.http.wasm`: proxy-wasm plugins in the HTTP filter chain.
//!
//! A request passes the plugins' request callbacks in configuration order
//! and the response passes their response callbacks in reverse, as in
//! Envoy. A callback that returns `PAUSE` parks the stream (not the worker)
//! until the plugin calls `proxy_continue_stream` from some later callback
//! (an http_call response, a tick, a queue); `proxy_send_local_response`
//! answers in place of the upstream. Bodies pass the body callbacks only
//! when a plugin has them (every Rust SDK plugin does): a pump buffers what
//! a paused plugin holds (up to a limit: 413 for requests, reset for
//! responses) and feeds the rest on as it is released. The request body is
//! pumped by a task, which can stop the stream while the router waits
//! (bodies no longer need to be `Send`, so it could run in place too); the response
//! body is pumped in place as the client reads it ([`ResponseBody`]), so a
//! ready frame leaves with the head and no task or channel is made.
//!
//! The stream's contexts end (done → log → delete) when the last holder of
//! the [`WasmStream`] lets go: the response body keeps it until the
//! response is out, so `on_log` comes after it, as in Envoy; also when the
//! client goes away mid-stream.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;

use super::body::{Body, BoxError, LocalFrames, Outbox, ResponseBody};
use crate::wasm::{
    Action, ConnectionFacts, FailurePolicy, LocalResponse, PluginHandle, StreamCall, StreamContext,
    StreamData,
};

/// Largest body a paused plugin may hold (Envoy's default buffer limit).
pub const BUFFER_LIMIT: usize = 1 << 20;

/// Most request bytes read and dropped after answering early.
const DRAIN_LIMIT: usize = 64 << 20;

/// How a filter phase ended other than by continuing.
pub enum Stop {
    /// Answer with this instead.
    Reply(Box<Response<Body>>),
    /// Reset the stream (`proxy_close_stream`).
    Reset,
}

struct Filter {
    plugin: PluginHandle,
    data: Rc<RefCell<StreamData>>,
    context: Option<StreamContext>,
}

/// One HTTP stream's contexts on its worker's VMs.
pub struct WasmStream {
    filters: Vec<Filter>,
    wants_request_body: bool,
    wants_response_body: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

fn header_count(headers: &HeaderMap, pseudo: usize) -> u32 {
    (headers.len() + pseudo) as u32
}

/// The answer for a stream whose plugin failed, by its failure policy:
/// `None` to go on without it.
fn failure_reply(filter: &Filter) -> Option<Stop> {
    match filter.plugin.plugin.failure_policy {
        FailurePolicy::Open => None,
        FailurePolicy::Closed | FailurePolicy::Reload => Some(Stop::Reply(Box::new(
            super::router::local(StatusCode::SERVICE_UNAVAILABLE, ""),
        ))),
    }
}

/// A response made of a plugin's `proxy_send_local_response`.
pub fn local_response(l: LocalResponse) -> Response<Body> {
    let status = StatusCode::from_u16(l.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = super::router::local(status, l.body);
    // The SDKs pass -1 for none.
    if let (Ok(code), Some(local)) = (
        u32::try_from(l.grpc_status),
        resp.extensions_mut().get_mut::<super::grpc::LocalReply>(),
    ) {
        local.grpc_status = Some(code);
    }
    for (k, v) in l.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(&v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

impl WasmStream {
    /// Creates the stream's context on each plugin.
    pub fn start<'p>(
        plugins: impl ExactSizeIterator<Item = &'p PluginHandle>,
        connection: &ConnectionFacts,
        protocol: &'static str,
    ) -> Result<Rc<Self>, Stop> {
        let mut filters = Vec::with_capacity(plugins.len());
        let (mut wants_request_body, mut wants_response_body) = (false, false);
        for plugin in plugins {
            let mut data = StreamData::new(connection.clone());
            data.protocol = protocol;
            let data = Rc::new(RefCell::new(data));
            let context = plugin.vm.create_stream(plugin, data.clone());
            let filter = Filter {
                plugin: plugin.clone(),
                data,
                context,
            };
            if filter.context.is_none() {
                if let Some(stop) = failure_reply(&filter) {
                    return Err(stop);
                }
            } else {
                let (req, resp) = plugin.vm.wants_bodies();
                wants_request_body |= req;
                wants_response_body |= resp;
            }
            filters.push(filter);
        }
        Ok(Rc::new(WasmStream {
            filters,
            wants_request_body,
            wants_response_body,
        }))
    }

    /// Runs one callback and, if the plugin paused, waits until it resumes,
    /// answers or closes. `Ok(true)`: go on to the next plugin.
    async fn run(&self, filter: &Filter, call: StreamCall, dir: Direction) -> Result<(), Stop> {
        let Some(ctx) = &filter.context else {
            return Ok(());
        };
        let vm = &filter.plugin.vm;
        let mut action = vm.call_stream(&filter.plugin.plugin, ctx, call);
        loop {
            if action == Action::Failed || !vm.alive(ctx) {
                return match failure_reply(filter) {
                    Some(stop) => Err(stop),
                    None => Ok(()),
                };
            }
            let notify = {
                let mut d = filter.data.borrow_mut();
                if d.close {
                    return Err(Stop::Reset);
                }
                if let Some(l) = d.local_response.take() {
                    return Err(Stop::Reply(Box::new(local_response(l))));
                }
                let resumed = match dir {
                    Direction::Request => std::mem::take(&mut d.resume_request),
                    Direction::Response => std::mem::take(&mut d.resume_response),
                };
                if action == Action::Continue || resumed {
                    return Ok(());
                }
                d.notify.clone()
            };
            notify.notified().await;
            // Woken: look at the flags (or the VM's health) again.
            action = Action::Pause;
        }
    }

    /// Request headers through every plugin, in order.
    pub async fn request_headers(
        &self,
        mut parts: http::request::Parts,
        end: bool,
    ) -> Result<http::request::Parts, Stop> {
        let mut result = Ok(());
        for filter in &self.filters {
            let n = header_count(
                &parts.headers,
                3 + usize::from(!parts.headers.contains_key(http::header::HOST)),
            );
            {
                let mut d = filter.data.borrow_mut();
                d.request_size = content_length(&parts.headers);
                d.request = Some(parts);
            }
            result = self
                .run(
                    filter,
                    StreamCall::RequestHeaders { headers: n, end },
                    Direction::Request,
                )
                .await;
            parts = filter
                .data
                .borrow_mut()
                .request
                .take()
                .expect("the request head stays with its stream");
            if result.is_err() {
                break;
            }
        }
        // Keep a copy for the plugins' later callbacks (response phase,
        // on_log), as Envoy keeps the request headers readable.
        for filter in &self.filters {
            if filter.context.is_some() {
                filter.data.borrow_mut().request = Some(copy_request_head(&parts));
            }
        }
        result.map(|()| parts)
    }

    /// Response headers through every plugin, in reverse order.
    pub async fn response_headers(
        &self,
        mut parts: http::response::Parts,
        end: bool,
    ) -> Result<http::response::Parts, Stop> {
        for filter in self.filters.iter().rev() {
            let n = header_count(&parts.headers, 1);
            {
                let mut d = filter.data.borrow_mut();
                d.response_size = content_length(&parts.headers);
                d.response = Some(parts);
            }
            let r = self
                .run(
                    filter,
                    StreamCall::ResponseHeaders { headers: n, end },
                    Direction::Response,
                )
                .await;
            let mut d = filter.data.borrow_mut();
            parts = d
                .response
                .take()
                .expect("the response head stays with its stream");
            if filter.context.is_some() {
                d.response = Some(copy_response_head(&parts));
            }
            drop(d);
            r?;
        }
        Ok(parts)
    }

    /// The request body as the upstream gets it.
    ///
    /// With body callbacks to run, a task pumps the body, and the receiver
    /// returned gets the plugins' answer if they stop the stream on the way.
    pub fn request_body(
        self: &Rc<Self>,
        body: Body,
    ) -> (Body, Option<tokio::sync::oneshot::Receiver<Stop>>) {
        if !self.wants_request_body || hyper::body::Body::is_end_stream(&body) {
            return (body, None);
        }
        let (abort, aborted) = tokio::sync::oneshot::channel();
        let (tx, out) = Body::channel();
        let stream = self.clone();
        tokio::task::spawn_local(async move {
            let mut body = body;
            if let Err(stop) = stream.pump(&mut body, &tx, Direction::Request).await {
                // Read what the client is still sending (within bounds)
                // before answering: closing a connection with unread input
                // resets it under the answer before the client reads it.
                let drain = async {
                    let mut left = DRAIN_LIMIT;
                    while let Some(Ok(frame)) = body.frame().await {
                        let n = frame.data_ref().map_or(0, |d| d.len());
                        left = left.saturating_sub(n);
                        if left == 0 {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
                let _ = abort.send(stop);
                // Only now fail the upstream request's body, so the answer
                // above wins over the upstream's error.
                reset(&tx);
            }
        });
        (out, Some(aborted))
    }

    /// The response body as the client gets it: the plugins' body
    /// callbacks run inline as the client reads. The stream lives until
    /// that body is out, so `on_log` comes after the response, as in Envoy.
    pub fn response_body(self: &Rc<Self>, body: Body) -> ResponseBody {
        if !self.wants_response_body || hyper::body::Body::is_end_stream(&body) {
            return ResponseBody::Body(body, Some(self.clone()));
        }
        let stream = self.clone();
        ResponseBody::Local(LocalFrames::new(move |out| async move {
            let mut body = body;
            // A failure after the response head is out can only reset.
            if stream
                .pump(&mut body, &out, Direction::Response)
                .await
                .is_err()
            {
                out.send(Err(RESET.into())).await;
            }
        }))
    }

    /// Moves a body through the plugins' body and trailer callbacks.
    async fn pump(&self, body: &mut Body, tx: &impl Sink, dir: Direction) -> Result<(), Stop> {
        // Plugins see requests in order, responses in reverse.
        let order = |i: usize| match dir {
            Direction::Request => &self.filters[i],
            Direction::Response => &self.filters[self.filters.len() - 1 - i],
        };
        let mut ended = false;
        while !ended {
            let frame = match body.frame().await {
                None => {
                    ended = true;
                    Frame::data(Bytes::new())
                }
                Some(Err(e)) => {
                    tx.put(Err(e)).await;
                    return Ok(());
                }
                Some(Ok(f)) => f,
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    let end = ended || hyper::body::Body::is_end_stream(&*body);
                    ended = end;
                    let mut chunk = data;
                    for i in 0..self.filters.len() {
                        match self.body_through(order(i), chunk, end, dir).await {
                            Ok(Some(out)) => chunk = out,
                            // Held by a paused plugin: nothing goes on yet.
                            Ok(None) => {
                                chunk = Bytes::new();
                                break;
                            }
                            Err(stop) => return Err(stop),
                        }
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    Frame::data(chunk)
                }
                Err(frame) => {
                    let Ok(mut trailers) = frame.into_trailers() else {
                        continue;
                    };
                    ended = true;
                    for i in 0..self.filters.len() {
                        self.trailers_through(order(i), &mut trailers, dir).await?;
                    }
                    Frame::trailers(trailers)
                }
            };
            if !tx.put(Ok(frame)).await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One plugin's body callback for `chunk`: what it passes on (`None`
    /// while it holds the body).
    async fn body_through(
        &self,
        filter: &Filter,
        chunk: Bytes,
        end: bool,
        dir: Direction,
    ) -> Result<Option<Bytes>, Stop> {
        if filter.context.is_none() {
            return Ok(Some(chunk));
        }
        let size = {
            let mut d = filter.data.borrow_mut();
            let buf = body_buffer(&mut d, dir);
            buf.extend_from_slice(&chunk);
            if buf.len() > BUFFER_LIMIT {
                return Err(Stop::Reply(Box::new(super::router::local(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large",
                ))));
            }
            buf.len() as u32
        };
        let call = match dir {
            Direction::Request => StreamCall::RequestBody { size, end },
            Direction::Response => StreamCall::ResponseBody { size, end },
        };
        let ctx = filter.context.as_ref().expect("checked above");
        let action = filter
            .plugin
            .vm
            .call_stream(&filter.plugin.plugin, ctx, call);
        if action == Action::Pause && !end {
            // StopIterationAndBuffer: keep it and offer more with the next
            // chunk, unless the plugin resumed meanwhile.
            let resumed = {
                let mut d = filter.data.borrow_mut();
                match dir {
                    Direction::Request => std::mem::take(&mut d.resume_request),
                    Direction::Response => std::mem::take(&mut d.resume_response),
                }
            };
            let d = filter.data.borrow();
            if d.close {
                return Err(Stop::Reset);
            }
            if !resumed && d.local_response.is_none() {
                return Ok(None);
            }
        }
        if action == Action::Pause && end {
            // At the end a paused plugin must resume (or answer) itself.
            self.wait(filter, dir).await?;
        } else {
            self.check(filter, action)?;
        }
        let mut d = filter.data.borrow_mut();
        Ok(Some(body_buffer(&mut d, dir).split().freeze()))
    }

    /// After a callback that did not pause: local replies, closes and VM
    /// failures still apply.
    fn check(&self, filter: &Filter, action: Action) -> Result<(), Stop> {
        let ctx = filter.context.as_ref().expect("a live context");
        if action == Action::Failed || !filter.plugin.vm.alive(ctx) {
            return match failure_reply(filter) {
                Some(stop) => Err(stop),
                None => Ok(()),
            };
        }
        let mut d = filter.data.borrow_mut();
        if d.close {
            return Err(Stop::Reset);
        }
        if let Some(l) = d.local_response.take() {
            return Err(Stop::Reply(Box::new(local_response(l))));
        }
        Ok(())
    }

    /// Waits for a paused plugin to resume.
    async fn wait(&self, filter: &Filter, dir: Direction) -> Result<(), Stop> {
        let ctx = filter.context.as_ref().expect("a live context");
        loop {
            self.check(filter, Action::Pause)?;
            let notify = {
                let mut d = filter.data.borrow_mut();
                let resumed = match dir {
                    Direction::Request => std::mem::take(&mut d.resume_request),
                    Direction::Response => std::mem::take(&mut d.resume_response),
                };
                if resumed {
                    return Ok(());
                }
                d.notify.clone()
            };
            if !filter.plugin.vm.alive(ctx) {
                continue;
            }
            notify.notified().await;
        }
    }

    async fn trailers_through(
        &self,
        filter: &Filter,
        trailers: &mut HeaderMap,
        dir: Direction,
    ) -> Result<(), Stop> {
        if filter.context.is_none() {
            return Ok(());
        }
        let n = trailers.len() as u32;
        {
            let mut d = filter.data.borrow_mut();
            let slot = match dir {
                Direction::Request => &mut d.request_trailers,
                Direction::Response => &mut d.response_trailers,
            };
            *slot = Some(std::mem::take(trailers));
        }
        let call = match dir {
            Direction::Request => StreamCall::RequestTrailers { trailers: n },
            Direction::Response => StreamCall::ResponseTrailers { trailers: n },
        };
        let r = self.run(filter, call, dir).await;
        let mut d = filter.data.borrow_mut();
        let slot = match dir {
            Direction::Request => &mut d.request_trailers,
            Direction::Response => &mut d.response_trailers,
        };
        if let Some(t) = slot {
            *trailers = t.clone();
        }
        r
    }

    /// Records where the request went, for `upstream.*` properties.
    pub fn set_upstream(&self, address: std::net::SocketAddr) {
        for f in &self.filters {
            f.data.borrow_mut().upstream = Some(address);
        }
    }
}

type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

const RESET: &str = "stream reset by a wasm filter";

/// Ends a filtered body with an error: the peer's stream is reset.
fn reset(tx: &Sender) {
    let _ = tx.try_send(Err(RESET.into()));
}

/// Where a body pump puts what passed the plugins: the channel of an
/// upstream request body (a task pumps it), or the outbox of a downstream
/// response body (pumped as the client reads).
trait Sink {
    /// False once nobody reads any more.
    async fn put(&self, frame: Result<Frame<Bytes>, BoxError>) -> bool;
}

impl Sink for Sender {
    async fn put(&self, frame: Result<Frame<Bytes>, BoxError>) -> bool {
        self.send(frame).await.is_ok()
    }
}

impl Sink for Outbox {
    async fn put(&self, frame: Result<Frame<Bytes>, BoxError>) -> bool {
        self.send(frame).await;
        true
    }
}

fn body_buffer(d: &mut StreamData, dir: Direction) -> &mut BytesMut {
    match dir {
        Direction::Request => &mut d.request_body,
        Direction::Response => &mut d.response_body,
    }
}

fn content_length(h: &HeaderMap) -> u64 {
    h.get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

fn copy_request_head(p: &http::request::Parts) -> http::request::Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

fn copy_response_head(p: &http::response::Parts) -> http::response::Parts {
    let mut r = Response::new(());
    *r.status_mut() = p.status;
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

impl Drop for WasmStream {
    fn drop(&mut self) {
        for f in &self.filters {
            if let Some(ctx) = &f.context {
                f.plugin.vm.end_stream(&f.plugin.plugin, ctx);
            }
        }
    }
}
