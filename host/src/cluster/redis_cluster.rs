//! `envoy.clusters.redis`: a cluster whose members are a Redis Cluster's
//! masters, found by asking any known node `CLUSTER SLOTS` (the configured
//! endpoints are only the seeds). Refreshed every `cluster_refresh_rate`,
//! and early when a worker saw a MOVED redirection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::path::join;
use crate::config::{LocalityConfig, RedisClusterConfig, ValidationError};

use super::lb::SlotRange;
use super::{Cluster, Endpoint, EndpointAddress};

#[derive(Debug, Clone)]
pub struct RedisClusterSettings {
    pub refresh_rate: Duration,
    pub refresh_timeout: Duration,
}

impl RedisClusterSettings {
    pub fn validate(c: &RedisClusterConfig, path: &str) -> Result<Self, ValidationError> {
        let refresh_rate = c
            .cluster_refresh_rate
            .map_or(Duration::from_secs(5), |d| d.0);
        let refresh_timeout = c
            .cluster_refresh_timeout
            .map_or(Duration::from_secs(3), |d| d.0);
        if refresh_rate.is_zero() || refresh_timeout.is_zero() {
            return Err(ValidationError::new(
                join(path, "typed_config"),
                "cluster_refresh_rate and cluster_refresh_timeout must be greater than zero",
            ));
        }
        Ok(RedisClusterSettings {
            refresh_rate,
            refresh_timeout,
        })
    }
}

/// Asks the known nodes, then the seeds, for the slot map; publishes the
/// first answer. Returns whether one came.
pub async fn discover_once(cluster: &Cluster) -> bool {
    let Some(settings) = &cluster.settings.redis_cluster else {
        return false;
    };
    let mut candidates: Vec<SocketAddr> =
        cluster.endpoints().all.iter().map(|e| e.address).collect();
    for seed in &cluster.settings.endpoints {
        match &seed.address {
            EndpointAddress::Ip(a) => candidates.push(*a),
            EndpointAddress::Dns { host, port } => {
                if let Ok(found) = tokio::net::lookup_host((host.as_str(), *port)).await {
                    candidates.extend(found);
                }
            }
        }
    }
    let auth = cluster.settings.redis_auth.as_ref().map(|a| a.command());
    for addr in candidates {
        let ask = cluster_slots(addr, auth.as_ref());
        match tokio::time::timeout(settings.refresh_timeout, ask).await {
            Ok(Ok(ranges)) if !ranges.is_empty() => {
                let mut masters: Vec<SocketAddr> = ranges.iter().map(|r| r.master).collect();
                masters.sort();
                masters.dedup();
                let endpoints = masters
                    .into_iter()
                    .map(|a| {
                        Arc::new(Endpoint::new(
                            a,
                            String::new(),
                            1,
                            0,
                            LocalityConfig::default(),
                        ))
                    })
                    .collect();
                cluster.publish_with_slots(endpoints, Arc::new(ranges));
                return true;
            }
            Ok(Ok(_)) => {
                tracing::warn!(cluster = %cluster.name(), %addr, "CLUSTER SLOTS returned no slots")
            }
            Ok(Err(e)) => {
                tracing::debug!(cluster = %cluster.name(), %addr, error = %e, "CLUSTER SLOTS failed")
            }
            Err(_) => tracing::debug!(cluster = %cluster.name(), %addr, "CLUSTER SLOTS timed out"),
        }
    }
    false
}

/// Keeps the slot map fresh until `shutdown`.
pub async fn refresh(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let Some(rate) = cluster
        .settings
        .redis_cluster
        .as_ref()
        .map(|s| s.refresh_rate)
    else {
        return;
    };
    let attempt = cluster.scope().counter("update_attempt");
    let success = cluster.scope().counter("update_success");
    let failure = cluster.scope().counter("update_failure");
    loop {
        tokio::select! {
            _ = tokio::time::sleep(rate) => {}
            _ = cluster.refresh_requested() => {}
            _ = shutdown.changed() => return,
        }
        attempt.inc();
        if discover_once(&cluster).await {
            success.inc();
        } else {
            failure.inc();
        }
    }
}

async fn cluster_slots(addr: SocketAddr, auth: Option<&Bytes>) -> std::io::Result<Vec<SlotRange>> {
    let mut stream = TcpStream::connect(addr).await?;
    if let Some(auth) = auth {
        stream.write_all(auth).await?;
        if read_value(&mut stream).await? != Value::Simple("OK".into()) {
            return Err(std::io::Error::other("AUTH refused"));
        }
    }
    stream
        .write_all(b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n")
        .await?;
    let Value::Array(entries) = read_value(&mut stream).await? else {
        return Err(std::io::Error::other("CLUSTER SLOTS: not an array"));
    };
    let mut ranges = Vec::new();
    for entry in entries {
        // [start, end, [ip, port, id, ...], replicas...]
        let Value::Array(parts) = entry else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let (Some(Value::Bulk(ip)), Some(Value::Int(port))) = (master.first(), master.get(1))
        else {
            continue;
        };
        let ip = String::from_utf8_lossy(ip);
        // An empty IP means "the node you asked".
        let ip = if ip.is_empty() {
            addr.ip()
        } else {
            ip.parse().map_err(std::io::Error::other)?
        };
        ranges.push(SlotRange {
            start: *start as u16,
            end: *end as u16,
            master: SocketAddr::new(ip, *port as u16),
        });
    }
    Ok(ranges)
}

/// A parsed RESP2 reply (only what discovery needs to read).
#[derive(Debug, PartialEq)]
enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

async fn read_value(stream: &mut TcpStream) -> std::io::Result<Value> {
    let mut buf = Vec::new();
    loop {
        if let Some((v, _)) = parse(&buf, 0)? {
            return Ok(v);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 * 1024 {
            return Err(std::io::Error::other("reply too large"));
        }
    }
}

/// Parses one value at `at`; `None` if incomplete.
fn parse(buf: &[u8], at: usize) -> std::io::Result<Option<(Value, usize)>> {
    let bad = || std::io::Error::other("malformed reply");
    let Some(rel) = buf
        .get(at..)
        .and_then(|b| b.windows(2).position(|w| w == b"\r\n"))
    else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[at + 1..at + rel]).map_err(|_| bad())?;
    let next = at + rel + 2;
    let int = || line.parse::<i64>().map_err(|_| bad());
    Ok(match buf[at] {
        b'+' => Some((Value::Simple(line.to_string()), next)),
        b'-' => Some((Value::Error(line.to_string()), next)),
        b':' => Some((Value::Int(int()?), next)),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Some((Value::Nil, next)));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Some((Value::Bulk(buf[next..end].to_vec()), end + 2))
        }
        b'*' => {
            let n = int()?;
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..n.max(0) {
                match parse(buf, pos)? {
                    Some((v, p)) => {
                        items.push(v);
                        pos = p;
                    }
                    None => return Ok(None),
                }
            }
            Some((Value::Array(items), pos))
        }
        _ => return Err(bad()),
    })
}
