//! HTTP/1.1 on wasp's own terms: the [`client`] side towards upstreams and
//! the [`server`] side towards downstream clients, both driven by the task
//! of the stream they carry, and the framing they share (RFC 9112).
//!
//! Heads are parsed by httparse; header values share the bytes the head
//! was read into, so a head costs its header map and nothing per field.

use std::cell::RefCell;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Version};

use super::body::BoxError;
use crate::spare::Spares;

pub mod client;
pub mod server;

/// Most fields in a head (Envoy's default max_headers_count).
const MAX_HEADERS: usize = 100;
/// Most bytes of a trailer block.
const MAX_TRAILERS: usize = 60 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection before the message was complete")]
    Closed,
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("request body: {0}")]
    RequestBody(BoxError),
}

/// Reads what `io` has into `read`, at least `want` bytes' room (within
/// limits). When there is not that much room (or 1 KiB for a head), it
/// is made only once the socket is readable: while a message is in
/// flight its head may still share the buffer, and reserving then would
/// allocate a new one each time. When there is, the read goes straight
/// ahead (tokio's read checks readiness itself).
///
/// A connection with nothing buffered does not keep its buffer while it
/// waits: the buffer goes to the worker's spares and the next read takes
/// the one given back last, as HAProxy's buffer pools do. An idle
/// keep-alive connection then holds no buffer, and a busy worker reads
/// into a few buffers still in cache rather than one per connection.
pub(in crate::filter::http) fn poll_fill(
    io: &mut tokio::net::TcpStream,
    read: &mut BytesMut,
    want: usize,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<usize>> {
    if read.capacity() == 0 {
        std::task::ready!(io.poll_read_ready(cx))?;
        if let Some(spare) = SPARE_READS.with_borrow_mut(Spares::take) {
            *read = spare;
        }
    }
    if read.capacity() - read.len() < want.clamp(1024, 64 * 1024) {
        std::task::ready!(io.poll_read_ready(cx))?;
        read.reserve(want.clamp(8 * 1024, 64 * 1024));
    }
    let polled = tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *io), cx, read);
    // Pending is decided by the read itself (tokio's readiness can be
    // stale), so this is where the connection is known to be waiting.
    if polled.is_pending() && read.is_empty() {
        lend_read(std::mem::take(read));
    }
    polled
}

/// Lets every task the worker has already woken run before this one
/// writes, by waking itself and going to the back of the run queue once.
///
/// Without it a task reads, routes and writes in one go, so its peer (the
/// client, or the upstream server) is woken for that one message, and
/// often again for the next task's. Deferred, the writes of one pass go out
/// together, as in nginx's and HAProxy's event loops, and each peer wakes
/// for a batch (with 200 clients, half the context switches per request),
/// at the cost of polling the task once more. `tokio::task::yield_now`
/// would wake it only after the next poll of epoll: one more syscall each
/// time the worker has nothing else to run.
pub(super) async fn write_turn() {
    let mut waited = false;
    std::future::poll_fn(|cx| {
        if waited {
            return std::task::Poll::Ready(());
        }
        waited = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// Where a field's name and value lie in its head: offsets, so that the
/// head can be frozen into shared bytes after httparse has borrowed it.
type Span = [u32; 4];

/// The spans of `fields`, parsed out of `head`.
fn spans(head: &[u8], fields: &[httparse::Header<'_>], out: &mut [Span; MAX_HEADERS]) -> usize {
    let base = head.as_ptr() as usize;
    for (span, f) in out.iter_mut().zip(fields) {
        let name = (f.name.as_ptr() as usize - base) as u32;
        let value = (f.value.as_ptr() as usize - base) as u32;
        *span = [
            name,
            name + f.name.len() as u32,
            value,
            value + f.value.len() as u32,
        ];
    }
    fields.len()
}

/// Room left in a parsed head's map for the fields the proxy adds
/// (x-request-id, x-forwarded-proto, x-forwarded-for and
/// x-envoy-expected-rq-timeout-ms on requests; server and
/// x-envoy-upstream-service-time on responses): growing a map reallocates
/// and rehashes it. No more than that: a small request's map then stays
/// small enough for the allocator's per-thread cache.
const ADDED_FIELDS: usize = 4;

thread_local! {
    /// Emptied header maps of finished messages, for the next heads parsed
    /// on this thread. A map is two allocations, one of them over glibc's
    /// per-thread cache size (1 KiB) past six fields, and each proxied
    /// request builds two: reusing them took the allocator's share of a
    /// proxied request from ~1,900 instructions to ~300 (callgrind,
    /// under wrk).
    static SPARE_MAPS: RefCell<Spares<HeaderMap>> = const { RefCell::new(Spares::new(MAX_SPARE_MAPS)) };
}

thread_local! {
    /// Read buffers of connections waiting with nothing buffered (see
    /// [`poll_fill`]).
    static SPARE_READS: RefCell<Spares<BytesMut>> = const { RefCell::new(Spares::new(MAX_SPARE_READS)) };
}

/// At most this many spare read buffers per thread.
const MAX_SPARE_READS: usize = 1024;

/// At most this many spare maps per thread (two per request in flight),
/// each with room for at most [`MAX_SPARE_CAPACITY`] fields.
const MAX_SPARE_MAPS: usize = 2048;
const MAX_SPARE_CAPACITY: usize = 48;

/// Takes a finished message's header map for reuse by the next head parsed.
pub fn recycle(mut headers: HeaderMap) {
    let capacity = headers.capacity();
    if capacity == 0 || capacity > MAX_SPARE_CAPACITY {
        return;
    }
    headers.clear();
    SPARE_MAPS.with_borrow_mut(|spare| spare.keep(headers));
}

/// Puts the read buffer of a connection with nothing buffered in this
/// thread's spares.
pub(in crate::filter::http) fn lend_read(read: BytesMut) {
    SPARE_READS.with_borrow_mut(|spare| spare.keep(read));
}

/// Gives back to the allocator the maps and buffers this thread's
/// requests did not need lately (see [`crate::spare`]).
pub fn trim_spares() {
    SPARE_MAPS.with_borrow_mut(Spares::trim);
    SPARE_READS.with_borrow_mut(Spares::trim);
    client::trim_spares();
}

/// The header map of a frozen head, its values sharing the head's bytes,
/// and what its fields say about framing and persistence.
fn header_map(head: &Bytes, spans: &[Span]) -> Result<(HeaderMap, Fields), Error> {
    let mut fields = Fields::default();
    let mut headers = SPARE_MAPS.with_borrow_mut(Spares::take).unwrap_or_default();
    headers.reserve(spans.len() + ADDED_FIELDS);
    for span in spans {
        let [n0, n1, v0, v1] = span.map(|o| o as usize);
        let name = HeaderName::from_bytes(&head[n0..n1])
            .map_err(|_| Error::Malformed("invalid header name"))?;
        // SAFETY: the contract is not about memory: a `HeaderValue` must
        // hold only bytes its checked constructors accept (tab, 0x20-0x7e,
        // 0x80-0xff), which is exactly the set httparse allows in a field
        // value (its HEADER_VALUE_MAP) and has checked already. Debug
        // builds check again.
        #[allow(unsafe_code)]
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(v0..v1)) };
        if fields.note(&name, &value) {
            headers.append(name, value);
        }
    }
    Ok((headers, fields))
}

/// The protocol a request head asks to switch to, if it does: its
/// `upgrade` field, when `fields` saw a connection field list `upgrade`.
/// Looked for only then (rare), so that every other head's notes stay
/// small. `h2c` is not one: as Envoy does, wasp serves such a request as
/// HTTP/1.1.
fn upgrade(head: &Bytes, spans: &[Span], fields: &Fields) -> Option<Upgrade> {
    if !fields.connection_upgrade {
        return None;
    }
    let [_, _, v0, v1] = spans
        .iter()
        .rfind(|[n0, n1, ..]| head[*n0 as usize..*n1 as usize].eq_ignore_ascii_case(b"upgrade"))?
        .map(|o| o as usize);
    let asked = HeaderValue::from_maybe_shared(head.slice(v0..v1)).ok()?;
    (!asked.as_bytes().eq_ignore_ascii_case(b"h2c")).then_some(Upgrade(asked))
}

/// Whether a field is about the connection it came on rather than the
/// message (RFC 9110 §7.6.1): such fields are never forwarded. A head's
/// map leaves them out (its `Fields` keep what they said), and the
/// encoders skip any a filter added.
pub fn is_connection_field(name: &HeaderName) -> bool {
    const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// What a head's fields say about framing and persistence, noted as the
/// head's map is built (a hashed lookup for each would cost more).
#[derive(Default)]
struct Fields {
    /// Whether the last transfer coding is chunked, if there is one.
    chunked: Option<bool>,
    /// The content-length fields' value, if there are any: all must agree.
    content_length: Option<Result<u64, Error>>,
    /// Which tokens the connection fields list.
    close: bool,
    keep_alive: bool,
    host: bool,
    expect_continue: bool,
    /// Whether a connection field lists `upgrade` (see [`upgrade`]).
    connection_upgrade: bool,
}

/// A request's ask to switch its connection to another protocol
/// (`Connection: upgrade` with `Upgrade: <this>`), carried in its
/// extensions: the connection manager decides if it may, and the router
/// sends it on a connection of its own.
#[derive(Clone, Debug)]
pub struct Upgrade(pub HeaderValue);

impl Fields {
    /// Notes one field; false if it is not to be kept in the message's
    /// map: a connection field, or the `Expect: 100-continue` that wasp
    /// answers itself (Envoy's default), so that the upstream never sees it.
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) -> bool {
        if name == TRANSFER_ENCODING {
            self.chunked = Some(ends_chunked(value));
            false
        } else if name == CONTENT_LENGTH {
            let known = self.content_length.take().transpose();
            self.content_length = Some(known.and_then(|known| agreed_length(value, known)));
            true
        } else if name == CONNECTION {
            // One pass over the tokens for the three that matter.
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                self.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
            false
        } else if name == HOST {
            self.host = true;
            true
        } else if name == EXPECT && value.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            self.expect_continue = true;
            false
        } else {
            !is_connection_field(name)
        }
    }

    /// Whether the connection stays open after this message.
    fn persistent(&self, version: Version) -> bool {
        match version {
            Version::HTTP_10 => self.keep_alive,
            _ => !self.close,
        }
    }
}

/// The length a content-length field gives, which must be `known` if
/// an earlier one gave that (a list is allowed when all its parts agree).
fn agreed_length(value: &HeaderValue, mut known: Option<u64>) -> Result<u64, Error> {
    for part in value.as_bytes().split(|&b| b == b',') {
        let part = part.trim_ascii();
        let n = (!part.is_empty())
            .then(|| {
                part.iter().try_fold(0u64, |n, &b| {
                    let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
                    n.checked_mul(10)?.checked_add(u64::from(digit))
                })
            })
            .flatten()
            .ok_or(Error::Malformed("invalid content-length"))?;
        if known.is_some_and(|l| l != n) {
            return Err(Error::Malformed("conflicting content-length"));
        }
        known = Some(n);
    }
    known.ok_or(Error::Malformed("invalid content-length"))
}

/// Whether a `connection` field lists `token`.
fn lists(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last transfer coding of a `transfer-encoding` field is
/// chunked.
fn ends_chunked(te: &HeaderValue) -> bool {
    te.as_bytes()
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Appends `data` as one chunk.
fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with `trailers` if there are any.
fn encode_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        encode_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a message body ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Decoder {
    /// After this many more bytes.
    Length(u64),
    Chunked(Chunk),
    /// When the peer closes the connection (responses only).
    Eof,
    Done,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Debug, PartialEq)]
pub(super) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

impl Decoder {
    /// Takes what it can of the body from `buf`.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        loop {
            let chunk = match self {
                Decoder::Done | Decoder::Length(0) => {
                    *self = Decoder::Done;
                    return Ok(Decoded::End);
                }
                _ if buf.is_empty() => return Ok(Decoded::NeedMore),
                Decoder::Length(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    return Ok(Decoded::Data(buf.split_to(n as usize).freeze()));
                }
                Decoder::Eof => return Ok(Decoded::Data(buf.split().freeze())),
                Decoder::Chunked(chunk) => chunk,
            };
            match chunk {
                Chunk::Size => {
                    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                        return if buf.len() > 1024 {
                            Err(Error::Malformed("chunk size line too long"))
                        } else {
                            Ok(Decoded::NeedMore)
                        };
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 1);
                    *chunk = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    let n = (*left).min(buf.len() as u64);
                    *left -= n;
                    let data = buf.split_to(n as usize).freeze();
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                    return Ok(Decoded::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Malformed("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    if buf[..] == b"\r"[..] {
                        return Ok(Decoded::NeedMore);
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields {
                                let name = HeaderName::from_bytes(f.name.as_bytes());
                                let value = HeaderValue::from_bytes(f.value);
                                if let (Ok(n), Ok(v)) = (name, value) {
                                    trailers.append(n, v);
                                }
                            }
                            (len, trailers)
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILERS => {
                            return Ok(Decoded::NeedMore);
                        }
                        _ => return Err(Error::Malformed("invalid trailers")),
                    };
                    buf.advance(len);
                    *self = Decoder::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }
}

/// A chunk size line (without its `\n`): hex digits, then extensions.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = line[digits..].trim_ascii_start();
    if digits == 0 || digits > 16 || !(rest.is_empty() || rest[0] == b';') {
        return Err(Error::Malformed("invalid chunk size"));
    }
    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits");
    u64::from_str_radix(hex, 16).map_err(|_| Error::Malformed("invalid chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task is put back on the run queue (woken) and resumes on its
    /// next poll: it gives way once, and never waits on anything.
    #[test]
    fn a_write_turn_wakes_itself_and_ends_on_the_next_poll() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut turn = std::pin::pin!(write_turn());
        assert!(turn.as_mut().poll(&mut cx).is_pending());
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(turn.as_mut().poll(&mut cx).is_ready());
        assert_eq!(count.0.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    /// A connection waiting with nothing buffered gives its read buffer to
    /// the worker's spares, and takes one back once the socket is readable.
    #[tokio::test]
    async fn an_idle_connection_lends_its_read_buffer_to_the_spares() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut io, _) = listener.accept().await.unwrap();
        let spares = || SPARE_READS.with_borrow(|s| s.len());
        let before = spares();

        let mut read = BytesMut::with_capacity(4096);
        let lent = read.as_ptr();
        let waiting = std::future::poll_fn(|cx| match poll_fill(&mut io, &mut read, 0, cx) {
            std::task::Poll::Pending => std::task::Poll::Ready(()),
            ready => panic!("nothing was sent, yet {ready:?}"),
        });
        waiting.await;
        assert_eq!(read.capacity(), 0, "the waiting connection holds no buffer");
        assert_eq!(spares(), before + 1);

        peer.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let n = std::future::poll_fn(|cx| poll_fill(&mut io, &mut read, 0, cx))
            .await
            .unwrap();
        assert_eq!(&read[..n], b"GET / HTTP/1.1\r\n");
        assert_eq!(
            read.as_ptr(),
            lent,
            "the spare came back rather than a new buffer"
        );
        assert_eq!(spares(), before);
    }

    #[test]
    fn a_recycled_map_is_reused_empty() {
        let mut old = HeaderMap::with_capacity(8);
        old.insert(HOST, HeaderValue::from_static("example.com"));
        let room = old.capacity();
        recycle(old);
        let head = Bytes::from_static(b"x-a: 1\r\n");
        let (map, _) = header_map(&head, &[[0, 3, 5, 6]]).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-a"], "1");
        assert!(map.get(HOST).is_none());
        assert_eq!(map.capacity(), room, "the spare map, not a new one");
    }

    /// The fields noted of a head with these name/value pairs.
    fn noted(fields: &[(&str, &str)]) -> Fields {
        let mut noted = Fields::default();
        for (n, v) in fields {
            noted.note(
                &HeaderName::from_bytes(n.as_bytes()).unwrap(),
                &HeaderValue::from_str(v).unwrap(),
            );
        }
        noted
    }

    #[test]
    fn content_lengths_must_agree_and_be_digits() {
        let length = |f: &[(&str, &str)]| {
            noted(f)
                .content_length
                .map(|l| l.map_err(|e| e.to_string()))
        };
        assert_eq!(length(&[]), None);
        assert_eq!(length(&[("Content-Length", "23")]), Some(Ok(23)));
        assert_eq!(
            length(&[("content-length", " 7 , 7"), ("content-length", "7")]),
            Some(Ok(7))
        );
        assert_eq!(
            length(&[("content-length", "18446744073709551615")]),
            Some(Ok(u64::MAX))
        );
        for bad in ["", "-1", "+1", "1e3", "0x10", "18446744073709551616", "1,"] {
            assert_eq!(
                length(&[("content-length", bad)]),
                Some(Err("malformed message: invalid content-length".into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            length(&[("content-length", "1"), ("content-length", "2")]),
            Some(Err("malformed message: conflicting content-length".into()))
        );
        assert_eq!(
            length(&[("content-length", "x"), ("content-length", "2")]),
            Some(Err("malformed message: invalid content-length".into())),
            "the first error stands"
        );
    }

    #[test]
    fn connection_tokens_decide_persistence() {
        let persistent = |f: &[(&str, &str)], v| noted(f).persistent(v);
        assert!(persistent(&[], Version::HTTP_11));
        assert!(!persistent(
            &[("connection", "Keep-Alive, CLOSE")],
            Version::HTTP_11
        ));
        assert!(!persistent(
            &[("connection", "upgrade"), ("connection", "close")],
            Version::HTTP_11
        ));
        assert!(!persistent(&[], Version::HTTP_10));
        assert!(persistent(
            &[("connection", " keep-alive ")],
            Version::HTTP_10
        ));
        assert!(!persistent(
            &[("connection", "keep-alive-ish")],
            Version::HTTP_10
        ));
    }

    /// Decodes `wire` fed in pieces of `step` bytes.
    fn decode_in_steps(
        mut decoder: Decoder,
        wire: &[u8],
        step: usize,
    ) -> (Vec<u8>, Option<HeaderMap>) {
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut pieces = wire.chunks(step);
        loop {
            match decoder.decode(&mut buf).expect("valid") {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return (body, trailers),
                Decoded::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => panic!("incomplete at {:?}", decoder),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 42\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, trailers) = decode_in_steps(Decoder::Chunked(Chunk::Size), wire, step);
            assert_eq!(body, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(trailers.expect("trailers")["x-sum"], "42", "step {step}");
        }
        let (body, trailers) =
            decode_in_steps(Decoder::Chunked(Chunk::Size), b"3\r\nabc\r\n0\r\n\r\n", 1);
        assert_eq!((body.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn bad_chunk_framing_is_an_error() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"ffffffffffffffffff\r\n",
            b"5 x\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            let mut d = Decoder::Chunked(Chunk::Size);
            let r = std::iter::repeat_with(|| d.decode(&mut buf))
                .take(4)
                .find(|r| !matches!(r, Ok(Decoded::Data(_))));
            assert!(
                matches!(r, Some(Err(Error::Malformed(_)))),
                "{wire:?}: {r:?}"
            );
        }
    }
}
