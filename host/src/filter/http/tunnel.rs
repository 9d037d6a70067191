//! The bytes of an upgraded request (a WebSocket, say), carried both ways
//! between the downstream client and the upstream connection that switched
//! protocols, whichever codec the client came in on.

use std::io;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::Counter;

/// The upstream connection of a CONNECT wasp ends itself (a route's
/// `connect_config`), riding on the 200 answer as an extension until the
/// downstream codec has sent the answer and takes it. (Extensions must be
/// `Clone + Send + Sync`; the lock is taken once per tunnel.)
#[derive(Clone)]
pub struct ConnectTunnel(Arc<Mutex<Option<TcpStream>>>);

impl ConnectTunnel {
    pub fn new(upstream: TcpStream) -> Self {
        ConnectTunnel(Arc::new(Mutex::new(Some(upstream))))
    }

    /// The connection, for the one codec that carries the tunnel.
    pub fn take(&self) -> Option<TcpStream> {
        self.0.lock().ok()?.take()
    }
}

/// Copies bytes from `client` to `upstream` and back until both have
/// ended their side (each end passed on to the other), or nothing has gone
/// either way for `idle` (as Envoy closes an upgraded stream after
/// `stream_idle_timeout`). `counted` adds the client's bytes received and
/// sent to a connection's counters where its codec does not count them.
pub async fn carry(
    client: impl AsyncRead + AsyncWrite,
    upstream: impl AsyncRead + AsyncWrite,
    idle: Option<Duration>,
    counted: Option<(&Counter, &Counter)>,
) -> io::Result<()> {
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    let (mut up, mut down) = (vec![0; 16 * 1024], vec![0; 16 * 1024]);
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        let idle = async {
            match idle {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = from_client.read(&mut up), if client_open => match n? {
                0 => {
                    client_open = false;
                    to_upstream.shutdown().await?;
                }
                n => {
                    if let Some((rx, _)) = counted {
                        rx.add(n as u64);
                    }
                    to_upstream.write_all(&up[..n]).await?;
                }
            },
            n = from_upstream.read(&mut down), if upstream_open => match n? {
                0 => {
                    upstream_open = false;
                    to_client.shutdown().await?;
                }
                n => {
                    to_client.write_all(&down[..n]).await?;
                    if let Some((_, tx)) = counted {
                        tx.add(n as u64);
                    }
                }
            },
            () = idle => break,
        }
    }
    Ok(())
}
