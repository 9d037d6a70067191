//! A future that is polled only after one of its own wakers fired.
//!
//! A connection's task is woken by every read and write on it, and polls
//! everything it is waiting on each time. The http_connection_manager
//! waits on its connection's shutdown signal (the drain watch and the idle
//! timer) beside every request: polling both on each wake cost ~520
//! instructions a proxied request (callgrind, under `wrk -c50`). Behind
//! the gate they are polled again only once one of them has woken it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// A future polled only once something it waits on has woken it.
pub struct Gated<'a, F> {
    inner: Pin<&'a mut F>,
    flag: Arc<Flag>,
    /// Wakes `flag`: handed to `inner` instead of the task's waker.
    waker: Waker,
    done: bool,
}

struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future<Output = ()>> Gated<'a, F> {
    pub fn new(inner: Pin<&'a mut F>) -> Self {
        let flag = Arc::new(Flag {
            // Polled the first time, to let it register its wakers.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Gated {
            inner,
            flag,
            waker,
            done: false,
        }
    }
}

impl<F: Future<Output = ()>> Future for Gated<'_, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(());
        }
        this.flag.task.register(cx.waker());
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let cx = &mut Context::from_waker(&this.waker);
        this.done = this.inner.as_mut().poll(cx).is_ready();
        if this.done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::future::poll_fn;
    use std::pin::pin;

    use super::*;

    #[test]
    fn a_gated_future_is_polled_again_only_once_woken() {
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let polls = Cell::new(0);
        let mut inner = pin!(poll_fn(|cx| {
            polls.set(polls.get() + 1);
            Pin::new(&mut rx).poll(cx).map(|_| ())
        }));
        let mut gated = Gated::new(inner.as_mut());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut gated).poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "not woken: not polled again");
        tx.send(()).unwrap();
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready());
        assert_eq!(polls.get(), 2);
        assert!(Pin::new(&mut gated).poll(&mut cx).is_ready(), "stays ready");
        assert_eq!(polls.get(), 2, "a finished future is not polled");
    }
}
