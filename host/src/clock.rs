//! Time a worker reads many times a second but needs only roughly: the
//! `date` header's text and a coarse monotonic instant; and the timeouts
//! it sets on every request.
//!
//! Both are refreshed by each worker's ticker ([`tick`], every
//! [`TICK`]), as Envoy's per-thread cached date provider is, so that the
//! hot path reads a thread-local instead of the clock. A thread without a
//! ticker (tests, tools) reads the clock each time instead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use tokio::time::Sleep;

use crate::spare::Spares;

/// How often a worker refreshes its cached time: the staleness allowed.
pub const TICK: Duration = Duration::from_millis(500);

/// An HTTP date (RFC 9110 IMF-fixdate) is always this long.
pub type DateText = [u8; 29];

thread_local! {
    /// Set only on threads whose ticker keeps it fresh.
    static CACHED: Cell<Option<(Instant, DateText)>> = const { Cell::new(None) };
}

/// Reads the clock into this thread's cache; a worker's ticker calls it.
pub fn tick() {
    CACHED.set(Some((Instant::now(), date_text(SystemTime::now()))));
}

/// Now, to within [`TICK`] on a worker: for bookkeeping like how long a
/// pooled connection has idled, not for anything reported in
/// milliseconds.
pub fn coarse_now() -> Instant {
    match CACHED.get() {
        Some((now, _)) => now,
        None => Instant::now(),
    }
}

/// The `date` header's value, at most [`TICK`] old on a worker.
pub fn date() -> DateText {
    match CACHED.get() {
        Some((_, text)) => text,
        None => date_text(SystemTime::now()),
    }
}

fn date_text(now: SystemTime) -> DateText {
    let mut text = [0; 29];
    text.copy_from_slice(httpdate::fmt_http_date(now).as_bytes());
    text
}

/// `fut`'s output, or [`Elapsed`] if `deadline` comes first.
///
/// `tokio::time::timeout` puts a new timer in the runtime's wheel on every
/// call and takes it out again when dropped; a proxied request that sets
/// a 15 s route timeout and is answered in a millisecond pays for both,
/// every time. These timers are kept for the next timeout on the thread
/// instead, still in the wheel: moving a registered timer's deadline later
/// is one compare-and-swap in tokio (the wheel looks at it again only
/// when its old deadline comes). A kept timer that does fire wakes the
/// task that used it last, once, for nothing.
pub async fn timeout_at<F: Future>(
    deadline: tokio::time::Instant,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let mut timer = Spare::take(deadline);
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        timer.timer().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// A deadline passed before the work it bounded was done.
#[derive(Debug, PartialEq, Eq)]
pub struct Elapsed;

/// At most this many timers kept per thread.
const MAX_SPARE_TIMERS: usize = 4096;

thread_local! {
    /// The timers kept, and the runtime whose wheel they are in: a thread
    /// may run one runtime after another (tests do), and a timer is
    /// useless to any runtime but its own.
    static SPARE_TIMERS: RefCell<(Option<tokio::runtime::Id>, Spares<Timer>)> =
        const { RefCell::new((None, Spares::new(MAX_SPARE_TIMERS))) };
}

type Timer = Pin<Box<Sleep>>;

/// Gives back the timers this thread's requests did not need lately (see
/// [`crate::spare`]).
pub fn trim_spares() {
    SPARE_TIMERS.with_borrow_mut(|(_, spare)| spare.trim());
}

/// A timer taken for one timeout, kept again when it is dropped.
struct Spare(Option<Timer>);

impl Spare {
    fn take(deadline: tokio::time::Instant) -> Spare {
        let runtime = tokio::runtime::Handle::current().id();
        let kept = SPARE_TIMERS.with_borrow_mut(|(kept_for, spare)| {
            if *kept_for != Some(runtime) {
                spare.clear();
                *kept_for = Some(runtime);
            }
            spare.take()
        });
        Spare(Some(match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }))
    }

    fn timer(&mut self) -> Pin<&mut Sleep> {
        self.0.as_mut().expect("taken only when dropped").as_mut()
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        let Some(timer) = self.0.take().filter(|t| !t.is_elapsed()) else {
            return;
        };
        SPARE_TIMERS.with_borrow_mut(|(_, spare)| spare.keep(timer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn spares() -> usize {
        SPARE_TIMERS.with_borrow(|(_, spare)| spare.len())
    }

    /// Asserts that a timeout of `after` over work that never ends fires
    /// exactly then.
    async fn fires_after(after: Duration) {
        let started = tokio::time::Instant::now();
        let never = timeout_at(started + after, std::future::pending::<()>());
        assert_eq!(never.await, Err(Elapsed));
        assert_eq!(started.elapsed(), after);
    }

    #[test]
    fn timeouts_keep_their_timers_and_still_fire() {
        std::thread::spawn(|| {
            runtime().block_on(async {
                let now = tokio::time::Instant::now;
                // Pending once, so that the timer is polled into the wheel.
                let once = async {
                    tokio::task::yield_now().await;
                    7
                };
                assert_eq!(
                    timeout_at(now() + Duration::from_secs(15), once).await,
                    Ok(7)
                );
                assert_eq!(spares(), 1, "kept for the next timeout");
                // The kept timer, moved later in the wheel, fires at its new
                // deadline and not at the old one.
                fires_after(Duration::from_secs(20)).await;
                assert_eq!(spares(), 0, "a timer that fired is not kept");
                // Moved earlier, it fires at the earlier deadline.
                let _ = timeout_at(now() + Duration::from_secs(30), async {}).await;
                fires_after(Duration::from_secs(1)).await;
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_timer_kept_from_a_runtime_that_shut_down_is_not_reused() {
        std::thread::spawn(|| {
            runtime().block_on(async {
                let _ = timeout_at(
                    tokio::time::Instant::now() + Duration::from_secs(15),
                    async {},
                )
                .await;
            });
            assert_eq!(spares(), 1);
            runtime().block_on(fires_after(Duration::from_secs(2)));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_without_a_ticker_reads_the_clock() {
        let before = Instant::now();
        assert!(coarse_now() >= before);
        let text = date();
        assert!(httpdate::parse_http_date(std::str::from_utf8(&text).unwrap()).is_ok());
    }

    #[test]
    fn a_ticking_thread_reads_its_cache_until_the_next_tick() {
        std::thread::spawn(|| {
            tick();
            let cached = coarse_now();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(coarse_now(), cached);
            tick();
            assert!(coarse_now() > cached);
        })
        .join()
        .unwrap();
    }
}
