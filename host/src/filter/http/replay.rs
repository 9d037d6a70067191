//! A request body that a retry can send again from its start.
//!
//! The first try streams the client's body as it arrives (a retried
//! route must not hold a request back until its body is complete: a gRPC
//! stream never completes), and what it reads is kept. A retry's body
//! gives the kept frames again, then goes on reading from the client. Past
//! the limit the kept frames are dropped and no try after the current one
//! can be made, as Envoy abandons the retry when the body outgrows its
//! buffer (`retry_or_shadow_abandoned`) rather than refusing the request.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use super::body::{Body, BoxError};

/// The retry loop's handle on a request body.
pub struct Replay(Rc<RefCell<Shared>>);

struct Shared {
    /// The rest of the client's body.
    source: Body,
    source_done: bool,
    /// Every frame read so far (data and trailers), while `replayable`.
    kept: Vec<Frame<Bytes>>,
    /// Data bytes read so far.
    read: usize,
    limit: usize,
    /// No byte was lost: `kept` holds all that was read.
    replayable: bool,
    /// Which try's body may read (older ones have been given up).
    current: u32,
}

/// One try's view of the body.
pub struct ReplayBody {
    shared: Rc<RefCell<Shared>>,
    try_index: u32,
    /// The next of `kept` to give.
    next: usize,
}

impl Replay {
    /// Keeps up to `limit` bytes of `source` for retries.
    pub fn new(source: Body, limit: usize) -> Self {
        Replay(Rc::new(RefCell::new(Shared {
            source,
            source_done: false,
            kept: Vec::new(),
            read: 0,
            limit,
            replayable: true,
            current: 0,
        })))
    }

    /// Whether another try can have the whole body.
    pub fn replayable(&self) -> bool {
        self.0.borrow().replayable
    }

    /// The body of the next try, from the start. A body handed out before
    /// ends with an error if it is still polled (an HTTP/2 stream of a
    /// try given up on may be).
    pub fn body(&self) -> Body {
        let mut shared = self.0.borrow_mut();
        shared.current += 1;
        Body::Replay(ReplayBody {
            shared: self.0.clone(),
            try_index: shared.current,
            next: 0,
        })
    }
}

fn copy(frame: &Frame<Bytes>) -> Frame<Bytes> {
    match (frame.data_ref(), frame.trailers_ref()) {
        (Some(data), _) => Frame::data(data.clone()),
        (None, Some(trailers)) => Frame::trailers(trailers.clone()),
        (None, None) => Frame::data(Bytes::new()),
    }
}

impl ReplayBody {
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut shared = self.shared.borrow_mut();
        let s = &mut *shared;
        if s.current != self.try_index {
            return Poll::Ready(Some(Err("the request body went to a retry".into())));
        }
        if let Some(frame) = s.kept.get(self.next) {
            self.next += 1;
            return Poll::Ready(Some(Ok(copy(frame))));
        }
        if s.source_done {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut s.source).poll_frame(cx)) {
            None => {
                s.source_done = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                // What the client sent is incomplete: no try can have it.
                s.replayable = false;
                s.kept = Vec::new();
                return Poll::Ready(Some(Err(e)));
            }
            Some(Ok(frame)) => frame,
        };
        if s.replayable {
            s.read += frame.data_ref().map_or(0, Bytes::len);
            if s.read > s.limit {
                s.replayable = false;
                s.kept = Vec::new();
            } else {
                s.kept.push(copy(&frame));
                self.next += 1;
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    pub fn is_end_stream(&self) -> bool {
        let s = self.shared.borrow();
        s.current != self.try_index
            || (self.next >= s.kept.len() && (s.source_done || s.source.is_end_stream()))
    }

    pub fn size_hint(&self) -> SizeHint {
        let s = self.shared.borrow();
        if s.current != self.try_index {
            return SizeHint::with_exact(0);
        }
        let kept: u64 = s.kept[self.next.min(s.kept.len())..]
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = if s.source_done {
            SizeHint::with_exact(0)
        } else {
            s.source.size_hint()
        };
        let mut hint = SizeHint::new();
        hint.set_lower(kept + rest.lower());
        if let Some(upper) = rest.upper() {
            hint.set_upper(kept + upper);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(parts: &[&'static str]) -> Body {
        let (tx, body) = Body::channel();
        for p in parts {
            tx.try_send(Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
                .unwrap();
        }
        body
    }

    async fn text(b: Body) -> Result<String, BoxError> {
        Ok(String::from_utf8(b.collect().await?.to_bytes().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_retry_gets_what_was_read_then_the_rest() {
        let (tx, source) = Body::channel();
        let replay = Replay::new(source, 100);
        let mut first = replay.body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "abc");
        // The first try fails here; the second starts over.
        let second = replay.body();
        assert!(first.frame().await.unwrap().is_err());
        tx.send(Ok(Frame::data(Bytes::from_static(b"def"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(text(second).await.unwrap(), "abcdef");
        assert!(replay.replayable());
        assert_eq!(text(replay.body()).await.unwrap(), "abcdef");
    }

    #[tokio::test]
    async fn past_the_limit_the_body_streams_once() {
        let replay = Replay::new(chunks(&["12345", "67890", "x"]), 8);
        assert_eq!(text(replay.body()).await.unwrap(), "1234567890x");
        assert!(!replay.replayable());
    }

    #[tokio::test]
    async fn a_known_length_is_told() {
        let replay = Replay::new(Body::full("hello"), 100);
        let b = replay.body();
        assert_eq!(b.size_hint().exact(), Some(5));
        assert_eq!(text(b).await.unwrap(), "hello");
        let again = replay.body();
        assert_eq!(again.size_hint().exact(), Some(5));
        assert!(!again.is_end_stream());
        assert_eq!(text(again).await.unwrap(), "hello");
        let empty = Replay::new(Body::empty(), 100).body();
        assert!(empty.is_end_stream());
    }
}
