//! HTTP/1.1 from downstream clients, served on the connection's own task.
//!
//! hyper's server puts a dispatcher between the connection and the
//! service: it parses into its own buffers, moves every request's future
//! into a box it polls, and encodes the response through a second buffer
//! queue. Here the loop is plain: read a request head, call the connection
//! manager with the request, write the response as its body is polled,
//! and go on with the next head (pipelined requests wait in the read
//! buffer). The request body reads the same connection, from the same
//! buffer, whenever the router or a filter polls it.
//!
//! Malformed requests are answered as Envoy's codec answers them, each
//! with `connection: close`: 400 for a malformed head (or an HTTP/1.1 one
//! without Host), 431 for a head over `max_request_headers_kb` or with
//! more than 100 fields, 501 for a transfer coding other than chunked,
//! 408 when `request_headers_timeout` passes before the head is in, and
//! 426 for HTTP/1.0 unless `accept_http_10` is set.
//!
//! A request that asks to switch protocols (WebSocket) and is answered 101
//! turns the connection into a tunnel to the upstream's (see `tunnel`).

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, HOST, SERVER, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::super::body::{Body, BoxError, ResponseBody};
use super::super::tunnel::{ConnectTunnel, carry};
use super::{
    Chunk, Decoded, Decoder, Error, MAX_HEADERS, encode_chunk, encode_field, encode_last_chunk,
    header_map, is_connection_field, lists, spans,
};
use crate::stats::Counter;

/// What a connection is served with.
pub struct Settings {
    /// The longest request head accepted (max_request_headers_kb).
    pub max_head: usize,
    /// How long a request head may take once its first byte is in.
    pub headers_timeout: Option<Duration>,
    /// The `server` header of the answers given here.
    pub server_name: HeaderValue,
    /// Whether HTTP/1.0 requests are served (`accept_http_10`), and the
    /// Host given to those without one (`default_host_for_http_10`).
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<HeaderValue>,
    /// Requests a connection serves before it is closed
    /// (`max_requests_per_connection`), counted in `max_requests_reached`.
    pub max_requests: Option<u32>,
    /// How long a tunnel (after an upgrade) may carry nothing either way
    /// before it is closed (`stream_idle_timeout`).
    pub tunnel_idle_timeout: Option<Duration>,
    /// Bytes read from and written to clients (this worker's shards).
    pub rx_bytes: Counter,
    pub tx_bytes: Counter,
    pub max_requests_reached: Counter,
    /// How long a connection closed with request bytes unread drains them
    /// before it closes (`delayed_close_timeout`).
    pub delayed_close_timeout: Option<Duration>,
    /// Answers that went out before their request had all come in.
    pub response_before_rq_complete: Counter,
}

/// Response bytes gathered before they are written; a frame this large
/// or larger goes out from its own buffer rather than being copied.
const GATHER: usize = 16 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection, shared by the serving loop and the body of the
/// request in flight.
struct Shared {
    /// Read and written through tokio's `AsyncRead`/`AsyncWrite`, which
    /// take a short read as the socket drained (`try_read` would leave it
    /// marked readable, and the next read would be a wasted syscall).
    io: RefCell<TcpStream>,
    read: RefCell<BytesMut>,
    /// How the current request's body ends; `Done` when it has.
    body: RefCell<Decoder>,
    /// Which request the connection is on: a body kept past its exchange
    /// must not read the next request.
    request: Cell<u64>,
    /// Bytes of a `100 Continue` still owed before the body is read.
    continue_left: Cell<usize>,
    rx_bytes: Counter,
    tx_bytes: Counter,
    tunnel_idle_timeout: Option<Duration>,
}

impl Shared {
    fn poll_fill(&self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let mut io = self.io.borrow_mut();
        let mut read = self.read.borrow_mut();
        let n = ready!(super::poll_fill(&mut io, &mut read, want, cx))?;
        self.rx_bytes.add(n as u64);
        Poll::Ready(Ok(n))
    }

    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut io = self.io.borrow_mut();
        let io = Pin::new(&mut *io);
        match ready!(match bufs {
            [one] => io.poll_write(cx, one),
            _ => io.poll_write_vectored(cx, bufs),
        }) {
            Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                self.tx_bytes.add(n as u64);
                Poll::Ready(Ok(n))
            }
            e => Poll::Ready(e),
        }
    }

    /// Writes all of `a`, then all of `b`, in as few syscalls as it can.
    async fn write_all(&self, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
        while !a.is_empty() || !b.is_empty() {
            let slices = [IoSlice::new(a), IoSlice::new(b)];
            let bufs = match (a.is_empty(), b.is_empty()) {
                (true, _) => &slices[1..],
                (_, true) => &slices[..1],
                _ => &slices[..],
            };
            let mut n = poll_fn(|cx| self.poll_write(cx, bufs)).await?;
            let from_a = n.min(a.len());
            a = &a[from_a..];
            n -= from_a;
            b = &b[n..];
        }
        Ok(())
    }
}

/// The body of a request, read off the connection as it is polled.
pub struct RequestBody {
    conn: Rc<Shared>,
    request: u64,
}

impl RequestBody {
    fn current(&self) -> bool {
        self.conn.request.get() == self.request
    }

    pub fn is_end_stream(&self) -> bool {
        !self.current() || matches!(*self.conn.body.borrow(), Decoder::Done | Decoder::Length(0))
    }

    pub fn size_hint(&self) -> SizeHint {
        match *self.conn.body.borrow() {
            Decoder::Length(n) if self.current() => SizeHint::with_exact(n),
            Decoder::Chunked(_) if self.current() => SizeHint::default(),
            _ => SizeHint::with_exact(0),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.current() {
            return Poll::Ready(None);
        }
        let conn = &*self.conn;
        // The client waits for this before it sends the body.
        while conn.continue_left.get() > 0 {
            let left = conn.continue_left.get();
            let rest = [IoSlice::new(&CONTINUE[CONTINUE.len() - left..])];
            match ready!(conn.poll_write(cx, &rest)) {
                Ok(n) => conn.continue_left.set(left - n),
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e).into()))),
            }
        }
        loop {
            let decoded = {
                let mut body = conn.body.borrow_mut();
                let decoded = body.decode(&mut conn.read.borrow_mut());
                if *body == Decoder::Length(0) {
                    *body = Decoder::Done;
                }
                decoded
            };
            match decoded {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
            let want = match *conn.body.borrow() {
                Decoder::Length(n) => n as usize,
                _ => 0,
            };
            match ready!(conn.poll_fill(cx, want)) {
                Ok(0) => return Poll::Ready(Some(Err(Error::Closed.into()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(Error::Io(e).into()))),
            }
        }
    }
}

/// Why a request head was not taken: what the client is told, or nothing
/// (it closed, or the connection failed).
#[derive(Debug)]
enum Refusal {
    Answer(StatusCode, &'static str),
    /// An accepted HTTP/1.0 request without Host or a default for it:
    /// Envoy answers in HTTP/1.0, with no body.
    NoHost10,
    Quiet,
}

const BAD_REQUEST: Refusal = Refusal::Answer(StatusCode::BAD_REQUEST, "Bad Request");
const TOO_LARGE: Refusal = Refusal::Answer(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "Request Header Fields Too Large",
);
/// An HTTP/1.0 request where they are not accepted (Envoy's answer).
const UPGRADE_REQUIRED: Refusal = Refusal::Answer(StatusCode::UPGRADE_REQUIRED, "Upgrade Required");

/// A request head, parsed.
struct Head {
    request: Request<()>,
    body: Decoder,
    keep_alive: bool,
    expect_continue: bool,
}

/// Serves HTTP/1.1 on `io` (whose first bytes may already be in `read`)
/// until the client closes, a request fails, or `shutdown` resolves, which
/// lets the request in flight finish first. `handler` answers requests,
/// or fails one to close the connection (a reset, as far as HTTP/1.1 has
/// one).
pub async fn serve<H, F>(
    io: TcpStream,
    read: BytesMut,
    settings: &Settings,
    mut handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: FnMut(Request<Body>) -> F,
    F: Future<Output = Result<Response<ResponseBody>, BoxError>>,
{
    let conn = Rc::new(Shared {
        io: RefCell::new(io),
        read: RefCell::new(read),
        body: RefCell::new(Decoder::Done),
        request: Cell::new(0),
        continue_left: Cell::new(0),
        rx_bytes: settings.rx_bytes.clone(),
        tx_bytes: settings.tx_bytes.clone(),
        tunnel_idle_timeout: settings.tunnel_idle_timeout,
    });
    let mut shutdown = pin!(shutdown);
    let mut out = Vec::new();
    loop {
        let head = tokio::select! {
            biased;
            head = read_head(&conn, settings) => head,
            () = shutdown.as_mut() => return,
        };
        let head = match head {
            Ok(head) => head,
            Err(Refusal::Answer(status, text)) => {
                refuse(&conn, &mut out, settings, status, text, Version::HTTP_11).await;
                return;
            }
            Err(Refusal::NoHost10) => {
                let status = StatusCode::BAD_REQUEST;
                refuse(&conn, &mut out, settings, status, "", Version::HTTP_10).await;
                return;
            }
            Err(Refusal::Quiet) => return,
        };
        let request = conn.request.get() + 1;
        conn.request.set(request);
        let has_body = !matches!(head.body, Decoder::Length(0));
        if has_body && head.expect_continue {
            conn.continue_left.set(CONTINUE.len());
        }
        *conn.body.borrow_mut() = head.body;
        let head_request = head.request.method() == Method::HEAD;
        let version = head.request.version();
        let req = head.request.map(|()| match has_body {
            true => Body::Downstream(RequestBody {
                conn: conn.clone(),
                request,
            }),
            false => Body::full(Bytes::new()),
        });
        let answer = if has_body {
            handler(req).await
        } else {
            // Nothing more is due from the client: if it closes, the
            // request is abandoned (and its upstream request with it).
            tokio::select! {
                biased;
                r = handler(req) => r,
                () = client_closed(&conn, settings.max_head) => return,
            }
        };
        let Ok(resp) = answer else {
            return;
        };
        let draining = poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await;
        let last = settings
            .max_requests
            .is_some_and(|max| request >= u64::from(max));
        if last && head.keep_alive {
            settings.max_requests_reached.inc();
        }
        // An answer before the whole request is in (a local reply, an
        // upstream's early answer) ends the connection, and says so, as
        // Envoy does: wasp will not read a body nobody wants. (Envoy also
        // ends it when the rest of the body is already here; wasp skips
        // that and keeps the connection.)
        let complete = body_arrived(&conn);
        if !complete {
            settings.response_before_rq_complete.inc();
        }
        let keep_alive = head.keep_alive && !draining && !last && complete;
        // The response goes out with the others of this pass.
        super::write_turn().await;
        let written = respond(&conn, &mut out, resp, head_request, version, keep_alive).await;
        conn.continue_left.set(0);
        // The connection is good for another request only if this one's
        // body was all read (or is all here to be skipped).
        let body_done = skip_buffered_body(&conn);
        if written.is_ok() && !body_done {
            if let Some(timeout) = settings.delayed_close_timeout {
                // Boxed: rare, and inline its buffer would widen every
                // connection's task (it costs idle connections ~1.5 KiB).
                Box::pin(linger(&conn, timeout)).await;
            }
        }
        if !matches!(written, Ok(true)) || !body_done {
            return;
        }
    }
}

/// Closes a connection the client may still be sending on without losing
/// the answer just written: closing a socket with unread bytes sends a
/// reset, and a client that gets it before reading the answer never sees
/// the answer. So the write side is shut first, and what comes in is read
/// and dropped until the client closes too or `timeout` passes (Envoy's
/// delayed close).
async fn linger(conn: &Shared, timeout: Duration) {
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    // The socket is borrowed only within a poll: a request body still held
    // elsewhere may poll it in between.
    let shut = poll_fn(|cx| Pin::new(&mut *conn.io.borrow_mut()).poll_shutdown(cx)).await;
    if shut.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = poll_fn(|cx| {
        loop {
            let mut buf = ReadBuf::new(&mut sink);
            match ready!(Pin::new(&mut *conn.io.borrow_mut()).poll_read(cx, &mut buf)) {
                Ok(()) if !buf.filled().is_empty() => {}
                _ => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(timeout, drain).await;
}

/// Reads and parses the next request head: `Quiet` if the client closes
/// before sending one.
async fn read_head(conn: &Shared, settings: &Settings) -> Result<Head, Refusal> {
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            {
                let mut read = conn.read.borrow_mut();
                if !read.is_empty() {
                    if let Some(head) = parse_head(&mut read, settings)? {
                        return Poll::Ready(Ok(head));
                    }
                    // A head is coming in pieces: it has so long to finish.
                    if let Some(timeout) = settings.headers_timeout {
                        let d =
                            deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        if d.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Err(Refusal::Answer(
                                StatusCode::REQUEST_TIMEOUT,
                                "request header timeout",
                            )));
                        }
                    }
                }
            }
            match ready!(conn.poll_fill(cx, 0)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(Refusal::Quiet)),
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Parses a complete request head off the front of `read`, if there is
/// one. The URI and header values share the head's bytes.
fn parse_head(read: &mut BytesMut, settings: &Settings) -> Result<Option<Head>, Refusal> {
    let max_head = settings.max_head;
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, read, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(TOO_LARGE),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if read.len() > max_head => return Err(TOO_LARGE),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
        Err(_) => return Err(BAD_REQUEST),
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Err(BAD_REQUEST);
    };
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| BAD_REQUEST)?;
    let version = match parsed.version {
        Some(0) if !settings.accept_http_10 => return Err(UPGRADE_REQUIRED),
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let path_at = path.as_ptr() as usize - read.as_ptr() as usize;
    let path_span = path_at..path_at + path.len();
    let mut fields_at = [[0; 4]; MAX_HEADERS];
    let count = spans(read, parsed.headers, &mut fields_at);
    let head = read.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span)).map_err(|_| BAD_REQUEST)?;
    let (mut headers, fields) = header_map(&head, &fields_at[..count]).map_err(|_| BAD_REQUEST)?;
    // After an upgrade (or a CONNECT) the connection is the tunnel's;
    // refused, it is closed, as Envoy does.
    let upgrade = super::upgrade(&head, &fields_at[..count], &fields);
    let keep_alive = fields.persistent(version) && upgrade.is_none() && method != Method::CONNECT;
    let body = match (fields.chunked, fields.content_length) {
        // A length and a coding together could be read two ways: refused,
        // as Envoy does.
        (Some(_), Some(_)) => return Err(BAD_REQUEST),
        (Some(true), None) => Decoder::Chunked(Chunk::Size),
        (Some(false), None) => {
            return Err(Refusal::Answer(
                StatusCode::NOT_IMPLEMENTED,
                "Not Implemented",
            ));
        }
        (None, Some(length)) => Decoder::Length(length.map_err(|_| BAD_REQUEST)?),
        (None, None) => Decoder::Length(0),
    };
    // A CONNECT's bytes after its head are the tunnel's: a body is
    // refused, as Envoy's codec does.
    if method == Method::CONNECT && !matches!(body, Decoder::Length(0)) {
        return Err(BAD_REQUEST);
    }
    if !fields.host {
        match version {
            Version::HTTP_11 => return Err(BAD_REQUEST),
            _ => match &settings.default_host_for_http_10 {
                Some(host) => {
                    headers.insert(HOST, host.clone());
                }
                None => return Err(Refusal::NoHost10),
            },
        }
    }
    let expect_continue = fields.expect_continue;
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if let Some(upgrade) = upgrade {
        request.extensions_mut().insert(upgrade);
    }
    Ok(Some(Head {
        request,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// Resolves when the client closes the connection. Whatever it sends
/// before (pipelined requests) is kept for later, up to a head's worth.
async fn client_closed(conn: &Shared, max_head: usize) {
    poll_fn(|cx| {
        loop {
            if conn.read.borrow().len() > max_head {
                return Poll::Pending;
            }
            match ready!(conn.poll_fill(cx, 0)) {
                Ok(0) | Err(_) => return Poll::Ready(()),
                Ok(_) => {}
            }
        }
    })
    .await
}

/// Whether all of the request's body has come in: read, or waiting in
/// the buffer (looked at, not taken: a body still held by an upstream
/// request may yet read it).
fn body_arrived(conn: &Shared) -> bool {
    let body = conn.body.borrow();
    let read = conn.read.borrow();
    match &*body {
        Decoder::Done | Decoder::Length(0) => true,
        Decoder::Length(n) => read.len() as u64 >= *n,
        Decoder::Eof => false,
        // Rare enough (a chunked body, answered before it was read) for a
        // copy of the buffer to be the simple way to look ahead.
        Decoder::Chunked(_) => {
            let (mut body, mut read) = (body.clone(), read.clone());
            loop {
                match body.decode(&mut read) {
                    Ok(Decoded::Data(_)) => {}
                    Ok(Decoded::Trailers(_) | Decoded::End) => return true,
                    Ok(Decoded::NeedMore) | Err(_) => return false,
                }
            }
        }
    }
}

/// Skips what is left of the request body if all of it is already read;
/// whether the body is done.
fn skip_buffered_body(conn: &Shared) -> bool {
    let mut body = conn.body.borrow_mut();
    let mut read = conn.read.borrow_mut();
    loop {
        match body.decode(&mut read) {
            Ok(Decoded::Data(_)) => {}
            Ok(Decoded::Trailers(_) | Decoded::End) => {
                *body = Decoder::Done;
                return true;
            }
            Ok(Decoded::NeedMore) | Err(_) => return false,
        }
    }
}

/// How a response body is delimited on the wire.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// By closing the connection (an HTTP/1.0 client, no length known).
    Close,
}

/// Writes a response; whether the connection can take another request.
async fn respond(
    conn: &Shared,
    out: &mut Vec<u8>,
    resp: Response<ResponseBody>,
    head_request: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (mut parts, mut body) = resp.into_parts();
    // (Most responses carry no extension: the check is one branch.) An
    // upstream's 2xx to a CONNECT carries the connection to tunnel to.
    let switched = parts.status == StatusCode::SWITCHING_PROTOCOLS
        || (!parts.extensions.is_empty()
            && parts.status.is_success()
            && parts
                .extensions
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some());
    if switched {
        // Boxed: rare, and it would widen every response's future.
        return Box::pin(tunnel(conn, out, parts, body)).await;
    }
    let tunnel = match parts.extensions.is_empty() {
        true => None,
        false => parts.extensions.remove::<ConnectTunnel>(),
    };
    if let Some(upstream) = tunnel {
        return Box::pin(connected(conn, out, parts, upstream)).await;
    }
    let status = parts.status;
    out.clear();
    // An HTTP/1.0 client is answered in HTTP/1.0, as Envoy does.
    out.extend_from_slice(match version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass over the fields, noting those that decide the framing
    // (cheaper than a hashed lookup for each).
    let (mut declared, mut has_date) = (None, false);
    for (name, value) in &parts.headers {
        if is_connection_field(name) {
            keep_alive &= name != CONNECTION || !lists(value, b"close");
            continue;
        }
        if name == CONTENT_LENGTH {
            declared = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
        }
        has_date |= name == DATE;
        encode_field(out, name, value);
    }
    if !has_date {
        write_date(out);
    }
    super::recycle(parts.headers);
    let bodyless = matches!(status.as_u16(), 100..=199 | 204 | 304);
    let framing = match declared {
        _ if bodyless => Framing::None,
        Some(n) => Framing::Length(n),
        None if body.is_end_stream() => Framing::Length(0),
        None => match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None if version == Version::HTTP_10 => Framing::Close,
            None => Framing::Chunked,
        },
    };
    if matches!(framing, Framing::Close) {
        keep_alive = false;
    }
    match framing {
        Framing::Length(n) if declared.is_none() => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // What is left to send of a body of known length.
    let mut left = match framing {
        Framing::None => Some(0),
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::Close => None,
    };
    if head_request || left == Some(0) {
        conn.write_all(out, &[]).await?;
        return Ok(keep_alive);
    }
    let chunked = matches!(framing, Framing::Chunked);
    loop {
        // A frame that is ready goes out with what is gathered; while the
        // body has none ready, what is gathered is written.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                conn.write_all(out, &[]).await?;
                out.clear();
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            // Only closing tells an HTTP/1.1 client the body failed.
            Some(Err(_)) => return Ok(false),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Ok(trailers), true) = (frame.into_trailers(), chunked) {
                    encode_last_chunk(out, Some(&trailers));
                    return conn.write_all(out, &[]).await.map(|()| keep_alive);
                }
                continue;
            }
        };
        // More than the declared length is not sent.
        let data = match left.as_mut() {
            Some(left) => {
                let data =
                    data.slice(..data.len().min(usize::try_from(*left).unwrap_or(usize::MAX)));
                *left -= data.len() as u64;
                data
            }
            None => data,
        };
        if data.is_empty() {
        } else if chunked {
            encode_chunk(out, &data);
        } else if data.len() < GATHER {
            out.extend_from_slice(&data);
        } else {
            conn.write_all(out, &data).await?;
            out.clear();
        }
        if out.len() >= GATHER {
            conn.write_all(out, &[]).await?;
            out.clear();
        }
        if left == Some(0) {
            break;
        }
    }
    if chunked {
        encode_last_chunk(out, None);
    }
    conn.write_all(out, &[]).await?;
    // A body shorter than its length leaves the client waiting for more.
    Ok(keep_alive && matches!(left, None | Some(0)))
}

/// Answers an upgrade the upstream took (101), or a CONNECT it took (2xx,
/// without framing fields), then carries bytes both ways between the
/// client and the upstream's connection until both have closed their
/// side, or nothing has gone either way for `stream_idle_timeout` (as
/// Envoy closes an idle upgraded stream). The connection takes no other
/// request after.
// The connection is the tunnel's alone from here: the serving loop waits
// on this call, and an upgrade request has no body reading it.
#[allow(clippy::await_holding_refcell_ref)]
async fn tunnel(
    conn: &Shared,
    out: &mut Vec<u8>,
    mut parts: http::response::Parts,
    body: ResponseBody,
) -> io::Result<bool> {
    use tokio::io::AsyncWriteExt;
    let Some(upgraded) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        // A 101 from anywhere but an upstream that switched: nothing to
        // tunnel to.
        return Ok(false);
    };
    out.clear();
    let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if !is_connection_field(name) && (upgrade || name != CONTENT_LENGTH) {
            encode_field(out, name, value);
        }
    }
    if upgrade {
        out.extend_from_slice(b"connection: upgrade\r\n");
        if let Some(protocol) = parts.headers.get(UPGRADE) {
            encode_field(out, &UPGRADE, protocol);
        }
    }
    out.extend_from_slice(b"\r\n");
    conn.write_all(out, &[]).await?;
    let mut upstream = TokioIo::new(upgraded.await.map_err(io::Error::other)?);
    // What the client sent after its request head goes first.
    let early = conn.read.borrow_mut().split();
    upstream.write_all(&early).await?;
    let mut io = conn.io.borrow_mut();
    let counted = Some((&conn.rx_bytes, &conn.tx_bytes));
    carry(&mut *io, upstream, conn.tunnel_idle_timeout, counted).await?;
    // The upstream connection's stats and the request in flight end here.
    drop(body);
    Ok(false)
}

/// Answers a CONNECT that wasp ends itself (200, with no framing fields,
/// as Envoy answers), then carries bytes both ways between the client and
/// the TCP connection to the cluster, as [`tunnel`] does.
#[allow(clippy::await_holding_refcell_ref)]
async fn connected(
    conn: &Shared,
    out: &mut Vec<u8>,
    parts: http::response::Parts,
    upstream: ConnectTunnel,
) -> io::Result<bool> {
    use tokio::io::AsyncWriteExt;
    let Some(mut upstream) = upstream.take() else {
        return Ok(false);
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if !is_connection_field(name) && name != CONTENT_LENGTH {
            has_date |= name == DATE;
            encode_field(out, name, value);
        }
    }
    if !has_date {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
    conn.write_all(out, &[]).await?;
    // What the client sent after its request head goes first.
    let early = conn.read.borrow_mut().split();
    upstream.write_all(&early).await?;
    let mut io = conn.io.borrow_mut();
    let counted = Some((&conn.rx_bytes, &conn.tx_bytes));
    carry(&mut *io, upstream, conn.tunnel_idle_timeout, counted).await?;
    Ok(false)
}

/// Answers a request that was not taken, and closes.
async fn refuse(
    conn: &Shared,
    out: &mut Vec<u8>,
    settings: &Settings,
    status: StatusCode,
    text: &'static str,
    version: Version,
) {
    let mut resp = Response::new(ResponseBody::from(Body::full(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(text.len()));
    if !text.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    headers.insert(SERVER, settings.server_name.clone());
    let _ = respond(conn, out, resp, false, version, false).await;
}

/// Appends the `date` header (the worker's cached text).
fn write_date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&crate::clock::date());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(accept_http_10: bool, default_host: Option<&'static str>) -> Settings {
        Settings {
            max_head: 8 * 1024,
            headers_timeout: None,
            server_name: HeaderValue::from_static("wasp"),
            accept_http_10,
            default_host_for_http_10: default_host.map(HeaderValue::from_static),
            max_requests: None,
            tunnel_idle_timeout: None,
            rx_bytes: Counter::default(),
            tx_bytes: Counter::default(),
            max_requests_reached: Counter::default(),
            delayed_close_timeout: None,
            response_before_rq_complete: Counter::default(),
        }
    }

    fn parse_with(wire: &[u8], settings: &Settings) -> Result<Option<Head>, Refusal> {
        parse_head(&mut BytesMut::from(wire), settings)
    }

    fn parse(wire: &[u8]) -> Result<Option<Head>, Refusal> {
        parse_with(wire, &settings(true, None))
    }

    fn refused(wire: &[u8]) -> Option<u16> {
        match parse(wire) {
            Err(Refusal::Answer(status, _)) => Some(status.as_u16()),
            Err(Refusal::NoHost10) => Some(400),
            _ => None,
        }
    }

    #[test]
    fn http_10_is_refused_unless_accepted_and_given_a_host() {
        let wire = b"GET / HTTP/1.0\r\n\r\n";
        assert!(matches!(
            parse_with(wire, &settings(false, None)),
            Err(Refusal::Answer(StatusCode::UPGRADE_REQUIRED, _))
        ));
        assert!(matches!(
            parse_with(wire, &settings(true, None)),
            Err(Refusal::NoHost10)
        ));
        let h = parse_with(wire, &settings(true, Some("default.example")))
            .unwrap()
            .unwrap();
        assert_eq!(h.request.version(), Version::HTTP_10);
        assert_eq!(h.request.headers()[HOST], "default.example");
        let h = parse_with(
            b"GET / HTTP/1.0\r\nHost: own.example\r\n\r\n",
            &settings(true, Some("default.example")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.request.headers()[HOST], "own.example");
    }

    #[test]
    fn request_heads_give_framing_and_persistence() {
        let h = parse(b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.method(), Method::POST);
        assert_eq!(h.request.uri(), "/a?b=1");
        assert_eq!(h.request.headers()["host"], "x");
        assert_eq!((h.body, h.keep_alive), (Decoder::Length(3), true));
        let h = parse(b"PUT / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, Decoder::Chunked(Chunk::Size));
        let h = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.keep_alive), (Decoder::Length(0), false));
        let h = parse(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(h.expect_continue && !h.request.headers().contains_key(http::header::EXPECT));
        // Connection fields are noted, not kept: none is forwarded.
        let h = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close, x-hop\r\nKeep-Alive: 5\r\n\
              Transfer-Encoding: chunked\r\nTE: trailers\r\nUpgrade: h2c\r\n\
              Proxy-Connection: close\r\nX-Hop: kept\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.body, h.keep_alive),
            (Decoder::Chunked(Chunk::Size), false)
        );
        let names: Vec<_> = h.request.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["host", "x-hop"]);
        assert!(
            h.request
                .extensions()
                .get::<super::super::Upgrade>()
                .is_none(),
            "h2c is no upgrade"
        );
        // An upgrade needs both fields; it ends the connection's requests.
        let h = parse(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        let upgrade = h.request.extensions().get::<super::super::Upgrade>();
        assert_eq!(upgrade.map(|u| u.0.as_bytes()), Some(&b"websocket"[..]));
        assert!(!h.keep_alive && h.request.headers().len() == 1);
        let h = parse(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(
            h.request
                .extensions()
                .get::<super::super::Upgrade>()
                .is_none()
                && h.keep_alive
        );
        assert!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn malformed_heads_are_refused_as_envoy_does() {
        assert_eq!(refused(b"GARBAGE\r\n\r\n"), Some(400));
        assert_eq!(refused(b"GET / HTTP/1.1\r\n\r\n"), Some(400), "no Host");
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: abc\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: gzip\r\n\r\n"),
            Some(501)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(refused(big.as_bytes()), Some(431));
        assert_eq!(refused(&big.as_bytes()[..8500]), Some(431), "still coming");
        let many: String = (0..101).map(|i| format!("x-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(refused(many.as_bytes()), Some(431));
    }
}
