//! Moving bytes between sockets with bounded buffers.
//!
//! Both directions of a proxied connection run on the same task and borrow
//! the same `TcpStream`s (tokio's `readable`/`try_read` take `&self`), so no
//! split, lock or extra task is needed. A direction reads at most `limit`
//! bytes, then writes them all before reading again: a slow reader on one
//! side stops the reads on the other, which is the backpressure
//! per_connection_buffer_limit_bytes asks for. The buffer is allocated on the
//! first byte, so idle connections cost no buffer memory.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::stats::Counter;

/// Largest buffer one direction holds, whatever the configured limit.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Copies `from` → `to` until `from` reaches EOF, then half-closes `to`.
/// `activity` is stamped on every read; `copied` and `counters` grow by
/// every chunk written.
pub async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    limit: usize,
    activity: &Cell<Instant>,
    copied: &Cell<u64>,
    counters: &[&Counter],
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.is_empty() {
            buf.resize(limit.clamp(1, MAX_CHUNK), 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => {
                half_close(to);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        activity.set(Instant::now());
        write_all(to, &buf[..n]).await?;
        copied.set(copied.get() + n as u64);
        for c in counters {
            c.add(n as u64);
        }
    }
}

/// Writes all of `data`, waiting for the socket to drain as needed.
pub async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends FIN on `s` (the peer sees EOF) while still allowing reads.
pub fn half_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}
