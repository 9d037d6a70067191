//! `envoy.filters.network.direct_response`: writes a fixed response and
//! closes the connection.

use std::time::Duration;

use super::{Downstream, io};

/// How long to wait for the client's own close after ours. Closing with
/// unread input makes the kernel send RST, which can destroy the response
/// before the client reads it; draining briefly avoids that.
const LINGER: Duration = Duration::from_secs(1);

pub async fn serve(d: Downstream, response: &[u8]) {
    if io::write_all(&d.stream, response).await.is_err() {
        return;
    }
    io::half_close(&d.stream);
    let drain = async {
        let mut buf = [0u8; 1024];
        loop {
            if d.stream.readable().await.is_err() {
                return;
            }
            match d.stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
