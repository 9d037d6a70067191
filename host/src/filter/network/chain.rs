//! The non-terminal part of a listener's filter chain, with Envoy's network
//! filter semantics.
//!
//! Read filters see downstream data in configuration order, write filters see
//! data going to the downstream in reverse order. A filter may change the
//! bytes, let them through (`Continue`), hold them (`StopIteration`: the bytes
//! stay buffered and are presented again, with whatever arrives next, to the
//! whole chain) or close the connection. Like Envoy's connection buffer, what
//! a stopped filter holds is bounded only by the filter itself.

use bytes::BytesMut;

/// What a filter callback asks of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterStatus {
    Continue,
    StopIteration,
}

/// What filters may do to the connection.
#[derive(Debug, Default)]
pub struct FilterContext {
    close: bool,
    close_delay: Option<std::time::Duration>,
}

impl FilterContext {
    /// Closes the downstream connection once the callback returns.
    pub fn close(&mut self) {
        self.close = true;
    }

    /// Closes the downstream connection after `delay` (during which nothing
    /// is read from it).
    pub fn close_after(&mut self, delay: std::time::Duration) {
        self.close = true;
        self.close_delay = Some(delay);
    }

    pub fn is_closed(&self) -> bool {
        self.close
    }
}

/// A network filter that is not the last in its chain.
pub trait NetworkFilter {
    /// A connection was accepted.
    fn on_new_connection(&mut self, _cx: &mut FilterContext) -> FilterStatus {
        FilterStatus::Continue
    }

    /// Downstream bytes (all not yet passed on); `end_stream` once the
    /// downstream half-closed.
    fn on_data(
        &mut self,
        _data: &mut BytesMut,
        _end_stream: bool,
        _cx: &mut FilterContext,
    ) -> FilterStatus {
        FilterStatus::Continue
    }

    /// The terminal filter is closing the connection before the
    /// downstream did (Envoy's local close).
    fn on_local_close(&mut self) {}

    /// Bytes on their way to the downstream.
    fn on_write(
        &mut self,
        _data: &mut BytesMut,
        _end_stream: bool,
        _cx: &mut FilterContext,
    ) -> FilterStatus {
        FilterStatus::Continue
    }
}

/// One connection's non-terminal filters and the bytes they hold.
pub struct FilterChain {
    filters: Vec<Box<dyn NetworkFilter>>,
    cx: FilterContext,
    /// Read data not yet passed by every filter.
    read_pending: BytesMut,
    /// Read data passed by every filter, for the terminal filter to take.
    read_ready: BytesMut,
    write_pending: BytesMut,
}

impl FilterChain {
    pub fn new(filters: Vec<Box<dyn NetworkFilter>>) -> Self {
        FilterChain {
            filters,
            cx: FilterContext::default(),
            read_pending: BytesMut::new(),
            read_ready: BytesMut::new(),
            write_pending: BytesMut::new(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.cx.is_closed()
    }

    /// How long a filter asked to wait before closing.
    pub fn close_delay(&self) -> Option<std::time::Duration> {
        self.cx.close_delay
    }

    /// Runs `on_new_connection`; false if a filter closed the connection.
    pub fn on_new_connection(&mut self) -> bool {
        for f in &mut self.filters {
            if f.on_new_connection(&mut self.cx) == FilterStatus::StopIteration
                || self.cx.is_closed()
            {
                break;
            }
        }
        !self.cx.is_closed()
    }

    /// Feeds downstream bytes through the read filters; what passes them all
    /// becomes available to [`FilterChain::take_read`].
    pub fn on_data(&mut self, data: &[u8], end_stream: bool) {
        self.read_pending.extend_from_slice(data);
        for f in &mut self.filters {
            if f.on_data(&mut self.read_pending, end_stream, &mut self.cx)
                == FilterStatus::StopIteration
                || self.cx.is_closed()
            {
                return;
            }
        }
        self.read_ready.unsplit(self.read_pending.split());
    }

    /// Whether passed bytes wait to be taken (or the connection was closed,
    /// which a read must report).
    pub fn has_read(&self) -> bool {
        !self.read_ready.is_empty() || self.cx.is_closed()
    }

    /// Copies passed bytes into `buf`; returns how many.
    pub fn take_read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.read_ready.len());
        buf[..n].copy_from_slice(&self.read_ready.split_to(n));
        n
    }

    /// Tells the filters the connection is ending from this side.
    pub fn closing_locally(&mut self) {
        for f in &mut self.filters {
            f.on_local_close();
        }
    }

    /// Feeds bytes bound for the downstream through the write filters, last
    /// configured first; returns what is to be written now.
    pub fn on_write(&mut self, data: &[u8], end_stream: bool) -> Option<BytesMut> {
        self.write_pending.extend_from_slice(data);
        for f in self.filters.iter_mut().rev() {
            if f.on_write(&mut self.write_pending, end_stream, &mut self.cx)
                == FilterStatus::StopIteration
                || self.cx.is_closed()
            {
                return None;
            }
        }
        Some(self.write_pending.split())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holds data until it has a full line, then upper-cases it.
    struct LineUpper;
    impl NetworkFilter for LineUpper {
        fn on_data(
            &mut self,
            data: &mut BytesMut,
            end: bool,
            _: &mut FilterContext,
        ) -> FilterStatus {
            if !end && !data.ends_with(b"\n") {
                return FilterStatus::StopIteration;
            }
            data.make_ascii_uppercase();
            FilterStatus::Continue
        }
    }

    /// Tags writes and closes on "quit".
    struct Tagger(&'static str);
    impl NetworkFilter for Tagger {
        fn on_data(
            &mut self,
            data: &mut BytesMut,
            _: bool,
            cx: &mut FilterContext,
        ) -> FilterStatus {
            if data.starts_with(b"QUIT") {
                cx.close();
            }
            FilterStatus::Continue
        }
        fn on_write(
            &mut self,
            data: &mut BytesMut,
            _: bool,
            _: &mut FilterContext,
        ) -> FilterStatus {
            let mut tagged = BytesMut::from(self.0);
            tagged.extend_from_slice(data);
            *data = tagged;
            FilterStatus::Continue
        }
    }

    fn read_all(chain: &mut FilterChain) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = chain.take_read(&mut buf);
        buf[..n].to_vec()
    }

    #[test]
    fn stop_iteration_holds_data_until_the_filter_continues() {
        let mut chain = FilterChain::new(vec![Box::new(LineUpper), Box::new(Tagger("a:"))]);
        assert!(chain.on_new_connection());
        chain.on_data(b"hel", false);
        assert_eq!(read_all(&mut chain), b"");
        chain.on_data(b"lo\n", false);
        assert_eq!(read_all(&mut chain), b"HELLO\n");
    }

    #[test]
    fn write_filters_run_in_reverse_order() {
        let mut chain = FilterChain::new(vec![Box::new(Tagger("a:")), Box::new(Tagger("b:"))]);
        assert_eq!(&chain.on_write(b"x", false).unwrap()[..], b"a:b:x");
    }

    #[test]
    fn a_filter_can_close_the_connection() {
        let mut chain = FilterChain::new(vec![Box::new(LineUpper), Box::new(Tagger("a:"))]);
        chain.on_data(b"quit\n", false);
        assert!(chain.is_closed());
        assert_eq!(read_all(&mut chain), b"");
    }
}
