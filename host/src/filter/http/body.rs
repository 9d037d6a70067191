//! The one body type of the HTTP path: as received from a peer (streamed),
//! written by wasp, or coming out of a wasm filter's body callbacks.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::sync::mpsc;

use super::h1::client::UpstreamBody;
use super::h1::server::RequestBody;
use super::pool::{H2Stream, Tunnel};
use super::replay::ReplayBody;
use crate::stats::Counter;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
pub enum Body {
    /// From hyper: an HTTP/2 client's request.
    Incoming(Incoming),
    /// An HTTP/2 response from an upstream, with what its stream holds
    /// until the body is done.
    UpstreamH2(Incoming, H2Stream),
    /// The answer to an upgrade request, with the connection it came on
    /// (the tunnel's, if the upstream switched protocols).
    Upgraded(Incoming, Box<Tunnel>),
    /// A request from an HTTP/1.1 client, read off its connection as it
    /// is polled.
    Downstream(RequestBody),
    /// A response from an HTTP/1.1 upstream, read off its connection as
    /// it is polled.
    Upstream(UpstreamBody),
    Full(Full<Bytes>),
    /// Frames produced by a task (filters that see bodies).
    Channel(mpsc::Receiver<Result<Frame<Bytes>, BoxError>>),
    /// A request body a retry may send again.
    Replay(ReplayBody),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Full::new(bytes.into()))
    }

    /// No bytes (and no allocation).
    pub fn empty() -> Self {
        Body::full(Bytes::new())
    }

    /// A body fed through the returned sender.
    pub fn channel() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Self) {
        let (tx, rx) = mpsc::channel(4);
        (tx, Body::Channel(rx))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Incoming(b) | Body::UpstreamH2(b, _) | Body::Upgraded(b, _) => {
                Pin::new(b).poll_frame(cx).map_err(Into::into)
            }
            Body::Downstream(b) => b.poll_frame(cx),
            Body::Upstream(b) => b.poll_frame(cx),
            Body::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            Body::Channel(rx) => rx.poll_recv(cx),
            Body::Replay(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(b) | Body::UpstreamH2(b, _) | Body::Upgraded(b, _) => b.is_end_stream(),
            Body::Downstream(b) => b.is_end_stream(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Full(b) => b.is_end_stream(),
            Body::Channel(_) => false,
            Body::Replay(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(b) | Body::UpstreamH2(b, _) | Body::Upgraded(b, _) => b.size_hint(),
            Body::Downstream(b) => b.size_hint(),
            Body::Upstream(b) => b.size_hint(),
            Body::Full(b) => b.size_hint(),
            Body::Channel(_) => SizeHint::default(),
            Body::Replay(b) => b.size_hint(),
        }
    }
}

/// What a downstream connection sends. Unlike [`Body`] it need not be
/// `Send`: it never leaves the worker, so it can carry the worker's wasm
/// stream along and run the plugins' response body callbacks inline, as
/// the client reads, with no task or channel per response.
pub enum ResponseBody {
    /// A body, and what must live until it has been sent (a wasm stream:
    /// its `on_log` comes after the response, as in Envoy).
    Body(Body, Option<Rc<dyn Any>>),
    /// Frames made by a producer (a wasm body pump) when polled.
    Local(LocalFrames),
    /// A body that fails (resetting the stream) if it has not ended by a
    /// deadline: a route's `max_stream_duration`, counted in the stat.
    Deadline(Box<ResponseBody>, Pin<Box<tokio::time::Sleep>>, Counter),
}

impl ResponseBody {
    /// This body, cut off at `at` (counted in `reached`).
    pub fn until(self, at: tokio::time::Instant, reached: Counter) -> Self {
        ResponseBody::Deadline(
            Box::new(self),
            Box::pin(tokio::time::sleep_until(at)),
            reached,
        )
    }
}

impl From<Body> for ResponseBody {
    fn from(b: Body) -> Self {
        ResponseBody::Body(b, None)
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Body(b, _) => Pin::new(b).poll_frame(cx),
            ResponseBody::Local(l) => l.poll_frame(cx),
            ResponseBody::Deadline(b, at, reached) => {
                if let Poll::Ready(frame) = Pin::new(&mut **b).poll_frame(cx) {
                    return Poll::Ready(frame);
                }
                ready!(at.as_mut().poll(cx));
                reached.inc();
                Poll::Ready(Some(Err("max stream duration reached".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Body(b, _) => b.is_end_stream(),
            ResponseBody::Local(l) => l.producer.is_none() && l.queue.borrow().is_empty(),
            ResponseBody::Deadline(b, ..) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Body(b, _) => b.size_hint(),
            ResponseBody::Local(_) => SizeHint::default(),
            ResponseBody::Deadline(b, ..) => b.size_hint(),
        }
    }
}

type Frames = Rc<RefCell<VecDeque<Result<Frame<Bytes>, BoxError>>>>;

/// A body whose frames a future produces into an [`Outbox`] while the
/// body is polled: the future runs on the reader's poll, so a frame that
/// is ready goes out in the same write as the head before it.
pub struct LocalFrames {
    queue: Frames,
    producer: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl LocalFrames {
    /// A body fed by the future `make` builds from the outbox it gets.
    pub fn new<F: Future<Output = ()> + 'static>(make: impl FnOnce(Outbox) -> F) -> Self {
        let queue = Frames::default();
        let producer = make(Outbox(queue.clone()));
        LocalFrames {
            queue,
            producer: Some(Box::pin(producer)),
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(f) = self.queue.borrow_mut().pop_front() {
                return Poll::Ready(Some(f));
            }
            let Some(producer) = self.producer.as_mut() else {
                return Poll::Ready(None);
            };
            match producer.as_mut().poll(cx) {
                Poll::Ready(()) => self.producer = None,
                // Waiting for its input, or for us to take a frame.
                Poll::Pending if self.queue.borrow().is_empty() => return Poll::Pending,
                Poll::Pending => {}
            }
        }
    }
}

/// Where a [`LocalFrames`] producer puts frames.
pub struct Outbox(Frames);

impl Outbox {
    /// Queues `frame` and waits until the reader has taken it (the body
    /// polls its producer only once the queue is empty, so no waker is
    /// needed).
    pub async fn send(&self, frame: Result<Frame<Bytes>, BoxError>) {
        self.0.borrow_mut().push_back(frame);
        std::future::poll_fn(|_| {
            if self.0.borrow().is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
