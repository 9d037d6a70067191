//! Per-thread stocks of emptied maps, buffers and timers that finished
//! requests leave for the next ones: a request takes one instead of
//! allocating it (or registering it, for a timer) and gives it back when
//! it is done.
//!
//! A stock holds what the thread's requests in flight need at their peak,
//! not a fixed number: a fixed stock sized for 50 concurrent requests sent
//! every request past it to the allocator at 200 (malloc and free were
//! ~1,300 instructions of a proxied request at `wrk -c200`, callgrind).
//! What a stock does not lend out for a whole [`TICK`](crate::clock::TICK)
//! is given back to the allocator on the worker's next tick ([`trim`]).

/// One kind of spare thing, kept by one thread.
pub struct Spares<T> {
    kept: Vec<T>,
    /// The fewest kept since the last trim: that many went unused.
    low: usize,
    /// Never more than this many, whatever the peak.
    max: usize,
}

impl<T> Spares<T> {
    pub const fn new(max: usize) -> Self {
        Spares {
            kept: Vec::new(),
            low: 0,
            max,
        }
    }

    pub fn take(&mut self) -> Option<T> {
        let taken = self.kept.pop();
        self.low = self.low.min(self.kept.len());
        taken
    }

    /// Keeps `spare` unless the stock is full (it is then dropped).
    pub fn keep(&mut self, spare: T) {
        if self.kept.len() < self.max {
            self.kept.push(spare);
        }
    }

    /// Drops what went unused since the last trim (the oldest first).
    pub fn trim(&mut self) {
        self.kept.drain(..self.low);
        self.low = self.kept.len();
    }

    /// Drops them all.
    pub fn clear(&mut self) {
        self.kept.clear();
        self.low = 0;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

/// Trims every stock of this thread; a worker's ticker calls it.
pub fn trim() {
    crate::filter::http::h1::trim_spares();
    crate::clock::trim_spares();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stock_follows_the_peak_of_each_tick() {
        let mut s = Spares::new(100);
        for i in 0..10 {
            s.keep(i);
        }
        s.trim();
        assert_eq!(s.len(), 10, "none was kept a whole tick yet");
        s.trim();
        assert_eq!(s.len(), 0, "none was lent for a whole tick");
        for i in 0..10 {
            s.keep(i);
        }
        s.trim();
        // Three lent at once at the peak, then given back: seven unused.
        let lent: Vec<_> = (0..3).map(|_| s.take().unwrap()).collect();
        lent.into_iter().for_each(|i| s.keep(i));
        s.trim();
        assert_eq!(s.len(), 3);
        // The same peak again keeps all three.
        let lent: Vec<_> = (0..3).map(|_| s.take().unwrap()).collect();
        lent.into_iter().for_each(|i| s.keep(i));
        s.trim();
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn a_stock_never_holds_more_than_its_max() {
        let mut s = Spares::new(2);
        (0..5).for_each(|i| s.keep(i));
        assert_eq!(s.len(), 2);
        assert_eq!(s.take(), Some(1));
        s.clear();
        assert!(s.is_empty());
    }
}
