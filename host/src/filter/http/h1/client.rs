//! HTTP/1.1 to upstreams, driven by the task of the stream that sends the
//! request.
//!
//! hyper's client runs each connection as a task of its own and passes
//! requests and responses to it through channels: per request two task
//! switches and a channel round trip on top of the work itself. Here a
//! [`Conn`] is plain data owned by whoever uses it: its [`EndpointPool`]'s
//! idle stack while it waits, the request's future until the response
//! head is in, then the response body ([`UpstreamBody`]), which puts it
//! back on the stack the moment the response is complete.
//!
//! It speaks what the router sends: origin-form requests whose hop-by-hop
//! headers are gone, framed by content-length or chunked. Responses are
//! framed as RFC 9112 §6.3 says; 1xx heads are skipped (no `Upgrade` is
//! ever sent, so there is no 101).

use std::cell::{Cell, RefCell};
use std::io::{self, Write as _};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::super::body::{Body, BoxError};
use super::super::pool::{InFlight, Opened};
use super::{
    Chunk, Decoded, Decoder, Error, MAX_HEADERS, encode_chunk, encode_field, encode_last_chunk,
    header_map, is_connection_field, spans,
};
use crate::clock;
use crate::cluster::UpstreamHttp;
use crate::spare::Spares;

/// Most bytes of a response head or trailer block (Envoy's limit).
const MAX_HEAD: usize = 60 * 1024;
/// Request body bytes taken from the client before they are written.
const MAX_PENDING_WRITE: usize = 64 * 1024;
/// Idle connections kept per endpoint; more are closed. As many as Envoy's
/// default circuit breaker lets a cluster have: with fewer, a load of more
/// concurrent requests closes and reopens connections (a limit of 64 at
/// wrk -c 200 reconnected for ~3% of requests, and p99 went from ~11 ms to
/// ~14 ms).
const MAX_IDLE: usize = 1024;

/// An open connection to an endpoint, between requests.
pub struct Conn {
    io: TcpStream,
    /// Bytes read and not yet taken: never more than one response's.
    read: BytesMut,
    opened: Opened,
    /// The pool it belongs to, told when it closes (weak: the pool's idle
    /// stack holds connections).
    home: Weak<EndpointPool>,
    /// Requests it has carried.
    requests: u32,
}

impl Conn {
    /// Boxed: it moves between the idle stack, requests and response
    /// bodies, and a box moves as one pointer.
    pub fn new(io: TcpStream, opened: Opened, home: &Rc<EndpointPool>) -> Box<Self> {
        home.open.set(home.open.get() + 1);
        Box::new(Conn {
            io,
            read: BytesMut::new(),
            opened,
            home: Rc::downgrade(home),
            requests: 0,
        })
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it, nor sent anything unasked. A syscall only when the
    /// reactor has seen it readable.
    fn is_usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let read = ready!(super::poll_fill(&mut self.io, &mut self.read, want, cx))?;
        self.opened.received(read);
        Poll::Ready(Ok(read))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(home) = self.home.upgrade() {
            home.open.set(home.open.get() - 1);
            home.freed();
        }
    }
}

/// One endpoint's connections on one worker: the idle ones, most recently
/// used last, with when each was checked in (by the worker's coarse clock,
/// to within half a second); how many are open; and the requests waiting
/// for one (when the cluster's circuit breaker allows no more connections).
pub struct EndpointPool {
    conns: RefCell<Vec<(Box<Conn>, Instant)>>,
    /// The cluster's `idle_timeout` (an upstream that closes sooner is
    /// noticed when the connection is checked out, or its request is
    /// sent again on another).
    idle_timeout: Duration,
    /// Whether a task is closing idle connections as they time out
    /// ([`sweep`]): one per pool while it has idle connections.
    sweeping: Cell<bool>,
    /// The cluster's `max_requests_per_connection`.
    max_requests: Option<u32>,
    open: Cell<usize>,
    waiting: Cell<usize>,
    /// Signalled when a connection is checked in or closes while
    /// requests wait; only they pay for it.
    freed: tokio::sync::Notify,
}

impl EndpointPool {
    pub fn new(settings: &UpstreamHttp) -> Self {
        EndpointPool {
            conns: RefCell::default(),
            idle_timeout: settings.idle_timeout,
            sweeping: Cell::new(false),
            max_requests: settings.max_requests_per_connection,
            open: Cell::default(),
            waiting: Cell::default(),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// How many connections of this pool are open, idle or busy.
    pub fn open(&self) -> usize {
        self.open.get()
    }

    /// Waits until a connection of this pool is checked in or closes.
    pub async fn wait_freed(&self) {
        struct Waiting<'a>(&'a Cell<usize>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.waiting.set(self.waiting.get() + 1);
        let _waiting = Waiting(&self.waiting);
        self.freed.notified().await;
    }

    fn freed(&self) {
        if self.waiting.get() > 0 {
            self.freed.notify_one();
        }
    }

    /// The most recently used connection that is still good.
    pub fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let (conn, since) = self.conns.borrow_mut().pop()?;
            if clock::coarse_now().saturating_duration_since(since) > self.idle_timeout {
                conn.opened.idled();
            } else if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    fn checkin(self: &Rc<Self>, conn: Box<Conn>) {
        if self.max_requests.is_some_and(|max| conn.requests >= max) {
            conn.opened.retired();
            return;
        }
        let now = clock::coarse_now();
        self.close_idle(now);
        let mut idle = self.conns.borrow_mut();
        if idle.len() < MAX_IDLE {
            idle.push((conn, now));
        }
        drop(idle);
        if self.idle_timeout != Duration::MAX && !self.sweeping.replace(true) {
            tokio::task::spawn_local(sweep(Rc::downgrade(self)));
        }
        self.freed();
    }

    /// Closes the connections that have idled `idle_timeout` by `now`
    /// (the oldest are first).
    fn close_idle(&self, now: Instant) {
        if let Some(cutoff) = now.checked_sub(self.idle_timeout) {
            let mut idle = self.conns.borrow_mut();
            let stale = idle.partition_point(|(_, since)| *since < cutoff);
            idle.drain(..stale).for_each(|(c, _)| c.opened.idled());
        }
    }
}

/// Closes a pool's idle connections as each reaches its `idle_timeout`,
/// as Envoy's timers do, so that an upstream is not held open by a pool
/// no request comes to. Sleeps until the oldest one's time; ends when
/// none is idle (the next check-in starts another) or the pool is gone.
async fn sweep(pool: Weak<EndpointPool>) {
    loop {
        let due = {
            let Some(pool) = pool.upgrade() else { return };
            let oldest = pool.conns.borrow().first().map(|(_, since)| *since);
            match oldest.and_then(|since| since.checked_add(pool.idle_timeout)) {
                Some(due) => due,
                None => return pool.sweeping.set(false),
            }
        };
        tokio::time::sleep_until(due.into()).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.close_idle(Instant::now());
    }
}

/// A request on its way out: its encoded head, then its body.
pub struct Upload {
    out: Vec<u8>,
    written: usize,
    body: Option<Body>,
    chunked: bool,
    /// Idempotent and without a body: see [`Failed`].
    replayable: bool,
    head_request: bool,
}

impl Upload {
    /// Encodes `req`'s head and takes its body.
    pub fn new(req: &mut Request<Body>) -> Self {
        let body = std::mem::replace(req.body_mut(), Body::empty());
        let (method, headers) = (req.method(), req.headers());
        let mut out = SPARE_HEADS
            .with_borrow_mut(Spares::take)
            .unwrap_or_default();
        out.reserve(512);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_length = false;
        for (name, value) in headers {
            if is_connection_field(name) {
                continue;
            }
            has_length |= name == CONTENT_LENGTH;
            encode_field(&mut out, name, value);
        }
        let mut chunked = false;
        if !has_length {
            match body.size_hint().exact() {
                Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {}
                Some(n) => {
                    let _ = write!(out, "content-length: {n}\r\n");
                }
                None => {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        let empty = body.is_end_stream();
        Upload {
            out,
            written: 0,
            body: (!empty).then_some(body),
            chunked,
            replayable: empty && method.is_idempotent(),
            head_request: method == Method::HEAD,
        }
    }

    /// Writes the request out, taking body frames as they come. Ready once
    /// all of it is written.
    fn poll_send(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let mut body_pending = false;
            while let Some(body) = self.body.as_mut() {
                if self.out.len() - self.written >= MAX_PENDING_WRITE {
                    break;
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        self.start_body();
                        self.encode_frame(frame);
                    }
                    Poll::Ready(None) => {
                        self.start_body();
                        if self.chunked {
                            encode_last_chunk(&mut self.out, None);
                        }
                        self.body = None;
                    }
                }
            }
            while self.written < self.out.len() {
                match ready!(Pin::new(&mut conn.io).poll_write(cx, &self.out[self.written..])) {
                    Ok(0) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                    }
                    Ok(n) => {
                        self.written += n;
                        conn.opened.sent(n);
                    }
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
            }
            if self.body.is_none() {
                return Poll::Ready(Ok(()));
            }
            if body_pending {
                return Poll::Pending;
            }
        }
    }

    /// The head stays in the buffer until the first body frame (a
    /// bodyless request may be sent again); from then on written bytes
    /// are dropped.
    fn start_body(&mut self) {
        self.out.drain(..self.written);
        self.written = 0;
    }

    fn encode_frame(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if self.chunked => encode_chunk(&mut self.out, &data),
            Ok(data) => self.out.extend_from_slice(&data),
            Err(frame) => {
                // Trailers end the body; HTTP/1.1 has them only in chunks.
                if let (Ok(trailers), true) = (frame.into_trailers(), self.chunked) {
                    encode_last_chunk(&mut self.out, Some(&trailers));
                    self.body = None;
                }
            }
        }
    }
}

thread_local! {
    /// Request head buffers to reuse: one is in use per request in flight.
    static SPARE_HEADS: RefCell<Spares<Vec<u8>>> = const { RefCell::new(Spares::new(1024)) };
}

pub(super) fn trim_spares() {
    SPARE_HEADS.with_borrow_mut(Spares::trim);
}

impl Drop for Upload {
    fn drop(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        if (1..=64 * 1024).contains(&out.capacity()) {
            out.clear();
            SPARE_HEADS.with_borrow_mut(|spare| spare.keep(out));
        }
    }
}

/// Why an exchange gave no response, and the request back if it may be
/// sent again on another connection: the connection failed or closed
/// before any of a response came (a kept-alive connection the upstream
/// closed as the request went out), and the request is idempotent and
/// has no body, so the upstream cannot have acted on it halfway.
pub struct Failed {
    pub error: Error,
    pub retry: Option<Upload>,
}

/// Sends `upload` over `conn` and waits for the response head; the
/// response's body reads the rest from the connection and gives it back
/// to `home` when it is complete.
pub async fn exchange(
    mut conn: Box<Conn>,
    mut upload: Upload,
    home: &Rc<EndpointPool>,
) -> Result<Response<Body>, Failed> {
    conn.requests += 1;
    // The request goes out with the others of this pass.
    super::write_turn().await;
    let mut send_error = None;
    let head = std::future::poll_fn(|cx| {
        if send_error.is_none() {
            match upload.poll_send(&mut conn, cx) {
                Poll::Ready(Ok(())) => {}
                // The client's body failed: nothing more can be sent.
                Poll::Ready(Err(e @ Error::RequestBody(_))) => return Poll::Ready(Err(e)),
                // Keep reading: the upstream may have answered and closed.
                Poll::Ready(Err(e)) => send_error = Some(e),
                Poll::Pending => {}
            }
        }
        poll_head(&mut conn, cx, upload.head_request)
    })
    .await;
    match head {
        Ok(head) => {
            let done = upload.body.is_none() && upload.written == upload.out.len();
            let mut body = UpstreamBody {
                conn: Some(conn),
                request: None,
                upload: (!done && send_error.is_none()).then(|| Box::new(upload)),
                decoder: head.decoder,
                keep_alive: head.keep_alive && send_error.is_none(),
                home: home.clone(),
            };
            if matches!(body.decoder, Decoder::Length(0)) {
                body.finish();
            }
            let mut resp = Response::new(Body::Upstream(body));
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            Ok(resp)
        }
        Err(error) => {
            let error = match (error, send_error) {
                (Error::Closed, Some(e)) => e,
                (e, _) => e,
            };
            let replay = matches!(error, Error::Closed | Error::Io(_))
                && upload.replayable
                && conn.read.is_empty();
            let retry = replay.then(|| {
                upload.written = 0;
                upload
            });
            Err(Failed { error, retry })
        }
    }
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    decoder: Decoder,
    keep_alive: bool,
}

fn poll_head(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    head_request: bool,
) -> Poll<Result<Head, Error>> {
    loop {
        if !conn.read.is_empty() {
            match parse_head(&mut conn.read, head_request)? {
                Some(head) if head.status.is_informational() => continue,
                Some(head) => return Poll::Ready(Ok(head)),
                None if conn.read.len() >= MAX_HEAD => {
                    return Poll::Ready(Err(Error::Malformed("response head too large")));
                }
                None => {}
            }
        }
        if ready!(conn.poll_fill(cx, 0))? == 0 {
            return Poll::Ready(Err(Error::Closed));
        }
    }
}

/// Parses a complete response head off the front of `read`, if there is
/// one. Header values share the head's bytes.
fn parse_head(read: &mut BytesMut, head_request: bool) -> Result<Option<Head>, Error> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, read, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Error::Malformed("response head too large"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Malformed("too many headers")),
        Err(_) => return Err(Error::Malformed("invalid response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Error::Malformed("invalid status"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut fields_at = [[0; 4]; MAX_HEADERS];
    let count = spans(read, parsed.headers, &mut fields_at);
    let head = read.split_to(len).freeze();
    let (mut headers, fields) = header_map(&head, &fields_at[..count])?;
    let persistent = fields.persistent(version);
    let decoder = if head_request || matches!(status.as_u16(), 100..=199 | 204 | 304) {
        Decoder::Length(0)
    } else if let Some(chunked) = fields.chunked {
        // A transfer coding overrides any length (RFC 9112 §6.3).
        headers.remove(CONTENT_LENGTH);
        if chunked {
            Decoder::Chunked(Chunk::Size)
        } else {
            Decoder::Eof
        }
    } else if let Some(length) = fields.content_length {
        Decoder::Length(length?)
    } else {
        Decoder::Eof
    };
    let keep_alive = persistent && !matches!(decoder, Decoder::Eof);
    Ok(Some(Head {
        status,
        version,
        headers,
        decoder,
        keep_alive,
    }))
}

/// A response body read from an HTTP/1.1 upstream. It still holds the
/// request if that was not all sent when the response head came (an
/// upstream streaming its answer while the request streams in).
pub struct UpstreamBody {
    conn: Option<Box<Conn>>,
    /// The request, in flight until the response is complete (when the
    /// connection is given back).
    request: Option<InFlight>,
    /// Boxed: a request body holds a [`Body`], which may be one of these.
    upload: Option<Box<Upload>>,
    decoder: Decoder,
    keep_alive: bool,
    home: Rc<EndpointPool>,
}

impl UpstreamBody {
    /// The response is complete: the connection goes back to its pool if
    /// the request is all sent and the upstream keeps it open; otherwise
    /// it is closed.
    fn finish(&mut self) {
        self.request = None;
        let conn = self.conn.take();
        if let Some(conn) =
            conn.filter(|c| self.keep_alive && self.upload.is_none() && c.read.is_empty())
        {
            self.home.checkin(conn);
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    /// Keeps `request` in flight until the response is complete.
    pub fn hold(&mut self, request: InFlight) {
        if self.conn.is_some() {
            self.request = Some(request);
        }
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(upload) = self.upload.as_mut() {
            match upload.poll_send(conn, cx) {
                Poll::Ready(Ok(())) => self.upload = None,
                // The response goes on; the connection cannot be reused.
                Poll::Ready(Err(_)) => {
                    self.upload = None;
                    self.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let decoded = match self.decoder.decode(&mut conn.read) {
                Ok(d) => d,
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            match decoded {
                Decoded::Data(data) => {
                    if self.decoder == Decoder::Length(0) {
                        self.decoder = Decoder::Done;
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(t) => {
                    self.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Decoded::End => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            let want = match self.decoder {
                Decoder::Length(n) => n as usize,
                _ => 0,
            };
            match ready!(conn.poll_fill(cx, want)) {
                Ok(0) if self.decoder == Decoder::Eof => {
                    self.decoder = Decoder::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Closed.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(e).into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn response_heads_give_framing_and_persistence() {
        let head = |wire: &[u8], head_request| parse_head(&mut BytesMut::from(wire), head_request);
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (h.status, h.decoder, h.keep_alive),
            (StatusCode::OK, Decoder::Length(5), true)
        );
        assert_eq!(h.headers["x-a"], "b");
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.decoder, Decoder::Length(0));
        let h = head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.decoder, Decoder::Chunked(Chunk::Size));
        assert!(!h.headers.contains_key(CONTENT_LENGTH));
        let h = head(b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap().unwrap();
        assert_eq!((h.decoder, h.keep_alive), (Decoder::Eof, false));
        assert!(
            head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
                .unwrap()
                .is_none()
        );
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n", false).is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(head(b"SMTP ready\r\n\r\n", false).is_err());
    }

    #[test]
    fn requests_are_framed_by_their_body() {
        let encode = |method: Method, body: Body, headers: &[(&str, &str)]| {
            let mut req = Request::new(body);
            *req.method_mut() = method;
            *req.uri_mut() = "/p?q=1".parse().unwrap();
            for (n, v) in headers {
                let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
                req.headers_mut().insert(name, v.parse().unwrap());
            }
            let up = Upload::new(&mut req);
            (
                String::from_utf8(up.out.clone()).unwrap(),
                up.chunked,
                up.replayable,
            )
        };
        let (head, chunked, replayable) = encode(Method::GET, Body::full(""), &[("host", "h")]);
        assert_eq!(head, "GET /p?q=1 HTTP/1.1\r\nhost: h\r\n\r\n");
        assert!(!chunked && replayable);
        let (head, _, replayable) = encode(Method::POST, Body::full("abc"), &[]);
        assert_eq!(head, "POST /p?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\n");
        assert!(!replayable);
        let (head, _, _) = encode(Method::POST, Body::full(""), &[]);
        assert!(head.contains("content-length: 0\r\n"));
        let (_, tx_body) = Body::channel();
        let (head, chunked, _) = encode(Method::PUT, tx_body, &[]);
        assert!(
            chunked && head.ends_with("transfer-encoding: chunked\r\n\r\n"),
            "{head}"
        );
        let (head, chunked, _) = encode(Method::PUT, Body::full("abc"), &[("content-length", "3")]);
        assert!(
            !chunked && head.matches("content-length").count() == 1,
            "{head}"
        );
        // Connection fields a filter added are not sent.
        let (head, _, _) = encode(
            Method::GET,
            Body::full(""),
            &[
                ("connection", "close"),
                ("keep-alive", "1"),
                ("te", "trailers"),
                ("x-a", "1"),
            ],
        );
        assert_eq!(head, "GET /p?q=1 HTTP/1.1\r\nx-a: 1\r\n\r\n");
    }
}
