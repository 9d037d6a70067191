//! What a downstream connection speaks, when the codec is AUTO: HTTP/2
//! clients (prior knowledge) open with a fixed preface, anything else is
//! taken for HTTP/1.1.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::stats::Counter;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a downstream connection speaks, with the bytes already
/// read from it.
pub enum Codec {
    Http1(BytesMut),
    Http2(BytesMut),
}

/// Reads the first bytes of a connection (codec AUTO) until they tell
/// HTTP/2's preface from an HTTP/1.1 request; `None` if the client went
/// away first. The buffer comes from the worker's spare read buffers, as
/// every later read's does: a buffer of its own for each new connection
/// was 8 KiB more for each idle keep-alive one.
pub async fn detect(io: &mut TcpStream) -> Option<Codec> {
    let mut read = BytesMut::new();
    loop {
        let filled = std::future::poll_fn(|cx| super::h1::poll_fill(io, &mut read, 0, cx));
        if filled.await.ok()? == 0 {
            return None;
        }
        let n = read.len().min(H2_PREFACE.len());
        if read[..n] != H2_PREFACE[..n] {
            return Some(Codec::Http1(read));
        }
        if n == H2_PREFACE.len() {
            return Some(Codec::Http2(read));
        }
    }
}

/// A connection for hyper's HTTP/2, counting the bytes through its
/// socket. Bytes already read off it (`first`: the preface the sniffing
/// took, for the server) are read again first.
pub struct CountedIo {
    first: Bytes,
    io: TcpStream,
    rx_bytes: Counter,
    tx_bytes: Counter,
}

impl CountedIo {
    pub fn new(first: Bytes, io: TcpStream, rx_bytes: Counter, tx_bytes: Counter) -> Self {
        CountedIo {
            first,
            io,
            rx_bytes,
            tx_bytes,
        }
    }

    fn sent(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = written {
            self.tx_bytes.add(n as u64);
        }
        written
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_empty() {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            this.rx_bytes.add((buf.filled().len() - before) as u64);
            return Poll::Ready(Ok(()));
        }
        let n = this.first.len().min(buf.remaining());
        buf.put_slice(&this.first.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.sent(written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.sent(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new connection's first bytes go into the buffer an idle one left.
    #[tokio::test]
    async fn detection_reads_into_a_spare_buffer() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut io, _) = listener.accept().await.unwrap();
        let spare = BytesMut::with_capacity(4096);
        let lent = spare.as_ptr();
        crate::filter::http::h1::lend_read(spare);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        match detect(&mut io).await {
            Some(Codec::Http1(read)) => {
                assert_eq!(&read[..], b"GET / HTTP/1.1\r\n");
                assert_eq!(read.as_ptr(), lent, "the spare, not a new buffer");
            }
            _ => panic!("not taken for HTTP/1.1"),
        }
    }
}
