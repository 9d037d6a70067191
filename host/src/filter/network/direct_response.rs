//! `envoy.filters.network.direct_response`: writes a fixed response and
//! closes the connection.

use std::time::Duration;

use super::Downstream;
use super::io::{Sink, Source};

/// How long to wait for the client's own close after ours. Closing with
/// unread input makes the kernel send RST, which can destroy the response
/// before the client reads it; draining briefly avoids that.
const LINGER: Duration = Duration::from_secs(1);

pub async fn serve(d: Downstream, response: &[u8]) {
    if d.write_all(response).await.is_err() {
        return;
    }
    d.close_write().await;
    let drain = async {
        let mut buf = [0u8; 1024];
        while matches!(d.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
