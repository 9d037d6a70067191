//! RESP2 framing.
//!
//! Requests are checked before they are parsed (mini-redis's split): a scan
//! over the buffer finds whether a whole frame is there, where each argument
//! lies and how long the frame is, without copying; only then is the frame
//! split off and its arguments handed out as slices of one shared `Bytes`.
//! Replies from upstreams are never parsed into values: [`reply_len`] finds
//! where one ends so it can be forwarded as raw bytes.

use bytes::{Buf, Bytes, BytesMut};

/// Largest bulk string accepted (Redis's own `proto-max-bulk-len` default).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// Most elements in one request array (Redis's limit for multibulk requests).
pub const MAX_ARRAY_LEN: usize = 1024 * 1024;
/// Longest inline command line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// Deepest nesting accepted in a reply.
const MAX_DEPTH: usize = 64;

/// Input that is not RESP; the connection gets an error and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub &'static str);

/// One client request: the command name and its arguments, plus the frame
/// as received when it was a RESP array (so it can be forwarded unchanged).
#[derive(Debug, Clone)]
pub struct Request {
    pub args: Vec<Bytes>,
    pub raw: Option<Bytes>,
}

impl Request {
    /// The command name lower-cased into `buf`, without allocating; empty
    /// when it is longer than `buf` (no command wasp knows is) or not UTF-8.
    pub fn command<'b>(&self, buf: &'b mut [u8; 24]) -> &'b str {
        let name = &self.args[0];
        if name.len() > buf.len() {
            return "";
        }
        let out = &mut buf[..name.len()];
        out.copy_from_slice(name);
        out.make_ascii_lowercase();
        std::str::from_utf8(out).unwrap_or("")
    }

    /// The request as a RESP array (the frame received, or a fresh encoding).
    pub fn encoded(&self) -> Bytes {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => encode(self.args.iter().map(|a| &a[..])),
        }
    }
}

/// Encodes arguments as a RESP array of bulk strings.
pub fn encode<'a>(args: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    encode_into(&mut out, args);
    out.freeze()
}

pub fn encode_into<'a>(out: &mut BytesMut, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    use std::fmt::Write as _;
    let _ = write!(Writer(out), "*{}\r\n", args.len());
    for a in args {
        let _ = write!(Writer(out), "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Takes one complete request off the front of `buf`, if there is one.
pub fn parse_request(buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    // Empty lines between requests are allowed (and ignored) by Redis.
    while buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
        let skip = if buf[0] == b'\r' { 2 } else { 1 };
        buf.advance(skip);
    }
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let mut spans = Vec::new();
    let Some(len) = check_array(buf, &mut spans)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    let args = spans
        .into_iter()
        .map(|(s, e)| frame.slice(s..e))
        .collect::<Vec<_>>();
    if args.is_empty() {
        // `*0\r\n` is a no-op to Redis; ask for the next frame.
        return parse_request(buf);
    }
    Ok(Some(Request {
        args,
        raw: Some(frame),
    }))
}

/// Scans `*N\r\n` + N bulk strings; records each argument's span.
fn check_array(
    buf: &[u8],
    spans: &mut Vec<(usize, usize)>,
) -> Result<Option<usize>, ProtocolError> {
    let Some((count, mut at)) = line_int(buf, 1)? else {
        return Ok(None);
    };
    if count < 0 {
        return Ok(Some(at)); // a null array: nothing to run
    }
    let count = count as usize;
    if count > MAX_ARRAY_LEN {
        return Err(ProtocolError("invalid multibulk length"));
    }
    spans.reserve(count.min(64));
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError("expected '$'"));
        }
        let Some((len, data)) = line_int(buf, at + 1)? else {
            return Ok(None);
        };
        if len < 0 || len as usize > MAX_BULK_LEN {
            return Err(ProtocolError("invalid bulk length"));
        }
        let end = data + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not terminated by CRLF"));
        }
        spans.push((data, end));
        at = end + 2;
    }
    Ok(Some(at))
}

/// Parses the integer on the line starting at `from`; returns it and the
/// position after the line's CRLF.
fn line_int(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(rel) = buf
        .get(from..)
        .and_then(|b| b.iter().position(|&c| c == b'\r'))
    else {
        if buf.len().saturating_sub(from) > 32 {
            return Err(ProtocolError("invalid length line"));
        }
        return Ok(None);
    };
    let end = from + rel;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if buf[end + 1] != b'\n' {
        return Err(ProtocolError("expected CRLF"));
    }
    let text = std::str::from_utf8(&buf[from..end]).map_err(|_| ProtocolError("invalid length"))?;
    let n = text
        .parse::<i64>()
        .map_err(|_| ProtocolError("invalid length"))?;
    Ok(Some((n, end + 2)))
}

/// A command typed by hand (`SET a 1\r\n`): space-separated words, with
/// Redis's double and single quotes.
fn parse_inline(buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let text = line.strip_suffix(b"\n").unwrap_or(&line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let args = split_inline(text)?;
    if args.is_empty() {
        return parse_request(buf);
    }
    Ok(Some(Request { args, raw: None }))
}

fn split_inline(text: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == text.len() {
            break;
        }
        let mut word = Vec::new();
        match text[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err(ProtocolError("unbalanced quotes in request")),
                        Some(&c) if c == q => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if q == b'"' && i + 1 < text.len() => {
                            word.push(match text[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                other => other,
                            });
                            i += 2;
                        }
                        Some(&c) => {
                            word.push(c);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < text.len() && !text[i].is_ascii_whitespace() {
                    word.push(text[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(word));
    }
    Ok(args)
}

/// The length of the first complete RESP2 reply in `buf`, if it is all there.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    reply_end(buf, 0, 0)
}

fn reply_end(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError("reply nested too deeply"));
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' | b':' => Ok(buf[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| at + p + 2)),
        b'$' => {
            let Some((len, data)) = line_int(buf, at + 1)? else {
                return Ok(None);
            };
            if len < 0 {
                return Ok(Some(data));
            }
            let end = data + len as usize + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' => {
            let Some((count, mut next)) = line_int(buf, at + 1)? else {
                return Ok(None);
            };
            for _ in 0..count.max(0) {
                match reply_end(buf, next, depth + 1)? {
                    Some(e) => next = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(next))
        }
        _ => Err(ProtocolError("unexpected reply type")),
    }
}

/// The elements of `reply` if it is an array of exactly `count` of them
/// and nothing else, each as its own slice of `reply` (no copy).
pub fn array_items(reply: &Bytes, count: usize) -> Option<Vec<Bytes>> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let (n, mut at) = line_int(reply, 1).ok()??;
    if usize::try_from(n).ok()? != count {
        return None;
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let end = reply_end(reply, at, 1).ok()??;
        items.push(reply.slice(at..end));
        at = end;
    }
    (at == reply.len()).then_some(items)
}

/// `-<message>\r\n`
pub fn error(message: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + 3);
    b.extend_from_slice(b"-");
    b.extend_from_slice(message.as_bytes());
    b.extend_from_slice(b"\r\n");
    b.freeze()
}

/// `$<len>\r\n<data>\r\n`
pub fn bulk(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 16);
    b.extend_from_slice(format!("${}\r\n", data.len()).as_bytes());
    b.extend_from_slice(data);
    b.extend_from_slice(b"\r\n");
    b.freeze()
}

/// `:<n>\r\n`
pub fn integer(n: i64) -> Bytes {
    Bytes::from(format!(":{n}\r\n"))
}

/// The integer of a `:n` reply.
pub fn as_integer(reply: &[u8]) -> Option<i64> {
    std::str::from_utf8(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<String>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse_request(&mut buf)? {
            out.push(
                r.args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            );
        }
        Ok(out)
    }

    #[test]
    fn arrays_and_inline_commands_parse() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nSET b \"x y\" 'z'\r\nPING\n").unwrap();
        assert_eq!(
            got,
            vec![vec!["GET", "a"], vec!["SET", "b", "x y", "z"], vec!["PING"]]
        );
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(parse_request(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn malformed_and_oversized_input_is_an_error() {
        assert!(parse_all(b"*1\r\n+GET\r\n").is_err());
        assert!(parse_all(b"*1\r\n$3\r\nGETXX").is_err());
        assert!(parse_all(b"*99999999\r\n").is_err());
        assert!(parse_all(b"*1\r\n$999999999999\r\n").is_err());
        assert!(parse_all(b"*x\r\n").is_err());
        assert!(parse_all(b"SET \"unterminated\r\n").is_err());
        let mut long = BytesMut::from(&vec![b'a'; MAX_INLINE_LEN + 1][..]);
        assert!(parse_request(&mut long).is_err());
    }

    #[test]
    fn reply_lengths_cover_every_type() {
        for reply in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":12\r\n",
            b"$3\r\nabc\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
        ] {
            let mut with_more = reply.to_vec();
            with_more.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(reply_len(&with_more).unwrap(), Some(reply.len()));
            assert_eq!(reply_len(&reply[..reply.len() - 1]).unwrap(), None);
        }
        assert!(reply_len(b"?\r\n").is_err());
    }

    /// A RESP2 reply of any shape, as bytes.
    fn reply_strategy() -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            "[a-zA-Z ]{0,12}".prop_map(|s| format!("+{s}\r\n").into_bytes()),
            "[a-zA-Z ]{0,12}".prop_map(|s| format!("-ERR {s}\r\n").into_bytes()),
            any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| {
                let mut out = format!("${}\r\n", b.len()).into_bytes();
                out.extend_from_slice(&b);
                out.extend_from_slice(b"\r\n");
                out
            }),
            Just(b"$-1\r\n".to_vec()),
            Just(b"*-1\r\n".to_vec()),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            proptest::collection::vec(inner, 0..6).prop_map(|items| {
                let mut out = format!("*{}\r\n", items.len()).into_bytes();
                for i in items {
                    out.extend_from_slice(&i);
                }
                out
            })
        })
    }

    proptest! {
        /// Whatever arguments a client sends arrive intact, however the
        /// bytes are split across reads.
        #[test]
        fn requests_round_trip_across_any_split(
            args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let wire = encode(args.iter().map(|a| &a[..]));
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let early = parse_request(&mut buf).unwrap();
            if cut < wire.len() {
                prop_assert!(early.is_none());
                buf.extend_from_slice(&wire[cut..]);
            }
            let req = match early { Some(r) => r, None => parse_request(&mut buf).unwrap().unwrap() };
            prop_assert_eq!(req.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>(), args);
            prop_assert!(buf.is_empty());
        }

        /// Arbitrary bytes never panic either parser, and whatever parses
        /// re-encodes to a frame that parses to the same arguments.
        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = reply_len(&input);
            let mut buf = BytesMut::from(&input[..]);
            while let Ok(Some(req)) = parse_request(&mut buf) {
                let mut again = BytesMut::from(&encode(req.args.iter().map(|a| &a[..]))[..]);
                let back = parse_request(&mut again).unwrap().unwrap();
                prop_assert_eq!(back.args, req.args);
            }
        }

        /// A complete reply of any shape is framed exactly; any prefix of it
        /// is incomplete.
        #[test]
        fn replies_frame_exactly(reply in reply_strategy(), cut in any::<prop::sample::Index>()) {
            let mut with_next = reply.clone();
            with_next.extend_from_slice(b"+NEXT\r\n");
            prop_assert_eq!(reply_len(&with_next).unwrap(), Some(reply.len()));
            let cut = cut.index(reply.len());
            prop_assert_eq!(reply_len(&reply[..cut]).unwrap(), None);
        }
    }
}

#[cfg(test)]
mod array_tests {
    use super::*;

    #[test]
    fn array_items_split_an_array_reply_without_copying() {
        let reply = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:5\r\n");
        let items = array_items(&reply, 3).unwrap();
        assert_eq!(items, [&b"$1\r\na\r\n"[..], b"$-1\r\n", b"*1\r\n:5\r\n"]);
        assert!(array_items(&reply, 2).is_none(), "count must match");
        assert!(array_items(&Bytes::from_static(b"-ERR x\r\n"), 1).is_none());
        assert!(
            array_items(&Bytes::from_static(b"*2\r\n$1\r\na\r\n"), 2).is_none(),
            "short"
        );
        assert!(
            array_items(&Bytes::from_static(b"*1\r\n:1\r\n:2\r\n"), 1).is_none(),
            "trailing bytes"
        );
    }
}
