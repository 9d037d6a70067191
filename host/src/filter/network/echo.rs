//! `envoy.filters.network.echo`: writes back whatever it reads.

use std::cell::Cell;

use tokio::time::Instant;

use super::{Downstream, io};

pub async fn serve(d: Downstream) {
    let activity = Cell::new(Instant::now());
    let copied = Cell::new(0);
    let _ = io::pump(&d, &d, d.buffer_limit, &activity, &copied, &[]).await;
}
