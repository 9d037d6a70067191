//! DNS discovery for STRICT_DNS and LOGICAL_DNS clusters, run on the main
//! thread: resolve every named endpoint, publish the result, sleep
//! `dns_refresh_rate`, repeat. A failed lookup keeps the last good answer.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{DiscoveryType, DnsLookupFamily};

use super::{Cluster, Endpoint, EndpointAddress};

/// Resolves `cluster` once and publishes the result. Returns whether every
/// name resolved.
pub async fn resolve_once(cluster: &Cluster) -> bool {
    let settings = &cluster.settings;
    let mut all = Vec::new();
    let mut ok = true;
    for spec in &settings.endpoints {
        let addrs: Vec<SocketAddr> = match &spec.address {
            EndpointAddress::Ip(a) => vec![*a],
            EndpointAddress::Dns { host, port } => {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(found) => pick(found.collect(), settings.dns_lookup_family),
                    Err(e) => {
                        tracing::warn!(cluster = %settings.name, %host, error = %e, "DNS resolution failed");
                        ok = false;
                        continue;
                    }
                }
            }
        };
        let addrs = if settings.discovery == DiscoveryType::LogicalDns {
            addrs.into_iter().take(1).collect()
        } else {
            addrs
        };
        for addr in addrs {
            all.push(Arc::new(Endpoint::new(
                addr,
                spec.hostname.clone(),
                spec.weight,
                spec.priority,
                spec.locality.clone(),
            )));
        }
    }
    if ok || !all.is_empty() {
        cluster.publish(all);
    }
    ok
}

/// Keeps a DNS cluster's membership fresh until `shutdown` fires.
pub async fn refresh(cluster: Arc<Cluster>, mut shutdown: watch::Receiver<bool>) {
    let update_attempt = cluster.scope().counter("update_attempt");
    let update_success = cluster.scope().counter("update_success");
    let update_failure = cluster.scope().counter("update_failure");
    loop {
        update_attempt.inc();
        if resolve_once(&cluster).await {
            update_success.inc();
        } else {
            update_failure.inc();
        }
        tokio::select! {
            _ = tokio::time::sleep(cluster.settings.dns_refresh_rate) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Applies `dns_lookup_family` to a lookup's answers, in their order.
fn pick(found: Vec<SocketAddr>, family: DnsLookupFamily) -> Vec<SocketAddr> {
    let v4: Vec<SocketAddr> = found.iter().copied().filter(SocketAddr::is_ipv4).collect();
    let v6: Vec<SocketAddr> = found.iter().copied().filter(SocketAddr::is_ipv6).collect();
    match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::All => found,
        // AUTO prefers IPv6 (Envoy's definition), V4_PREFERRED the reverse.
        DnsLookupFamily::Auto if !v6.is_empty() => v6,
        DnsLookupFamily::Auto => v4,
        DnsLookupFamily::V4Preferred if !v4.is_empty() => v4,
        DnsLookupFamily::V4Preferred => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_family_filters_answers() {
        let found: Vec<SocketAddr> =
            vec!["[::1]:80".parse().unwrap(), "127.0.0.1:80".parse().unwrap()];
        assert_eq!(pick(found.clone(), DnsLookupFamily::V4Only), vec![found[1]]);
        assert_eq!(pick(found.clone(), DnsLookupFamily::Auto), vec![found[0]]);
        assert_eq!(
            pick(found.clone(), DnsLookupFamily::V4Preferred),
            vec![found[1]]
        );
        assert_eq!(pick(found.clone(), DnsLookupFamily::All).len(), 2);
    }
}
