//! Envoy's route configuration: virtual hosts chosen by the Host header,
//! routes matched by path and headers, and what each route does.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use super::retry::RetryPolicy;
use crate::config::path::{index, join};
use crate::config::{
    HeaderMatcherConfig, HeaderValueOptionConfig, PerFilterConfig, RedirectActionConfig,
    RedirectResponseCode, RegexMatcherConfig, RouteActionConfig, RouteConfigurationConfig,
    RouteEntryConfig, StringMatcherConfig, ValidationError,
};

/// Headers to add and remove at one level (route, virtual host, route table).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    add: Vec<(HeaderName, HeaderValue, bool)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn build(
        add: &[HeaderValueOptionConfig],
        remove: &[String],
        path: &str,
    ) -> Result<Self, ValidationError> {
        let mut ops = HeaderOps::default();
        for (i, h) in add.iter().enumerate() {
            let at = index(path, i);
            let name = HeaderName::from_bytes(h.header.key.as_bytes()).map_err(|_| {
                ValidationError::new(join(&at, "header.key"), "not a valid header name")
            })?;
            let value = HeaderValue::from_str(&h.header.value).map_err(|_| {
                ValidationError::new(join(&at, "header.value"), "not a valid header value")
            })?;
            let append = match h.append_action.as_deref() {
                None => h.append.unwrap_or(true),
                Some("APPEND_IF_EXISTS_OR_ADD") => true,
                Some("OVERWRITE_IF_EXISTS_OR_ADD") => false,
                Some(other) => {
                    return Err(ValidationError::new(
                        join(&at, "append_action"),
                        format!("unsupported append_action `{other}`"),
                    ));
                }
            };
            ops.add.push((name, value, append));
        }
        for r in remove {
            ops.remove
                .push(HeaderName::from_bytes(r.as_bytes()).map_err(|_| {
                    ValidationError::new(path, format!("`{r}` is not a valid header name"))
                })?);
        }
        Ok(ops)
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, append) in &self.add {
            if *append {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

#[derive(Debug, Clone)]
enum DomainMatch {
    Any,
    Exact(String),
    /// `*.example.com` → `.example.com`
    Suffix(String),
    /// `example.*` → `example.`
    Prefix(String),
}

#[derive(Debug, Clone)]
enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// `connect_matcher`: CONNECT requests, which match nothing else.
    Connect,
}

#[derive(Debug, Clone)]
enum ValueMatch {
    /// The inner match (on a lower-cased pattern) against the lower-cased value.
    IgnoreCase(Box<ValueMatch>),
    Present(bool),
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    name: HeaderName,
    value: ValueMatch,
    invert: bool,
}

/// Where a virtual host wants `x-envoy-attempt-count`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttemptCount {
    pub on_request: bool,
    pub on_response: bool,
}

/// Which upstream clusters a route sends to, and how.
#[derive(Debug, Clone)]
pub struct Forward {
    /// (cluster, weight); one entry for `cluster:`.
    pub clusters: Vec<(String, u32)>,
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`: every match in the path (not the query) replaced.
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<String>,
    /// `auto_host_rewrite`: Host becomes the chosen endpoint's hostname.
    pub auto_host_rewrite: bool,
    /// `priority`: whose circuit breakers the requests count against.
    pub priority: crate::cluster::Priority,
    pub timeout: Option<Duration>,
    /// `max_stream_duration`.
    pub stream_duration: Option<StreamDuration>,
    /// `max_grpc_timeout`, and `grpc_timeout_offset` (boxed: rare).
    pub grpc_timeout: Option<Box<GrpcTimeout>>,
    /// The route's retry policy, or its virtual host's (boxed: most
    /// routes have none).
    pub retry: Option<Box<RetryPolicy>>,
    /// `include_request_attempt_count` and
    /// `include_attempt_count_in_response` of the virtual host.
    pub attempt_count: AttemptCount,
    pub hash_policy: Vec<HashPolicy>,
    /// `x-envoy-expected-rq-timeout-ms`: how long the upstream is given
    /// (the per-try timeout when it is the shorter one), made once here
    /// rather than per request.
    pub expected_timeout: Option<http::HeaderValue>,
    /// `upgrade_configs`: upgrades this route allows or refuses whatever
    /// the connection manager says (type, enabled).
    pub upgrades: Vec<(String, bool)>,
    /// A CONNECT upgrade with `connect_config`: wasp answers the CONNECT
    /// and carries its bytes over a TCP connection to the cluster.
    pub terminate_connect: bool,
}

/// A route's `max_stream_duration`.
#[derive(Debug, Clone, Copy)]
pub struct StreamDuration {
    /// Zero: no limit, not even the connection manager's.
    pub max: Option<Duration>,
    pub grpc_header_max: Option<Duration>,
    pub grpc_header_offset: Option<Duration>,
}

/// A route's `max_grpc_timeout` (0: no cap) and `grpc_timeout_offset`:
/// Envoy's older way for a gRPC request's own deadline to be its router
/// timeout.
#[derive(Debug, Clone, Copy)]
pub struct GrpcTimeout {
    pub max: Duration,
    pub offset: Option<Duration>,
}

impl GrpcTimeout {
    /// The router timeout of a gRPC request (`None`: none), as Envoy works
    /// it out: its `grpc-timeout` (none: unbounded), less the offset unless
    /// that leaves nothing, capped by the maximum unless that is 0.
    pub fn of(&self, request: &HeaderMap) -> Option<Duration> {
        let mut t = super::grpc::timeout(request).unwrap_or_default();
        if let Some(offset) = self.offset.filter(|&o| o < t) {
            t -= offset;
        }
        if !self.max.is_zero() && (t.is_zero() || t > self.max) {
            t = self.max;
        }
        Some(t).filter(|t| !t.is_zero())
    }
}

impl Forward {
    /// How long a stream on this route may last from its start, as Envoy
    /// decides it: the request's grpc-timeout when the route sets
    /// `grpc_timeout_header_max` (capped by it unless that is 0, less
    /// `grpc_timeout_header_offset`); else the route's
    /// `max_stream_duration` (0: none); else `default`, the connection
    /// manager's.
    pub fn stream_duration(
        &self,
        request: &HeaderMap,
        default: Option<Duration>,
    ) -> Option<Duration> {
        let Some(d) = &self.stream_duration else {
            return default;
        };
        let grpc = d
            .grpc_header_max
            .and_then(|max| Some((super::grpc::timeout(request)?, max)));
        match (grpc, d.max) {
            (Some((mut t, max)), _) => {
                if !max.is_zero() && t > max {
                    t = max;
                }
                if let Some(offset) = d.grpc_header_offset.filter(|_| !t.is_zero()) {
                    t = t.saturating_sub(offset);
                }
                Some(t)
            }
            (None, Some(max)) if max.is_zero() => None,
            (None, Some(max)) => Some(max),
            (None, None) => default,
        }
    }
}

/// One `upgrade_configs` entry (the connection manager's or a route's) at
/// `at`: its type and whether it is enabled (unless said, it is).
pub fn upgrade_entry(kind: &str, enabled: Option<bool>) -> (String, bool) {
    (kind.to_string(), enabled.unwrap_or(true))
}

/// Whether a request asking to upgrade to `kind` may: as the route says if
/// it names the kind, else as the connection manager's `upgrade_configs`
/// say (refused if they do not name it), as in Envoy.
pub fn upgrade_allowed(manager: &[(String, bool)], route: &[(String, bool)], kind: &str) -> bool {
    let named = |list: &[(String, bool)]| {
        list.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(kind))
            .map(|&(_, enabled)| enabled)
    };
    named(route).or_else(|| named(manager)).unwrap_or(false)
}

impl Forward {
    /// A cluster by weight.
    pub fn pick_cluster(&self) -> &str {
        crate::cluster::lb::pick_weighted(&self.clusters, |c| c.1, |n| fastrand::u32(..n))
            .map_or("", |c| c.0.as_str())
    }

    /// The request's hash for consistent-hash clusters, from the hash
    /// policies that find their input (combined in order, as Envoy does).
    pub fn hash(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        peer: std::net::IpAddr,
    ) -> Option<u64> {
        let mut hash: Option<u64> = None;
        for p in &self.hash_policy {
            let input: Option<String> = match &p.source {
                HashSource::Header(name) => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                HashSource::SourceIp => Some(peer.to_string()),
                HashSource::Query(name) => query.and_then(|q| {
                    q.split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.to_string())
                }),
            };
            if let Some(input) = input {
                let h = crate::cluster::lb::hash_key(input.as_bytes());
                hash = Some(hash.map_or(h, |prev| prev.rotate_left(1) ^ h));
                if p.terminal {
                    break;
                }
            }
        }
        hash
    }
}

#[derive(Debug, Clone)]
pub struct HashPolicy {
    source: HashSource,
    terminal: bool,
}

#[derive(Debug, Clone)]
enum HashSource {
    Header(HeaderName),
    SourceIp,
    Query(String),
}

/// What a matched route does.
#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Direct { status: StatusCode, body: Bytes },
    Redirect(RedirectActionConfig),
}

#[derive(Debug, Clone)]
struct QueryMatch {
    name: String,
    /// `None`: present with any value.
    value: Option<ValueMatch>,
}

#[derive(Debug, Clone)]
pub struct Route {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    pub action: Action,
    pub headers_ops: (HeaderOps, HeaderOps),
    filters: FilterSwitches,
}

#[derive(Debug, Clone)]
struct VirtualHost {
    domains: Vec<DomainMatch>,
    routes: Vec<Route>,
    headers_ops: (HeaderOps, HeaderOps),
    filters: FilterSwitches,
}

/// A level's `typed_per_filter_config`: (HTTP filter name, disabled).
pub type FilterSwitches = Vec<(String, bool)>;

/// A validated route configuration.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    virtual_hosts: Vec<VirtualHost>,
    /// (request, response) header changes of the whole table.
    pub headers_ops: (HeaderOps, HeaderOps),
    /// `ignore_port_in_host_matching`.
    ignore_port: bool,
    filters: FilterSwitches,
    /// Whether any level switches a filter off or on.
    pub switches_filters: bool,
}

/// The result of matching: the route, and the header changes of each level
/// (route table last, so the most specific level wins ties, as in Envoy).
pub struct Matched<'a> {
    pub route: &'a Route,
    pub levels: [&'a (HeaderOps, HeaderOps); 3],
    filters: [&'a FilterSwitches; 3],
}

impl Matched<'_> {
    /// Whether the route, else its virtual host, else the route table,
    /// switches the HTTP filter `name` off (`Some(true)`) or on.
    pub fn filter_disabled(&self, name: &str) -> Option<bool> {
        self.filters
            .iter()
            .find_map(|level| level.iter().find(|(n, _)| n == name))
            .map(|&(_, disabled)| disabled)
    }
}

/// A level's `typed_per_filter_config`, read as Envoy reads it: a
/// `FilterConfig` that is `disabled`, or whose `config` is empty (`{}`) or
/// optional, switches its filter off or on; one with no `config` is an
/// error. wasp's filters take no per-route settings, so any other config
/// is refused.
fn filter_switches(
    c: &std::collections::BTreeMap<String, PerFilterConfig>,
    at: &str,
) -> Result<FilterSwitches, ValidationError> {
    let at = join(at, "typed_per_filter_config");
    c.iter()
        .map(|(name, f)| {
            let disabled = match f {
                PerFilterConfig::Generic { disabled: true, .. } => true,
                PerFilterConfig::Generic { config: None, .. } => {
                    return Err(ValidationError::new(
                        join(&at, name),
                        format!(
                            "empty per-filter configuration for filter `{name}`: set `disabled: true`, \
                             or `config: {{}}` to turn the filter on"
                        ),
                    ));
                }
                PerFilterConfig::Generic {
                    config: Some(t),
                    is_optional,
                    ..
                } if t.is_empty() || *is_optional => false,
                PerFilterConfig::Generic { config: Some(t), .. } | PerFilterConfig::Specific(t) => {
                    return Err(ValidationError::new(
                        join(&at, name),
                        format!(
                            "per-route config `{t}` is not supported: wasp's HTTP filters take \
                             none (a FilterConfig may switch the filter off or on)"
                        ),
                    ));
                }
            };
            Ok((name.clone(), disabled))
        })
        .collect()
}

fn regex(r: &RegexMatcherConfig, at: &str) -> Result<Regex, ValidationError> {
    Regex::new(&format!("^(?:{})$", r.regex))
        .map_err(|e| ValidationError::new(join(at, "regex"), format!("invalid regex: {e}")))
}

fn ops(
    add_req: &[HeaderValueOptionConfig],
    rm_req: &[String],
    add_resp: &[HeaderValueOptionConfig],
    rm_resp: &[String],
    at: &str,
) -> Result<(HeaderOps, HeaderOps), ValidationError> {
    Ok((
        HeaderOps::build(add_req, rm_req, &join(at, "request_headers_to_add"))?,
        HeaderOps::build(add_resp, rm_resp, &join(at, "response_headers_to_add"))?,
    ))
}

impl RouteTable {
    pub fn validate(
        c: &RouteConfigurationConfig,
        path: &str,
        clusters: &std::collections::HashSet<String>,
    ) -> Result<Self, ValidationError> {
        let mut virtual_hosts = Vec::new();
        for (i, vh) in c.virtual_hosts.iter().enumerate() {
            let at = index(&join(path, "virtual_hosts"), i);
            let mut domains = Vec::new();
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                domains.push(if d == "*" {
                    DomainMatch::Any
                } else if let Some(s) = d.strip_prefix('*') {
                    DomainMatch::Suffix(s.to_string())
                } else if let Some(p) = d.strip_suffix('*') {
                    DomainMatch::Prefix(p.to_string())
                } else {
                    DomainMatch::Exact(d)
                });
            }
            let host = HostDefaults {
                retry: match &vh.retry_policy {
                    Some(r) => Some(Box::new(RetryPolicy::validate(
                        r,
                        &join(&at, "retry_policy"),
                    )?)),
                    None => None,
                },
                attempt_count: AttemptCount {
                    on_request: vh.include_request_attempt_count,
                    on_response: vh.include_attempt_count_in_response,
                },
            };
            let mut routes = Vec::new();
            for (j, r) in vh.routes.iter().enumerate() {
                routes.push(Self::route(
                    r,
                    &index(&join(&at, "routes"), j),
                    clusters,
                    &host,
                )?);
            }
            virtual_hosts.push(VirtualHost {
                domains,
                routes,
                headers_ops: ops(
                    &vh.request_headers_to_add,
                    &vh.request_headers_to_remove,
                    &vh.response_headers_to_add,
                    &vh.response_headers_to_remove,
                    &at,
                )?,
                filters: filter_switches(&vh.typed_per_filter_config, &at)?,
            });
        }
        let filters = filter_switches(&c.typed_per_filter_config, path)?;
        let switches_filters = !filters.is_empty()
            || virtual_hosts.iter().any(|vh| {
                !vh.filters.is_empty() || vh.routes.iter().any(|r| !r.filters.is_empty())
            });
        Ok(RouteTable {
            virtual_hosts,
            ignore_port: c.ignore_port_in_host_matching,
            filters,
            switches_filters,
            headers_ops: ops(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                path,
            )?,
        })
    }

    fn route(
        r: &RouteEntryConfig,
        at: &str,
        clusters: &std::collections::HashSet<String>,
        host: &HostDefaults,
    ) -> Result<Route, ValidationError> {
        let m = &r.matcher;
        let mat = join(at, "match");
        let path = match (&m.prefix, &m.path, &m.safe_regex, &m.connect_matcher) {
            (Some(p), None, None, None) => PathMatch::Prefix(p.clone()),
            (None, Some(p), None, None) => PathMatch::Exact(p.clone()),
            (None, None, Some(re), None) => PathMatch::Regex(regex(re, &join(&mat, "safe_regex"))?),
            (None, None, None, Some(_)) => PathMatch::Connect,
            _ => {
                return Err(ValidationError::new(
                    mat,
                    "a route match needs exactly one of prefix, path, safe_regex, connect_matcher",
                ));
            }
        };
        let mut headers = Vec::new();
        for (k, h) in m.headers.iter().enumerate() {
            headers.push(header_match(h, &index(&join(&mat, "headers"), k))?);
        }
        let mut query = Vec::new();
        for (k, q) in m.query_parameters.iter().enumerate() {
            let qat = index(&join(&mat, "query_parameters"), k);
            let value = match &q.string_match {
                Some(sm) => Some(string_match(sm, &join(&qat, "string_match"))?),
                None => None,
            };
            query.push(QueryMatch {
                name: q.name.clone(),
                value,
            });
        }
        let action = match (&r.route, &r.direct_response, &r.redirect) {
            (Some(a), None, None) => {
                Action::Forward(forward(a, &join(at, "route"), clusters, host)?)
            }
            (None, Some(d), None) => Action::Direct {
                status: StatusCode::from_u16(d.status).map_err(|_| {
                    ValidationError::new(
                        join(&join(at, "direct_response"), "status"),
                        "not an HTTP status",
                    )
                })?,
                body: match &d.body {
                    Some(b) => b
                        .load()
                        .map_err(|e| {
                            ValidationError::new(join(&join(at, "direct_response"), "body"), e)
                        })?
                        .into(),
                    None => Bytes::new(),
                },
            },
            (None, None, Some(redirect)) => Action::Redirect(redirect.clone()),
            _ => {
                return Err(ValidationError::new(
                    at,
                    "a route needs exactly one of route, direct_response, redirect",
                ));
            }
        };
        Ok(Route {
            path,
            case_sensitive: m.case_sensitive.unwrap_or(true),
            headers,
            query,
            action,
            headers_ops: ops(
                &r.request_headers_to_add,
                &r.request_headers_to_remove,
                &r.response_headers_to_add,
                &r.response_headers_to_remove,
                at,
            )?,
            filters: filter_switches(&r.typed_per_filter_config, at)?,
        })
    }

    /// The route for a request: virtual host by Host (exact, then the
    /// longest `*.suffix`, then the longest `prefix.*`, then `*`), then
    /// the first route that matches.
    pub fn find(&self, host: &str, path: &str, headers: &HeaderMap) -> Option<Matched<'_>> {
        self.find_where(host, |r| r.matches(path, headers))
    }

    /// The route for a CONNECT request to `authority`: the first
    /// `connect_matcher` route of its virtual host whose headers match.
    pub fn find_connect(&self, authority: &str, headers: &HeaderMap) -> Option<Matched<'_>> {
        self.find_where(authority, |r| {
            matches!(r.path, PathMatch::Connect) && r.headers.iter().all(|h| h.matches(headers))
        })
    }

    /// The first route of `host`'s virtual host that `matches`.
    fn find_where(&self, host: &str, matches: impl Fn(&Route) -> bool) -> Option<Matched<'_>> {
        let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        let vh = self.virtual_host(&host)?;
        let route = vh.routes.iter().find(|r| matches(r))?;
        Some(Matched {
            route,
            levels: [&route.headers_ops, &vh.headers_ops, &self.headers_ops],
            filters: [&route.filters, &vh.filters, &self.filters],
        })
    }

    /// The virtual host for a (lower-cased) Host: its port is part of
    /// what the domains match, as in Envoy, unless the table says
    /// `ignore_port_in_host_matching`.
    fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = match self.ignore_port.then(|| host.rsplit_once(':')).flatten() {
            Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => name,
            _ => host,
        };
        let mut best: Option<(u8, usize, &VirtualHost)> = None;
        for vh in &self.virtual_hosts {
            for d in &vh.domains {
                let score = match d {
                    DomainMatch::Exact(e) if e == host => (3, e.len()),
                    DomainMatch::Suffix(s)
                        if host.ends_with(s.as_str()) && host.len() > s.len() =>
                    {
                        (2, s.len())
                    }
                    DomainMatch::Prefix(p)
                        if host.starts_with(p.as_str()) && host.len() > p.len() =>
                    {
                        (1, p.len())
                    }
                    DomainMatch::Any => (0, 0),
                    _ => continue,
                };
                if best.is_none_or(|(k, l, _)| (score.0, score.1) > (k, l)) {
                    best = Some((score.0, score.1, vh));
                }
            }
        }
        best.map(|b| b.2)
    }
}

impl Route {
    fn matches(&self, path_and_query: &str, headers: &HeaderMap) -> bool {
        let path = path_and_query.split('?').next().unwrap_or("");
        let ok = match &self.path {
            PathMatch::Prefix(p) if self.case_sensitive => path_and_query.starts_with(p.as_str()),
            PathMatch::Prefix(p) => path_and_query
                .get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p)),
            PathMatch::Exact(p) if self.case_sensitive => path == p,
            PathMatch::Exact(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::Connect => false,
        };
        ok && self.headers.iter().all(|h| h.matches(headers)) && self.query_matches(path_and_query)
    }

    fn query_matches(&self, path_and_query: &str) -> bool {
        if self.query.is_empty() {
            return true;
        }
        let query = path_and_query.split_once('?').map_or("", |q| q.1);
        let params: Vec<(&str, &str)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .collect();
        self.query.iter().all(|q| {
            params
                .iter()
                .find(|(k, _)| *k == q.name)
                .is_some_and(|(_, v)| q.value.as_ref().is_none_or(|m| m.matches(v)))
        })
    }

    /// The path sent upstream: the matched prefix replaced by `prefix_rewrite`.
    pub fn rewrite_path(&self, path: &str, prefix_rewrite: &str) -> String {
        match &self.path {
            PathMatch::Prefix(p) if path.len() >= p.len() => {
                format!("{prefix_rewrite}{}", &path[p.len()..])
            }
            _ => path.to_string(),
        }
    }
}

/// What a virtual host gives each of its routes.
struct HostDefaults {
    retry: Option<Box<RetryPolicy>>,
    attempt_count: AttemptCount,
}

fn forward(
    a: &RouteActionConfig,
    at: &str,
    known: &std::collections::HashSet<String>,
    host: &HostDefaults,
) -> Result<Forward, ValidationError> {
    let unknown =
        |path: String, name: &str| ValidationError::new(path, format!("unknown cluster `{name}`"));
    let clusters = match (&a.cluster, &a.weighted_clusters) {
        (Some(c), None) => {
            if !known.contains(c) {
                return Err(unknown(join(at, "cluster"), c));
            }
            vec![(c.clone(), 1)]
        }
        (None, Some(w)) => {
            let base = join(&join(at, "weighted_clusters"), "clusters");
            for (i, c) in w.clusters.iter().enumerate() {
                if !known.contains(&c.name) {
                    return Err(unknown(join(&index(&base, i), "name"), &c.name));
                }
            }
            if w.clusters.iter().map(|c| c.weight).sum::<u32>() == 0 {
                return Err(ValidationError::new(
                    base,
                    "cluster weights must not all be zero",
                ));
            }
            w.clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight))
                .collect()
        }
        _ => {
            return Err(ValidationError::new(
                join(at, "cluster"),
                "a route needs exactly one of cluster or weighted_clusters",
            ));
        }
    };
    let retry = match &a.retry_policy {
        Some(r) => Some(Box::new(RetryPolicy::validate(
            r,
            &join(at, "retry_policy"),
        )?)),
        None => host.retry.clone(),
    };
    let mut hash_policy = Vec::new();
    for (i, h) in a.hash_policy.iter().enumerate() {
        let hp = index(&join(at, "hash_policy"), i);
        let source = match (&h.header, &h.connection_properties, &h.query_parameter) {
            (Some(hh), None, None) => HashSource::Header(
                HeaderName::from_bytes(hh.header_name.as_bytes()).map_err(|_| {
                    ValidationError::new(join(&hp, "header.header_name"), "not a valid header name")
                })?,
            ),
            (None, Some(c), None) if c.source_ip => HashSource::SourceIp,
            (None, None, Some(q)) => HashSource::Query(q.name.clone()),
            _ => {
                return Err(ValidationError::new(
                    hp,
                    "a hash policy needs one of header, connection_properties.source_ip, query_parameter",
                ));
            }
        };
        hash_policy.push(HashPolicy {
            source,
            terminal: h.terminal,
        });
    }
    let regex_rewrite = match &a.regex_rewrite {
        None => None,
        Some(r) => Some((
            Regex::new(&r.pattern.regex).map_err(|e| {
                ValidationError::new(
                    join(at, "regex_rewrite.pattern.regex"),
                    format!("invalid regex: {e}"),
                )
            })?,
            // Envoy (RE2) writes groups as \1; the regex crate as ${1}.
            Regex::new(r"\\(\d)")
                .expect("static regex")
                .replace_all(&r.substitution, "$${$1}")
                .into_owned(),
        )),
    };
    if a.prefix_rewrite.is_some() && regex_rewrite.is_some() {
        return Err(ValidationError::new(
            join(at, "regex_rewrite"),
            "set either prefix_rewrite or regex_rewrite, not both",
        ));
    }
    // A route with max_stream_duration has no router timeout of its own:
    // Envoy's "new timeouts" bound the whole stream instead.
    let timeout = match (a.timeout, &a.max_stream_duration) {
        (_, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(15)),
        (Some(d), None) if d.is_zero() => None,
        (Some(d), None) => Some(d.0),
    };
    // Only for routes without the "new timeouts", as in Envoy.
    let grpc_timeout = match (&a.max_stream_duration, a.max_grpc_timeout) {
        (None, Some(max)) => Some(Box::new(GrpcTimeout {
            max: max.0,
            offset: a.grpc_timeout_offset.map(|d| d.0),
        })),
        _ => None,
    };
    let stream_duration = a.max_stream_duration.as_ref().map(|m| StreamDuration {
        max: m.max_stream_duration.map(|d| d.0),
        grpc_header_max: m.grpc_timeout_header_max.map(|d| d.0),
        grpc_header_offset: m.grpc_timeout_header_offset.map(|d| d.0),
    });
    let per_try = retry.as_ref().and_then(|r| r.per_try_timeout);
    let expected = match (per_try, timeout) {
        (Some(p), Some(g)) => Some(p.min(g)),
        (p, g) => p.or(g),
    };
    let mut upgrades = Vec::new();
    let mut terminate_connect = false;
    for (i, u) in a.upgrade_configs.iter().enumerate() {
        let at = index(&join(at, "upgrade_configs"), i);
        // A connect_config is only for CONNECT.
        let kind = match &u.connect_config {
            Some(c) if c.allow_post => {
                return Err(ValidationError::new(
                    join(&at, "connect_config.allow_post"),
                    "POST tunnels are not supported",
                ));
            }
            Some(_) => {
                terminate_connect = true;
                "CONNECT"
            }
            None => &u.upgrade_type,
        };
        upgrades.push(upgrade_entry(kind, u.enabled));
    }
    Ok(Forward {
        upgrades,
        terminate_connect,
        clusters,
        prefix_rewrite: a.prefix_rewrite.clone(),
        regex_rewrite,
        host_rewrite: a.host_rewrite_literal.clone(),
        auto_host_rewrite: a.auto_host_rewrite,
        priority: a.priority.into(),
        timeout,
        stream_duration,
        grpc_timeout,
        retry,
        attempt_count: host.attempt_count,
        hash_policy,
        expected_timeout: expected
            .map(|t| t.as_millis() as u64)
            .filter(|&ms| ms > 0)
            .map(http::HeaderValue::from),
    })
}

pub fn header_match(h: &HeaderMatcherConfig, at: &str) -> Result<HeaderMatch, ValidationError> {
    let name = HeaderName::from_bytes(h.name.as_bytes())
        .map_err(|_| ValidationError::new(join(at, "name"), "not a valid header name"))?;
    let value = if let Some(v) = &h.exact_match {
        ValueMatch::Exact(v.clone())
    } else if let Some(v) = &h.prefix_match {
        ValueMatch::Prefix(v.clone())
    } else if let Some(v) = &h.suffix_match {
        ValueMatch::Suffix(v.clone())
    } else if let Some(v) = &h.contains_match {
        ValueMatch::Contains(v.clone())
    } else if let Some(r) = &h.safe_regex_match {
        ValueMatch::Regex(regex(r, &join(at, "safe_regex_match"))?)
    } else if let Some(s) = &h.string_match {
        string_match(s, &join(at, "string_match"))?
    } else {
        ValueMatch::Present(h.present_match.unwrap_or(true))
    };
    Ok(HeaderMatch {
        name,
        value,
        invert: h.invert_match,
    })
}

fn string_match(s: &StringMatcherConfig, at: &str) -> Result<ValueMatch, ValidationError> {
    // `ignore_case` (not for regexes, as in Envoy): compare lower-cased.
    let fold = |v: &String| {
        if s.ignore_case {
            v.to_ascii_lowercase()
        } else {
            v.clone()
        }
    };
    let m = match (&s.exact, &s.prefix, &s.suffix, &s.contains, &s.safe_regex) {
        (Some(v), ..) => ValueMatch::Exact(fold(v)),
        (_, Some(v), ..) => ValueMatch::Prefix(fold(v)),
        (_, _, Some(v), ..) => ValueMatch::Suffix(fold(v)),
        (_, _, _, Some(v), _) => ValueMatch::Contains(fold(v)),
        (_, _, _, _, Some(r)) => return Ok(ValueMatch::Regex(regex(r, &join(at, "safe_regex"))?)),
        _ => return Err(ValidationError::new(at, "empty string matcher")),
    };
    Ok(if s.ignore_case {
        ValueMatch::IgnoreCase(Box::new(m))
    } else {
        m
    })
}

impl ValueMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::IgnoreCase(inner) => inner.matches(&v.to_ascii_lowercase()),
            ValueMatch::Present(want) => *want,
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Prefix(p) => v.starts_with(p.as_str()),
            ValueMatch::Suffix(s) => v.ends_with(s.as_str()),
            ValueMatch::Contains(c) => v.contains(c.as_str()),
            ValueMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl HeaderMatch {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let value = headers.get(&self.name).and_then(|v| v.to_str().ok());
        let hit = match (&self.value, value) {
            (ValueMatch::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (m, Some(v)) => m.matches(v),
        };
        hit != self.invert
    }
}

/// The Location of a redirect route for a request.
pub fn redirect_location(
    r: &RedirectActionConfig,
    route: &Route,
    host: &str,
    path_and_query: &str,
) -> (StatusCode, String) {
    let status = match r.response_code {
        None | Some(RedirectResponseCode::MovedPermanently) => StatusCode::MOVED_PERMANENTLY,
        Some(RedirectResponseCode::Found) => StatusCode::FOUND,
        Some(RedirectResponseCode::SeeOther) => StatusCode::SEE_OTHER,
        Some(RedirectResponseCode::TemporaryRedirect) => StatusCode::TEMPORARY_REDIRECT,
        Some(RedirectResponseCode::PermanentRedirect) => StatusCode::PERMANENT_REDIRECT,
    };
    let scheme = if r.https_redirect {
        "https"
    } else {
        r.scheme_redirect.as_deref().unwrap_or("http")
    };
    let (host_only, port) = match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
        _ => (host, None),
    };
    let mut authority = r
        .host_redirect
        .clone()
        .unwrap_or_else(|| host_only.to_string());
    match (r.port_redirect, port) {
        (Some(p), _) => authority = format!("{authority}:{p}"),
        (None, Some(p)) if !r.https_redirect => authority = format!("{authority}:{p}"),
        _ => {}
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut new_path = match (&r.path_redirect, &r.prefix_rewrite) {
        (Some(p), _) => p.clone(),
        (None, Some(pr)) => route.rewrite_path(path, pr),
        (None, None) => path.to_string(),
    };
    if let (Some(q), false) = (query, r.strip_query) {
        if !new_path.contains('?') {
            new_path = format!("{new_path}?{q}");
        }
    }
    (status, format!("{scheme}://{authority}{new_path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> RouteTable {
        let yaml = format!(
            "{extra}virtual_hosts:\n- name: a\n  domains: [example.com]\n  routes:\n  - match: {{ prefix: / }}\n    direct_response: {{ status: 200 }}\n"
        );
        let c: RouteConfigurationConfig = serde_norway::from_str(&yaml).unwrap();
        RouteTable::validate(&c, "route_config", &Default::default()).unwrap()
    }

    #[test]
    fn a_host_port_is_matched_unless_ignored() {
        let h = HeaderMap::new();
        let strict = table("");
        assert!(strict.find("example.com", "/", &h).is_some());
        assert!(strict.find("example.com:8080", "/", &h).is_none());
        let lenient = table("ignore_port_in_host_matching: true\n");
        assert!(lenient.find("example.com:8080", "/", &h).is_some());
        assert!(lenient.find("example.org:8080", "/", &h).is_none());
    }
}
