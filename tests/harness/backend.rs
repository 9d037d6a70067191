//! Real TCP backends on loopback, each on its own threads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A backend that stops accepting when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (s, a) = (stop.clone(), accepted.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if s.load(Ordering::Relaxed) {
                return;
            }
            let Ok(conn) = conn else { continue };
            a.fetch_add(1, Ordering::Relaxed);
            let h = handler.clone();
            std::thread::spawn(move || h(conn));
        }
    });
    Backend {
        addr,
        stop,
        accepted,
    }
}

/// Echoes every byte back, with a 64 KiB buffer, and half-closes after the
/// client does.
pub fn echo() -> Backend {
    serve(|mut conn| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = conn.shutdown(std::net::Shutdown::Write);
    })
}

/// Writes `name\n` to every connection, then waits for the client to close
/// (so that the connection stays open as long as the client wants).
pub fn named(name: &'static str) -> Backend {
    serve(move |mut conn| {
        let _ = conn.write_all(format!("{name}\n").as_bytes());
        let mut buf = [0u8; 256];
        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    })
}
