//! Clusters: named groups of upstream endpoints, how they are discovered and
//! how one is chosen.
//!
//! The main thread owns each [`Cluster`] and publishes its membership as an
//! immutable [`EndpointSet`] through an `ArcSwap`; DNS refreshes (and, later,
//! health checks) publish new sets. Each worker wraps every cluster in a
//! [`WorkerCluster`] with its own load balancer state and stat shards, so
//! choosing and connecting take no lock.

pub mod circuit_breaker;
pub mod dns;
pub mod endpoint;
pub mod health;
pub mod lb;
pub mod redis_cluster;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use crate::config::path::{index, join};
use crate::config::{
    ClusterConfig, DiscoveryType, DnsLookupFamily, LbPolicy, LocalityConfig, ValidationError,
};
use crate::filter::http::h2::Http2Settings;
use crate::stats::{Counter, Gauge, Histogram, Scope};

pub use circuit_breaker::{Breaker, CircuitBreakers, Held, Priority, Thresholds};

pub use endpoint::{Endpoint, EndpointSet};
pub use lb::{LbContext, LbSettings, LoadBalancer};

/// Where a configured endpoint is.
#[derive(Debug, Clone)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

/// A configured endpoint, before resolution.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub address: EndpointAddress,
    pub hostname: String,
    pub weight: u32,
    pub priority: u32,
    pub locality: LocalityConfig,
}

/// A validated cluster config.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub name: String,
    pub discovery: DiscoveryType,
    pub connect_timeout: Duration,
    pub lb: LbSettings,
    pub endpoints: Vec<EndpointSpec>,
    pub dns_refresh_rate: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    pub per_connection_buffer_limit_bytes: u32,
    /// How HTTP is spoken to the endpoints.
    pub upstream_http: UpstreamHttp,
    pub health_checks: Vec<health::HealthCheckSettings>,
    /// Credentials for the cluster's Redis servers (its redis_proxy
    /// protocol options).
    pub redis_auth: Option<RedisAuth>,
    /// `cluster_type: envoy.clusters.redis`: the endpoints are seeds, the
    /// members come from CLUSTER SLOTS.
    pub redis_cluster: Option<redis_cluster::RedisClusterSettings>,
    /// The circuit breakers' limits, per [`Priority`].
    pub circuit_breakers: [Thresholds; 2],
}

/// Which HTTP version a cluster's requests go out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// The client's: HTTP/2 for HTTP/2 clients, HTTP/1.1 for the others.
    Downstream,
}

/// How a cluster's HTTP connections are used.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamHttp {
    pub protocol: UpstreamProtocol,
    /// `http2_protocol_options`' settings, for HTTP/2 connections.
    pub http2: Http2Settings,
    /// How long a connection may sit unused before it is closed (Envoy's
    /// default: an hour).
    pub idle_timeout: Duration,
    /// After this many requests a connection takes no more.
    pub max_requests_per_connection: Option<u32>,
}

impl UpstreamHttp {
    fn new(
        protocol: UpstreamProtocol,
        http2: Http2Settings,
        idle_timeout: Option<Duration>,
        max_requests_per_connection: Option<u32>,
    ) -> Self {
        UpstreamHttp {
            protocol,
            http2,
            // Zero turns the timeout off, in Envoy as here.
            idle_timeout: match idle_timeout {
                None => Duration::from_secs(3600),
                Some(d) if d.is_zero() => Duration::MAX,
                Some(d) => d,
            },
            max_requests_per_connection: max_requests_per_connection.filter(|&n| n > 0),
        }
    }

    /// Whether a connection that has carried `requests` takes no more
    /// (max_requests_per_connection).
    pub fn spent(&self, requests: u32) -> bool {
        self.max_requests_per_connection
            .is_some_and(|max| requests >= max)
    }

    /// Whether a request from a client speaking `downstream` goes out in
    /// HTTP/2.
    pub fn http2(&self, downstream: http::Version) -> bool {
        match self.protocol {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => downstream == http::Version::HTTP_2,
        }
    }
}

/// Redis AUTH credentials.
#[derive(Debug, Clone)]
pub struct RedisAuth {
    pub username: Option<bytes::Bytes>,
    pub password: bytes::Bytes,
}

impl RedisAuth {
    /// The AUTH command, RESP-encoded.
    pub fn command(&self) -> bytes::Bytes {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = &self.username {
            args.push(u);
        }
        args.push(&self.password);
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out.into()
    }
}

const DEFAULT_BUFFER_LIMIT: u32 = 1024 * 1024;

impl ClusterConfig {
    /// Checks the rules Envoy enforces on a cluster; `path` is its YAML path.
    pub fn validate(&self, path: &str) -> Result<ClusterSettings, ValidationError> {
        if self.name.is_empty() {
            return Err(ValidationError::new(
                join(path, "name"),
                "cluster name must not be empty",
            ));
        }
        let connect_timeout = self.connect_timeout.map_or(Duration::from_secs(5), |d| d.0);
        if connect_timeout.is_zero() {
            return Err(ValidationError::new(
                join(path, "connect_timeout"),
                "connect_timeout must be greater than zero",
            ));
        }
        let lb = self.lb_settings(path)?;
        let redis_cluster = match &self.cluster_type {
            None if lb.policy() == LbPolicy::ClusterProvided => {
                return Err(ValidationError::new(
                    join(path, "lb_policy"),
                    "CLUSTER_PROVIDED needs a cluster_type (envoy.clusters.redis)",
                ));
            }
            None => None,
            Some(ct) => {
                if lb.policy() != LbPolicy::ClusterProvided {
                    return Err(ValidationError::new(
                        join(path, "lb_policy"),
                        "a cluster_type cluster balances itself: set lb_policy: CLUSTER_PROVIDED",
                    ));
                }
                let crate::config::ClusterTypeConfig::Redis(r) = &ct.config;
                Some(redis_cluster::RedisClusterSettings::validate(
                    r,
                    &join(path, "cluster_type"),
                )?)
            }
        };
        let endpoints = self.endpoint_specs(path)?;
        if self.discovery_type == DiscoveryType::LogicalDns && endpoints.len() != 1 {
            return Err(ValidationError::new(
                join(path, "load_assignment"),
                "a LOGICAL_DNS cluster must have exactly one endpoint",
            ));
        }
        let dns_refresh_rate = self
            .dns_refresh_rate
            .map_or(Duration::from_secs(5), |d| d.0);
        if dns_refresh_rate < Duration::from_millis(1) {
            return Err(ValidationError::new(
                join(path, "dns_refresh_rate"),
                "dns_refresh_rate must be at least 1ms",
            ));
        }
        let health_checks = self
            .health_checks
            .iter()
            .enumerate()
            .map(|(i, hc)| {
                health::HealthCheckSettings::validate(hc, &index(&join(path, "health_checks"), i))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let redis_auth = self.redis_auth(path)?;
        let upstream_http = self.upstream_http(path)?;
        Ok(ClusterSettings {
            name: self.name.clone(),
            discovery: self.discovery_type,
            connect_timeout,
            lb,
            endpoints,
            dns_refresh_rate,
            dns_lookup_family: self.dns_lookup_family,
            per_connection_buffer_limit_bytes: self
                .per_connection_buffer_limit_bytes
                .unwrap_or(DEFAULT_BUFFER_LIMIT),
            upstream_http,
            health_checks,
            redis_auth,
            redis_cluster,
            circuit_breakers: Thresholds::validate(self.circuit_breakers.as_ref(), path)?,
        })
    }

    /// Reads the HTTP protocol options: v3's
    /// `typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]`,
    /// or v2's fields on the cluster itself (not both, as in Envoy).
    fn upstream_http(&self, path: &str) -> Result<UpstreamHttp, ValidationError> {
        const KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
        let at = format!("{}.{KEY}", join(path, "typed_extension_protocol_options"));
        let typed = match self
            .typed_extension_protocol_options
            .as_ref()
            .and_then(|o| o.get(KEY))
        {
            None => None,
            Some(v) => Some(
                serde_json::from_value::<crate::config::UpstreamHttpProtocolOptionsConfig>(
                    v.clone(),
                )
                .map_err(|e| ValidationError::new(at.clone(), e.to_string()))?,
            ),
        };
        let legacy = self.http2_protocol_options.is_some()
            || self.http_protocol_options.is_some()
            || self.common_http_protocol_options.is_some()
            || self.max_requests_per_connection.is_some();
        if typed.is_some() && legacy {
            return Err(ValidationError::new(
                at,
                "HttpProtocolOptions cannot be used with the cluster's own http_protocol_options, \
                 http2_protocol_options, common_http_protocol_options or max_requests_per_connection",
            ));
        }
        let Some(t) = typed else {
            let common = self.common_http_protocol_options.as_ref();
            no_upstream_stream_duration(common, &join(path, "common_http_protocol_options"))?;
            let http2 = match &self.http2_protocol_options {
                Some(h2) => {
                    Http2Settings::validate_upstream(h2, &join(path, "http2_protocol_options"))?
                }
                None => Http2Settings::default(),
            };
            return Ok(UpstreamHttp::new(
                if self.http2_protocol_options.is_some() {
                    UpstreamProtocol::Http2
                } else {
                    UpstreamProtocol::Http1
                },
                http2,
                common.and_then(|c| c.idle_timeout).map(|d| d.0),
                self.max_requests_per_connection
                    .or(common.and_then(|c| c.max_requests_per_connection)),
            ));
        };
        let (versions, chosen) = match (
            &t.explicit_http_config,
            &t.use_downstream_protocol_config,
            &t.auto_config,
        ) {
            (Some(v), None, None) => (v, "explicit_http_config"),
            (None, Some(v), None) => (v, "use_downstream_protocol_config"),
            (None, None, Some(v)) => (v, "auto_config"),
            _ => {
                return Err(ValidationError::new(
                    at,
                    "exactly one of explicit_http_config, use_downstream_protocol_config \
                     and auto_config must be set",
                ));
            }
        };
        if versions.http3_protocol_options.is_some() {
            return Err(ValidationError::new(
                format!("{at}.{chosen}.http3_protocol_options"),
                "HTTP/3 upstreams are not supported",
            ));
        }
        let protocol = match chosen {
            "explicit_http_config" if versions.http2_protocol_options.is_some() => {
                UpstreamProtocol::Http2
            }
            "use_downstream_protocol_config" if versions.http2_protocol_options.is_some() => {
                UpstreamProtocol::Downstream
            }
            _ => UpstreamProtocol::Http1,
        };
        let http2 = match &versions.http2_protocol_options {
            Some(h2) => Http2Settings::validate_upstream(
                h2,
                &format!("{at}.{chosen}.http2_protocol_options"),
            )?,
            None => Http2Settings::default(),
        };
        let common = t.common_http_protocol_options.as_ref();
        no_upstream_stream_duration(common, &format!("{at}.common_http_protocol_options"))?;
        Ok(UpstreamHttp::new(
            protocol,
            http2,
            common.and_then(|c| c.idle_timeout).map(|d| d.0),
            common.and_then(|c| c.max_requests_per_connection),
        ))
    }

    /// Reads `typed_extension_protocol_options["envoy.filters.network.redis_proxy"]`.
    fn redis_auth(&self, path: &str) -> Result<Option<RedisAuth>, ValidationError> {
        let at = join(path, "typed_extension_protocol_options");
        let Some(options) = self.typed_extension_protocol_options.as_ref() else {
            return Ok(None);
        };
        let Some(entry) = ["envoy.filters.network.redis_proxy", "envoy.redis_proxy"]
            .iter()
            .find_map(|k| options.get(*k))
        else {
            return Ok(None);
        };
        let parsed: crate::config::RedisProtocolOptionsConfig =
            serde_json::from_value(entry.clone()).map_err(|e| {
                ValidationError::new(at.clone(), format!("redis protocol options: {e}"))
            })?;
        let load = |d: &Option<crate::config::DataSourceConfig>| {
            d.as_ref()
                .map(|d| d.load().map(bytes::Bytes::from))
                .transpose()
                .map_err(|m| ValidationError::new(at.clone(), m))
        };
        let password = load(&parsed.auth_password)?;
        let username = load(&parsed.auth_username)?;
        Ok(password.map(|password| RedisAuth { username, password }))
    }

    fn lb_settings(&self, path: &str) -> Result<LbSettings, ValidationError> {
        let stray = |field: &str, wanted: &str| {
            ValidationError::new(
                join(path, field),
                format!("`{field}` applies only to lb_policy {wanted}"),
            )
        };
        if self.ring_hash_lb_config.is_some() && self.lb_policy != LbPolicy::RingHash {
            return Err(stray("ring_hash_lb_config", "RING_HASH"));
        }
        if self.maglev_lb_config.is_some() && self.lb_policy != LbPolicy::Maglev {
            return Err(stray("maglev_lb_config", "MAGLEV"));
        }
        if self.least_request_lb_config.is_some() && self.lb_policy != LbPolicy::LeastRequest {
            return Err(stray("least_request_lb_config", "LEAST_REQUEST"));
        }
        Ok(match self.lb_policy {
            LbPolicy::RoundRobin => LbSettings::RoundRobin,
            LbPolicy::ClusterProvided => LbSettings::ClusterProvided,
            LbPolicy::Random => LbSettings::Random,
            LbPolicy::LeastRequest => {
                let c = self.least_request_lb_config.clone().unwrap_or_default();
                let choice_count = c.choice_count.unwrap_or(2);
                if choice_count < 2 {
                    return Err(ValidationError::new(
                        join(path, "least_request_lb_config.choice_count"),
                        "choice_count must be at least 2",
                    ));
                }
                let bias = c.active_request_bias.map_or(1.0, |b| b.default_value);
                if bias.is_nan() || bias < 0.0 {
                    return Err(ValidationError::new(
                        join(path, "least_request_lb_config.active_request_bias"),
                        "active_request_bias must be non-negative",
                    ));
                }
                LbSettings::LeastRequest {
                    choice_count,
                    active_request_bias: bias,
                }
            }
            LbPolicy::RingHash => {
                let c = self.ring_hash_lb_config.clone().unwrap_or_default();
                let min = c.minimum_ring_size.unwrap_or(1024);
                let max = c.maximum_ring_size.unwrap_or(8 * 1024 * 1024);
                let at = join(path, "ring_hash_lb_config");
                if min == 0 || max > 8 * 1024 * 1024 {
                    return Err(ValidationError::new(
                        at,
                        "ring sizes must be between 1 and 8388608",
                    ));
                }
                if min > max {
                    return Err(ValidationError::new(
                        at,
                        format!("minimum_ring_size ({min}) exceeds maximum_ring_size ({max})"),
                    ));
                }
                LbSettings::RingHash {
                    minimum_ring_size: min,
                    maximum_ring_size: max,
                }
            }
            LbPolicy::Maglev => {
                let size = self
                    .maglev_lb_config
                    .as_ref()
                    .and_then(|c| c.table_size)
                    .unwrap_or(65537);
                if !is_prime(size) || size > 5_000_011 {
                    return Err(ValidationError::new(
                        join(path, "maglev_lb_config.table_size"),
                        format!("table_size {size} must be a prime no larger than 5000011"),
                    ));
                }
                LbSettings::Maglev { table_size: size }
            }
        })
    }

    fn endpoint_specs(&self, path: &str) -> Result<Vec<EndpointSpec>, ValidationError> {
        // Redis Cluster seeds may be names too.
        let dns = self.discovery_type != DiscoveryType::Static || self.cluster_type.is_some();
        let mut specs = Vec::new();
        let mut push = |addr_path: String,
                        address: &crate::config::AddressConfig,
                        hostname: Option<&String>,
                        weight: Option<u32>,
                        priority: u32,
                        locality: &LocalityConfig|
         -> Result<(), ValidationError> {
            let Some(sa) = &address.socket_address else {
                return Err(ValidationError::new(
                    addr_path,
                    "only socket_address endpoints are supported",
                ));
            };
            let ip = sa.address.parse::<IpAddr>().ok();
            let address = match (ip, dns) {
                (Some(ip), _) => EndpointAddress::Ip(SocketAddr::new(ip, sa.port_value)),
                (None, true) => EndpointAddress::Dns {
                    host: sa.address.clone(),
                    port: sa.port_value,
                },
                (None, false) => {
                    return Err(ValidationError::new(
                        join(&join(&addr_path, "socket_address"), "address"),
                        format!(
                            "`{}` is not an IP address; a STATIC cluster needs IPs (use type STRICT_DNS for names)",
                            sa.address
                        ),
                    ));
                }
            };
            if sa.port_value == 0 {
                return Err(ValidationError::new(
                    join(&join(&addr_path, "socket_address"), "port_value"),
                    "an endpoint needs a port_value between 1 and 65535",
                ));
            }
            if weight == Some(0) {
                return Err(ValidationError::new(
                    addr_path,
                    "load_balancing_weight must be at least 1",
                ));
            }
            specs.push(EndpointSpec {
                hostname: hostname.cloned().unwrap_or_else(|| match &address {
                    EndpointAddress::Dns { host, .. } => host.clone(),
                    EndpointAddress::Ip(_) => String::new(),
                }),
                address,
                weight: weight.unwrap_or(1),
                priority,
                locality: locality.clone(),
            });
            Ok(())
        };
        if let Some(hosts) = &self.hosts {
            if self.load_assignment.is_some() {
                return Err(ValidationError::new(
                    join(path, "hosts"),
                    "set either `hosts` or `load_assignment`, not both",
                ));
            }
            for (i, h) in hosts.iter().enumerate() {
                push(
                    index(&join(path, "hosts"), i),
                    h,
                    None,
                    None,
                    0,
                    &LocalityConfig::default(),
                )?;
            }
        }
        if let Some(la) = &self.load_assignment {
            let la_path = join(path, "load_assignment");
            for (i, group) in la.endpoints.iter().enumerate() {
                let group_path = index(&join(&la_path, "endpoints"), i);
                let locality = group.locality.clone().unwrap_or_default();
                for (j, lb_endpoint) in group.lb_endpoints.iter().enumerate() {
                    let ep_path = index(&join(&group_path, "lb_endpoints"), j);
                    push(
                        join(&join(&ep_path, "endpoint"), "address"),
                        &lb_endpoint.endpoint.address,
                        lb_endpoint.endpoint.hostname.as_ref(),
                        lb_endpoint.load_balancing_weight,
                        group.priority,
                        &locality,
                    )?;
                }
            }
        }
        Ok(specs)
    }
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

// === impl Cluster ===

/// A cluster as the main thread owns it.
pub struct Cluster {
    pub settings: ClusterSettings,
    endpoints: ArcSwap<EndpointSet>,
    /// Workers ask for an early topology refresh (Redis Cluster MOVED).
    refresh: tokio::sync::Notify,
    scope: Scope,
    pub breakers: CircuitBreakers,
    membership_total: Gauge,
    membership_healthy: Gauge,
    membership_change: Counter,
}

impl Cluster {
    pub fn new(settings: ClusterSettings, stats: &Scope) -> Arc<Cluster> {
        let scope = stats.tagged("cluster", "envoy_cluster_name", &settings.name);
        let cluster = Cluster {
            membership_total: scope.gauge("membership_total"),
            membership_healthy: scope.gauge("membership_healthy"),
            membership_change: scope.counter("membership_change"),
            endpoints: ArcSwap::from_pointee(EndpointSet::default()),
            refresh: tokio::sync::Notify::new(),
            breakers: CircuitBreakers::new(&settings.circuit_breakers, &scope),
            settings,
            scope,
        };
        // Redis Cluster members come from discovery, not from the seeds.
        let seeds_only = cluster.settings.redis_cluster.is_some();
        let statics: Vec<Arc<Endpoint>> = cluster
            .settings
            .endpoints
            .iter()
            .filter(|_| !seeds_only)
            .filter_map(|spec| match spec.address {
                EndpointAddress::Ip(addr) => Some(Arc::new(Endpoint::new(
                    addr,
                    spec.hostname.clone(),
                    spec.weight,
                    spec.priority,
                    spec.locality.clone(),
                ))),
                EndpointAddress::Dns { .. } => None,
            })
            .collect();
        cluster.publish(statics);
        Arc::new(cluster)
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The current membership.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Asks the main thread for an early topology refresh.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Resolves when a worker asked for a refresh.
    pub async fn refresh_requested(&self) {
        self.refresh.notified().await;
    }

    /// Publishes a new membership. Endpoints whose address is unchanged keep
    /// their identity (and counters).
    pub fn publish(&self, all: Vec<Arc<Endpoint>>) {
        let slots = self.endpoints.load().slots.clone();
        self.publish_with_slots(all, slots);
    }

    /// Publishes a membership with its Redis Cluster slot ranges.
    pub fn publish_with_slots(&self, mut all: Vec<Arc<Endpoint>>, slots: Arc<Vec<lb::SlotRange>>) {
        let old = self.endpoints.load_full();
        let previous: HashMap<SocketAddr, &Arc<Endpoint>> =
            old.all.iter().map(|e| (e.address, e)).collect();
        for e in &mut all {
            if let Some(prev) = previous.get(&e.address) {
                if prev.weight == e.weight && prev.priority == e.priority {
                    *e = Arc::clone(prev);
                }
            }
        }
        let changed = {
            let a: HashSet<SocketAddr> = old.all.iter().map(|e| e.address).collect();
            let b: HashSet<SocketAddr> = all.iter().map(|e| e.address).collect();
            a != b || old.slots != slots
        };
        if !changed && old.version > 0 {
            return;
        }
        self.republish(all, slots, old.version + 1);
        if changed {
            self.membership_change.inc();
        }
    }

    /// Recomputes the healthy set (after a health change) and publishes.
    pub fn refresh_health(&self) {
        let old = self.endpoints.load_full();
        self.republish(old.all.clone(), old.slots.clone(), old.version + 1);
    }

    fn republish(&self, all: Vec<Arc<Endpoint>>, slots: Arc<Vec<lb::SlotRange>>, version: u64) {
        let level = all
            .iter()
            .filter(|e| e.is_healthy())
            .map(|e| e.priority)
            .min();
        let healthy: Vec<Arc<Endpoint>> = all
            .iter()
            .filter(|e| e.is_healthy() && Some(e.priority) == level)
            .cloned()
            .collect();
        let mut acc = 0u64;
        let cumulative_weights = healthy
            .iter()
            .map(|e| {
                acc += u64::from(e.weight);
                acc
            })
            .collect();
        let table = self.settings.lb.build_table(&healthy, &slots);
        self.membership_total.set(all.len() as i64);
        self.membership_healthy
            .set(all.iter().filter(|e| e.is_healthy()).count() as i64);
        self.endpoints.store(Arc::new(EndpointSet {
            version,
            all,
            healthy,
            cumulative_weights,
            table,
            slots,
        }));
    }
}

/// All clusters, by name.
#[derive(Default)]
pub struct ClusterManager {
    clusters: Vec<Arc<Cluster>>,
}

impl ClusterManager {
    pub fn new(settings: Vec<ClusterSettings>, stats: &Scope) -> Arc<ClusterManager> {
        Arc::new(ClusterManager {
            clusters: settings
                .into_iter()
                .map(|s| Cluster::new(s, stats))
                .collect(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.iter().find(|c| c.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.iter()
    }
}

// === impl WorkerCluster ===

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("connect timeout to {0}")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Failed(SocketAddr, #[source] std::io::Error),
}

/// One worker's handle on a cluster: its balancer and its stat shards.
pub struct WorkerCluster {
    pub cluster: Arc<Cluster>,
    lb: RefCell<LoadBalancer>,
    pub stats: ClusterStats,
}

/// A worker's shards of a cluster's upstream stats.
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_timeout: Counter,
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    /// Retries a policy wanted after its num_retries were spent.
    pub upstream_rq_retry_limit_exceeded: Counter,
    /// Retries waited for with the (default or configured) back-off.
    pub upstream_rq_retry_backoff_exponential: Counter,
    /// Retries not made because the request body outgrew what is kept
    /// for a replay.
    pub retry_or_shadow_abandoned: Counter,
    /// Circuit breaker overflows (counted by `try_hold`): a connection
    /// not opened, a request refused while pending or for too many in
    /// flight, a retry not made.
    pub upstream_cx_overflow: Counter,
    pub upstream_rq_pending_overflow: Counter,
    pub upstream_rq_active_overflow: Counter,
    pub upstream_rq_retry_overflow: Counter,
    /// Requests that waited for a connection.
    pub upstream_rq_pending_total: Counter,
    pub upstream_rq_pending_active: Gauge,
    /// HTTP connections opened, by version, and closed for having carried
    /// max_requests_per_connection requests or for idling idle_timeout.
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_max_requests: Counter,
    pub upstream_cx_idle_timeout: Counter,
    pub upstream_cx_connect_ms: Histogram,
    pub upstream_cx_length_ms: Histogram,
    /// What [`WorkerCluster::charge`] counts.
    charged: RefCell<Charged>,
}

/// Answers by code and class, as Envoy charges them to a cluster: the
/// upstream's, and the 503s and 504s of failed attempts. Each stat is
/// made when first charged, as Envoy makes them (a cluster only tcp_proxy
/// uses has none).
#[derive(Default)]
struct Charged {
    completed: Option<Counter>,
    classes: [Option<Counter>; 5],
    codes: Vec<(u16, Counter)>,
    /// From sending a request to its response head, in milliseconds.
    time: Option<Histogram>,
}

impl ClusterStats {
    fn new(scope: &Scope) -> Self {
        ClusterStats {
            upstream_cx_total: scope.counter("upstream_cx_total"),
            upstream_cx_active: scope.gauge("upstream_cx_active"),
            upstream_cx_connect_fail: scope.counter("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: scope.counter("upstream_cx_connect_timeout"),
            upstream_cx_none_healthy: scope.counter("upstream_cx_none_healthy"),
            upstream_cx_destroy: scope.counter("upstream_cx_destroy"),
            upstream_cx_rx_bytes_total: scope.counter("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: scope.counter("upstream_cx_tx_bytes_total"),
            upstream_rq_total: scope.counter("upstream_rq_total"),
            upstream_rq_active: scope.gauge("upstream_rq_active"),
            upstream_rq_timeout: scope.counter("upstream_rq_timeout"),
            upstream_rq_retry: scope.counter("upstream_rq_retry"),
            upstream_rq_retry_success: scope.counter("upstream_rq_retry_success"),
            upstream_rq_retry_limit_exceeded: scope.counter("upstream_rq_retry_limit_exceeded"),
            upstream_rq_retry_backoff_exponential: scope
                .counter("upstream_rq_retry_backoff_exponential"),
            retry_or_shadow_abandoned: scope.counter("retry_or_shadow_abandoned"),
            upstream_cx_overflow: scope.counter("upstream_cx_overflow"),
            upstream_rq_pending_overflow: scope.counter("upstream_rq_pending_overflow"),
            upstream_rq_active_overflow: scope.counter("upstream_rq_active_overflow"),
            upstream_rq_retry_overflow: scope.counter("upstream_rq_retry_overflow"),
            upstream_rq_pending_total: scope.counter("upstream_rq_pending_total"),
            upstream_rq_pending_active: scope.gauge("upstream_rq_pending_active"),
            upstream_cx_http1_total: scope.counter("upstream_cx_http1_total"),
            upstream_cx_http2_total: scope.counter("upstream_cx_http2_total"),
            upstream_cx_max_requests: scope.counter("upstream_cx_max_requests"),
            upstream_cx_idle_timeout: scope.counter("upstream_cx_idle_timeout"),
            upstream_cx_connect_ms: scope.histogram("upstream_cx_connect_ms"),
            upstream_cx_length_ms: scope.histogram("upstream_cx_length_ms"),
            charged: RefCell::default(),
        }
    }
}

impl WorkerCluster {
    pub fn new(cluster: Arc<Cluster>) -> Rc<WorkerCluster> {
        Rc::new(WorkerCluster {
            lb: RefCell::new(LoadBalancer::new(cluster.settings.lb.clone())),
            stats: ClusterStats::new(cluster.scope()),
            cluster,
        })
    }

    /// Counts an attempt's answer: its code and class (its time is
    /// recorded when the response ends, [`WorkerCluster::record_rq_time`]).
    pub fn charge(&self, status: http::StatusCode) {
        let scope = self.cluster.scope();
        let code = status.as_u16();
        let class = (code / 100).clamp(1, 5) as usize;
        let c = &mut *self.stats.charged.borrow_mut();
        c.completed
            .get_or_insert_with(|| scope.counter("upstream_rq_completed"))
            .inc();
        c.classes[class - 1]
            .get_or_insert_with(|| scope.counter(&format!("upstream_rq_{class}xx")))
            .inc();
        match c.codes.iter().find(|(seen, _)| *seen == code) {
            Some((_, counter)) => counter.inc(),
            None => {
                let counter = scope.counter(&format!("upstream_rq_{code}"));
                counter.inc();
                c.codes.push((code, counter));
            }
        }
    }

    /// Records a response's time, from its request's sending to its end
    /// (`upstream_rq_time`).
    pub fn record_rq_time(&self, took: Duration) {
        let scope = self.cluster.scope();
        self.stats
            .charged
            .borrow_mut()
            .time
            .get_or_insert_with(|| scope.histogram("upstream_rq_time"))
            .record(took.as_millis() as u64);
    }

    /// Chooses an endpoint for a new connection or request.
    pub fn choose(&self, cx: LbContext) -> Option<Arc<Endpoint>> {
        let set = self.cluster.endpoints();
        let i = self.lb.borrow_mut().choose(&set, cx)?;
        Some(set.healthy[i].clone())
    }

    /// Chooses an endpoint and connects to it within the cluster's
    /// connect_timeout, keeping Envoy's connection stats.
    pub async fn connect(&self, cx: LbContext) -> Result<(Arc<Endpoint>, TcpStream), ConnectError> {
        let Some(endpoint) = self.choose(cx) else {
            self.stats.upstream_cx_none_healthy.inc();
            return Err(ConnectError::NoHealthyUpstream);
        };
        let stream = self.connect_to(&endpoint).await?;
        Ok((endpoint, stream))
    }

    /// Connects to `endpoint` within the cluster's connect_timeout.
    pub async fn connect_to(&self, endpoint: &Endpoint) -> Result<TcpStream, ConnectError> {
        self.stats.upstream_cx_total.inc();
        endpoint.stats.cx_total.fetch_add(1, Ordering::Relaxed);
        let timeout = self.cluster.settings.connect_timeout;
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(timeout, TcpStream::connect(endpoint.address)).await;
        let error = match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                self.stats
                    .upstream_cx_connect_ms
                    .record(started.elapsed().as_millis() as u64);
                return Ok(stream);
            }
            Ok(Err(e)) => ConnectError::Failed(endpoint.address, e),
            Err(_) => {
                self.stats.upstream_cx_connect_timeout.inc();
                ConnectError::Timeout(endpoint.address)
            }
        };
        self.stats.upstream_cx_connect_fail.inc();
        endpoint
            .stats
            .cx_connect_fail
            .fetch_add(1, Ordering::Relaxed);
        Err(error)
    }
}

/// A worker's handles on every cluster.
#[derive(Clone)]
pub struct WorkerClusters {
    by_name: HashMap<String, Rc<WorkerCluster>>,
}

impl WorkerClusters {
    pub fn new(manager: &ClusterManager) -> Self {
        WorkerClusters {
            by_name: manager
                .iter()
                .map(|c| (c.name().to_string(), WorkerCluster::new(c.clone())))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Rc<WorkerCluster>> {
        self.by_name.get(name).cloned()
    }
}

/// A cluster's `max_stream_duration` would bound its upstream streams,
/// which wasp does not do: refused rather than ignored.
fn no_upstream_stream_duration(
    common: Option<&crate::config::HttpProtocolOptionsConfig>,
    at: &str,
) -> Result<(), ValidationError> {
    match common.and_then(|c| c.max_stream_duration) {
        Some(_) => Err(ValidationError::new(
            join(at, "max_stream_duration"),
            "a cluster's max_stream_duration is not supported (a connection manager's or route's is)",
        )),
        None => Ok(()),
    }
}
