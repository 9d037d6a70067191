//! What a downstream connection speaks, when the codec is AUTO: HTTP/2
//! clients (prior knowledge) open with a fixed preface, anything else is
//! taken for HTTP/1.1.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
/// away first.
pub async fn detect(io: &mut TcpStream) -> Option<Codec> {
    use tokio::io::AsyncReadExt;
    let mut read = BytesMut::with_capacity(8 * 1024);
    loop {
        if io.read_buf(&mut read).await.ok()? == 0 {
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

/// A connection whose first bytes were already read: they are read again
/// first (hyper's HTTP/2 server gets the preface the sniffing took).
pub struct Prefixed {
    first: Bytes,
    io: TcpStream,
}

impl Prefixed {
    pub fn new(first: Bytes, io: TcpStream) -> Self {
        Prefixed { first, io }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.first.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.first.len().min(buf.remaining());
        buf.put_slice(&this.first.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
