//! Time a worker reads many times a second but needs only roughly: the
//! `date` header's text and a coarse monotonic instant.
//!
//! Both are refreshed by each worker's ticker ([`tick`], every
//! [`TICK`]), as Envoy's per-thread cached date provider is, so that the
//! hot path reads a thread-local instead of the clock. A thread without a
//! ticker (tests, tools) reads the clock each time instead.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

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

#[cfg(test)]
mod tests {
    use super::*;

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
