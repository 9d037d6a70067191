//! Moving bytes between sockets with bounded buffers.
//!
//! Both directions of a proxied connection run on the same task and borrow
//! the same sockets (tokio's `readable`/`try_read` take `&self`), so no
//! split, lock or extra task is needed. A direction reads at most `limit`
//! bytes, then writes them all before reading again: a slow reader on one
//! side stops the reads on the other, which is the backpressure
//! per_connection_buffer_limit_bytes asks for. The buffer is allocated on the
//! first byte, so idle connections cost no buffer memory.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::Counter;

/// Largest buffer one direction holds, whatever the configured limit.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Where a direction reads from.
#[allow(async_fn_in_trait)] // used on one worker; the futures need not be Send
pub trait Source {
    /// Waits until a read would not block (bytes or EOF are there).
    async fn readable(&self) -> io::Result<()>;
    /// Waits for bytes; `Ok(0)` is EOF.
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Waits for bytes and appends them to `buf` (growing it, without
    /// zeroing); `Ok(0)` is EOF. Cancel-safe: nothing is lost if the future
    /// is dropped.
    async fn read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
}

/// How much free room a `read_buf` makes sure of before reading.
const READ_RESERVE: usize = 16 * 1024;

/// Where a direction writes to.
#[allow(async_fn_in_trait)]
pub trait Sink {
    async fn write_all(&self, data: &[u8]) -> io::Result<()>;
    /// Sends FIN (the peer sees EOF) while still allowing reads.
    async fn close_write(&self);
}

impl Source for TcpStream {
    async fn readable(&self) -> io::Result<()> {
        TcpStream::readable(self).await
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) if n > 0 && n < buf.len() => {
                    forget_readiness(self);
                    return Ok(n);
                }
                other => return other,
            }
        }
    }

    async fn read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            self.readable().await?;
            if buf.capacity() - buf.len() < READ_RESERVE / 4 {
                buf.reserve(READ_RESERVE);
            }
            let room = buf.capacity() - buf.len();
            match self.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) if n > 0 && n < room => {
                    forget_readiness(self);
                    return Ok(n);
                }
                other => return other,
            }
        }
    }
}

impl Sink for TcpStream {
    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            self.writable().await?;
            match self.try_write(data) {
                Ok(k) => data = &data[k..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn close_write(&self) {
        let _ = socket2::SockRef::from(self).shutdown(Shutdown::Write);
    }
}

/// After a short read the socket is empty: forget its readiness now rather
/// than learn it from one more `recv()` returning EAGAIN (a syscall per
/// request saved on request/response traffic). Data arriving later raises a
/// new edge, and tokio ignores a clear older than its latest event, so
/// nothing is missed.
fn forget_readiness(s: &TcpStream) {
    let _ = s.try_io(Interest::READABLE, || {
        Err::<(), _>(io::ErrorKind::WouldBlock.into())
    });
}

/// Copies `from` → `to` until `from` reaches EOF, then half-closes `to`.
/// `activity` is stamped on every read; `copied` and `counters` grow by
/// every chunk written.
pub async fn pump(
    from: &impl Source,
    to: &impl Sink,
    limit: usize,
    activity: &Cell<Instant>,
    copied: &Cell<u64>,
    counters: &[&Counter],
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.is_empty() {
            from.readable().await?;
            buf.resize(limit.clamp(1, MAX_CHUNK), 0);
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.close_write().await;
            return Ok(());
        }
        activity.set(Instant::now());
        to.write_all(&buf[..n]).await?;
        copied.set(copied.get() + n as u64);
        for c in counters {
            c.add(n as u64);
        }
    }
}

/// Resolves once `activity` (when the connection last did something) is
/// `timeout` old; never without a timeout. One timer, re-armed only when
/// it fires, so activity itself only stores an instant.
pub async fn idle(timeout: Option<Duration>, activity: &Cell<Instant>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    loop {
        let due = activity.get() + timeout;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}
