use serde::Deserialize;
use serde::de::Deserializer;

use super::extension::{Empty, Extensions, unsupported};
use super::{
    AccessLogConfig, DataSourceConfig, Duration, Extension, PercentConfig, WasmFilterConfig,
};

/// `envoy.filters.network.http_connection_manager`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConnectionManagerConfig {
    pub stat_prefix: String,
    #[serde(default)]
    pub codec_type: CodecType,
    pub route_config: Option<RouteConfigurationConfig>,
    #[serde(default)]
    pub http_filters: Vec<Extension<HttpFilterConfig>>,
    #[serde(default)]
    pub access_log: Vec<Extension<AccessLogConfig>>,
    #[serde(default)]
    pub use_remote_address: bool,
    pub internal_address_config: Option<InternalAddressConfig>,
    #[serde(default)]
    pub skip_xff_append: bool,
    pub local_reply_config: Option<LocalReplyConfig>,
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    pub via: Option<String>,
    pub generate_request_id: Option<bool>,
    #[serde(default)]
    pub preserve_external_request_id: bool,
    #[serde(default)]
    pub always_set_request_id_in_response: bool,
    #[serde(default)]
    pub strip_any_host_port: bool,
    #[serde(default)]
    pub strip_matching_host_port: bool,
    #[serde(default)]
    pub forward_client_cert_details: ForwardClientCertDetails,
    /// Only about mTLS clients' certificates, which wasp (plaintext only)
    /// never has: accepted and without effect.
    pub set_current_client_cert_details: Option<serde_json::Value>,
    /// Only the UUID extension, which is what wasp makes.
    pub request_id_extension: Option<RequestIdExtension>,
    pub tracing: Option<TracingConfig>,
    pub normalize_path: Option<bool>,
    #[serde(default)]
    pub merge_slashes: bool,
    #[serde(default)]
    pub path_with_escaped_slashes_action: EscapedSlashesAction,
    pub server_name: Option<String>,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub request_headers_timeout: Option<Duration>,
    pub delayed_close_timeout: Option<Duration>,
    pub max_request_headers_kb: Option<u32>,
    pub common_http_protocol_options: Option<HttpProtocolOptionsConfig>,
    pub http_protocol_options: Option<Http1ProtocolOptionsConfig>,
    pub http2_protocol_options: Option<Http2ProtocolOptionsConfig>,
    #[serde(default)]
    pub upgrade_configs: Vec<UpgradeConfig>,
}

/// `forward_client_cert_details`: what becomes of a request's
/// x-forwarded-client-cert. All but ALWAYS_FORWARD_ONLY act on mTLS
/// clients only and sanitize (remove) it for the others, which on wasp's
/// plaintext listeners is every client.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ForwardClientCertDetails {
    #[default]
    Sanitize,
    ForwardOnly,
    AppendForward,
    SanitizeSet,
    AlwaysForwardOnly,
}

/// `request_id_extension` (a `typed_config` alone).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdExtension {
    pub typed_config: RequestIdExtensionConfig,
}

/// The request id extension's config: `envoy.request_id.uuid`'s.
#[derive(Debug, Clone)]
pub struct RequestIdExtensionConfig {
    /// Whether the tracing decision is written into the id (its 15th
    /// character).
    pub pack_trace_reason: bool,
    /// Whether random sampling draws on the id (else nothing is sampled
    /// by the connection manager).
    pub use_request_id_for_trace_sampling: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UuidRequestIdConfig {
    pack_trace_reason: Option<bool>,
    use_request_id_for_trace_sampling: Option<bool>,
}

impl Default for RequestIdExtensionConfig {
    fn default() -> Self {
        RequestIdExtensionConfig {
            pack_trace_reason: true,
            use_request_id_for_trace_sampling: true,
        }
    }
}

/// The connection manager's `tracing`: which requests are traced. wasp
/// has no tracer to send spans to, so a `provider` is refused, and the
/// options that only shape spans (tags, verbosity) have nothing to act on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    pub client_sampling: Option<PercentConfig>,
    pub random_sampling: Option<PercentConfig>,
    pub overall_sampling: Option<PercentConfig>,
    #[serde(default)]
    pub verbose: bool,
    pub max_path_tag_length: Option<u32>,
    #[serde(default)]
    pub custom_tags: Vec<serde_json::Value>,
    pub spawn_upstream_span: Option<bool>,
    pub provider: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for RequestIdExtensionConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::DeserializeSeed;
        super::TypedConfig::<Self>::new().deserialize(d)
    }
}

const REQUEST_ID_TYPES: &[&str] = &["envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig"];

impl Extensions for RequestIdExtensionConfig {
    const KIND: &'static str = "request id extension";

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        if !REQUEST_ID_TYPES.contains(&type_name) {
            return Err(unsupported(Self::KIND, type_name, REQUEST_ID_TYPES));
        }
        let c = UuidRequestIdConfig::deserialize(d)?;
        let default = RequestIdExtensionConfig::default();
        Ok(RequestIdExtensionConfig {
            pack_trace_reason: c.pack_trace_reason.unwrap_or(default.pack_trace_reason),
            use_request_id_for_trace_sampling: c
                .use_request_id_for_trace_sampling
                .unwrap_or(default.use_request_id_for_trace_sampling),
        })
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        match name {
            "envoy.request_id.uuid" => Self::from_type(REQUEST_ID_TYPES[0], d),
            _ => Err(unsupported(Self::KIND, name, &["envoy.request_id.uuid"])),
        }
    }
}

/// `path_with_escaped_slashes_action`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EscapedSlashesAction {
    #[default]
    ImplementationSpecificDefault,
    KeepUnchanged,
    RejectRequest,
    UnescapeAndRedirect,
    UnescapeAndForward,
}

/// Which downstream peers are internal: their requests get
/// `x-envoy-internal` and may steer retries with `x-envoy-*` headers.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InternalAddressConfig {
    #[serde(default)]
    pub unix_sockets: bool,
    #[serde(default)]
    pub cidr_ranges: Vec<CidrRangeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRangeConfig {
    pub address_prefix: String,
    pub prefix_len: Option<u32>,
}

/// A protocol a request may switch its connection to (`Upgrade:`, such as
/// `websocket`), and whether it may by default. Per-upgrade filter chains
/// are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    pub upgrade_type: String,
    pub enabled: Option<bool>,
    pub filters: Option<serde_json::Value>,
}

/// A route's say on an upgrade the connection manager lists (or not).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteUpgradeConfig {
    pub upgrade_type: String,
    pub enabled: Option<bool>,
    pub connect_config: Option<ConnectConfig>,
}

/// A route's `connect_config`: wasp ends CONNECT requests itself, opening
/// a TCP connection to the cluster.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// POST tunnels (Envoy's `allow_post`): refused.
    #[serde(default)]
    pub allow_post: bool,
}

/// Envoy's `Http2ProtocolOptions`, downstream (the connection manager's)
/// or upstream (a cluster's): the settings hyper's HTTP/2 connections
/// take. The flood limits Envoy adds are not here: the h2 crate has its
/// own.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptionsConfig {
    pub hpack_table_size: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_stream_window_size: Option<u32>,
    pub initial_connection_window_size: Option<u32>,
    pub connection_keepalive: Option<KeepaliveSettingsConfig>,
    #[serde(default)]
    pub allow_connect: bool,
}

/// HTTP/2 PINGs on an open connection: one each `interval`, and the
/// connection closed if an answer takes longer than `timeout`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveSettingsConfig {
    pub interval: Option<Duration>,
    pub timeout: Duration,
}

/// Envoy's `Http1ProtocolOptions` for downstream connections, of which
/// wasp has HTTP/1.0 acceptance.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http1ProtocolOptionsConfig {
    #[serde(default)]
    pub accept_http_10: bool,
    pub default_host_for_http_10: Option<String>,
}

/// Envoy's `HttpProtocolOptions` (`common_http_protocol_options`), of
/// which wasp has a connection's `idle_timeout` and
/// `max_requests_per_connection`, and (downstream only) a stream's
/// `max_stream_duration`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProtocolOptionsConfig {
    pub idle_timeout: Option<Duration>,
    pub max_requests_per_connection: Option<u32>,
    pub max_stream_duration: Option<Duration>,
}

/// A route's `max_stream_duration`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxStreamDurationConfig {
    pub max_stream_duration: Option<Duration>,
    pub grpc_timeout_header_max: Option<Duration>,
    pub grpc_timeout_header_offset: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodecType {
    #[default]
    #[serde(alias = "auto")]
    Auto,
    #[serde(alias = "http1")]
    Http1,
    #[serde(alias = "http2")]
    Http2,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteConfigurationConfig {
    pub name: Option<String>,
    #[serde(default)]
    pub ignore_port_in_host_matching: bool,
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHostConfig>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOptionConfig>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOptionConfig>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// Filters switched off (or on) here, by filter name.
    #[serde(default)]
    pub typed_per_filter_config: std::collections::BTreeMap<String, PerFilterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostConfig {
    pub name: String,
    pub domains: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteEntryConfig>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOptionConfig>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOptionConfig>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// For the routes that have none of their own.
    pub retry_policy: Option<RetryPolicyConfig>,
    /// `x-envoy-attempt-count` on each upstream request.
    #[serde(default)]
    pub include_request_attempt_count: bool,
    /// `x-envoy-attempt-count` on the response.
    #[serde(default)]
    pub include_attempt_count_in_response: bool,
    /// Filters switched off (or on) here, by filter name.
    #[serde(default)]
    pub typed_per_filter_config: std::collections::BTreeMap<String, PerFilterConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEntryConfig {
    pub name: Option<String>,
    /// For tracing (operation names), which wasp does not do: accepted.
    pub decorator: Option<serde_json::Value>,
    /// Opaque to wasp's router: accepted.
    pub metadata: Option<serde_json::Value>,
    #[serde(rename = "match")]
    pub matcher: RouteMatchConfig,
    pub route: Option<RouteActionConfig>,
    pub direct_response: Option<DirectResponseActionConfig>,
    pub redirect: Option<RedirectActionConfig>,
    #[serde(default)]
    pub request_headers_to_add: Vec<HeaderValueOptionConfig>,
    #[serde(default)]
    pub response_headers_to_add: Vec<HeaderValueOptionConfig>,
    #[serde(default)]
    pub request_headers_to_remove: Vec<String>,
    #[serde(default)]
    pub response_headers_to_remove: Vec<String>,
    /// Filters switched off (or on) here, by filter name.
    #[serde(default)]
    pub typed_per_filter_config: std::collections::BTreeMap<String, PerFilterConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub safe_regex: Option<RegexMatcherConfig>,
    /// Matches CONNECT requests (and only them).
    pub connect_matcher: Option<Empty>,
    #[serde(default)]
    pub headers: Vec<HeaderMatcherConfig>,
    #[serde(default)]
    pub query_parameters: Vec<QueryParameterMatcherConfig>,
    pub case_sensitive: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcherConfig {
    pub name: String,
    pub string_match: Option<StringMatcherConfig>,
    pub present_match: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteConfig {
    pub pattern: RegexMatcherConfig,
    pub substitution: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexMatcherConfig {
    pub regex: String,
    /// Accepted for v3 configs that still carry it; RE2 syntax is what the
    /// `regex` crate implements.
    pub google_re2: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcherConfig {
    pub name: String,
    pub exact_match: Option<String>,
    pub prefix_match: Option<String>,
    pub suffix_match: Option<String>,
    pub contains_match: Option<String>,
    pub safe_regex_match: Option<RegexMatcherConfig>,
    pub present_match: Option<bool>,
    pub string_match: Option<StringMatcherConfig>,
    #[serde(default)]
    pub invert_match: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatcherConfig {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub safe_regex: Option<RegexMatcherConfig>,
    #[serde(default)]
    pub ignore_case: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteActionConfig {
    pub cluster: Option<String>,
    pub weighted_clusters: Option<RouteWeightedClustersConfig>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewriteConfig>,
    pub host_rewrite_literal: Option<String>,
    #[serde(default)]
    pub auto_host_rewrite: bool,
    pub timeout: Option<Duration>,
    /// With it, `timeout` is not used (Envoy's "new timeouts").
    pub max_stream_duration: Option<MaxStreamDurationConfig>,
    /// Deprecated in Envoy, still taken: a gRPC request's `grpc-timeout`
    /// as its router timeout (unless `max_stream_duration` is set).
    pub max_grpc_timeout: Option<Duration>,
    pub grpc_timeout_offset: Option<Duration>,
    pub retry_policy: Option<RetryPolicyConfig>,
    #[serde(default)]
    pub hash_policy: Vec<HashPolicyConfig>,
    #[serde(default)]
    pub priority: super::RoutingPriority,
    #[serde(default)]
    pub upgrade_configs: Vec<RouteUpgradeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteWeightedClustersConfig {
    pub clusters: Vec<ClusterWeightConfig>,
    pub total_weight: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeightConfig {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    #[serde(default)]
    pub retry_on: String,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<Duration>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    pub retry_back_off: Option<RetryBackOffConfig>,
    #[serde(default)]
    pub retry_host_predicate: Vec<Extension<RetryHostPredicateConfig>>,
    pub host_selection_retry_max_attempts: Option<u32>,
    #[serde(default)]
    pub retriable_headers: Vec<HeaderMatcherConfig>,
    #[serde(default)]
    pub retriable_request_headers: Vec<HeaderMatcherConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBackOffConfig {
    pub base_interval: Duration,
    pub max_interval: Option<Duration>,
}

/// A `retry_host_predicate` extension: which endpoints a retry avoids.
#[derive(Debug, Clone)]
pub enum RetryHostPredicateConfig {
    /// `previous_hosts`: those the request has already been sent to.
    PreviousHosts,
    /// `omit_canary_hosts`: wasp has no canary endpoints, so none.
    OmitCanaryHosts,
}

const RETRY_HOST_TYPES: &[&str] = &[
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.config.retry.previous_hosts.v2.PreviousHostsPredicate",
    "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate",
    "envoy.config.retry.omit_canary_hosts.v2.OmitCanaryHostsPredicate",
];
const RETRY_HOST_NAMES: &[&str] = &[
    "envoy.retry_host_predicates.previous_hosts",
    "envoy.retry_host_predicates.omit_canary_hosts",
];

impl Extensions for RetryHostPredicateConfig {
    const KIND: &'static str = "retry host predicate";

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        let kind = match RETRY_HOST_TYPES.iter().position(|t| *t == type_name) {
            Some(0 | 1) => RetryHostPredicateConfig::PreviousHosts,
            Some(_) => RetryHostPredicateConfig::OmitCanaryHosts,
            None => return Err(unsupported(Self::KIND, type_name, RETRY_HOST_TYPES)),
        };
        Empty::deserialize(d)?;
        Ok(kind)
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        match RETRY_HOST_NAMES.iter().position(|n| *n == name) {
            Some(0) => Self::from_type(RETRY_HOST_TYPES[0], d),
            Some(_) => Self::from_type(RETRY_HOST_TYPES[2], d),
            None => Err(unsupported(Self::KIND, name, RETRY_HOST_NAMES)),
        }
    }
}

/// One of a route's hash policies (for RING_HASH/MAGLEV clusters).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPolicyConfig {
    pub header: Option<HeaderHashConfig>,
    pub connection_properties: Option<ConnectionPropertiesHashConfig>,
    pub query_parameter: Option<QueryParameterHashConfig>,
    #[serde(default)]
    pub terminal: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderHashConfig {
    pub header_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPropertiesHashConfig {
    #[serde(default)]
    pub source_ip: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterHashConfig {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseActionConfig {
    pub status: u16,
    pub body: Option<DataSourceConfig>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RedirectActionConfig {
    pub host_redirect: Option<String>,
    pub path_redirect: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub scheme_redirect: Option<String>,
    #[serde(default)]
    pub https_redirect: bool,
    pub port_redirect: Option<u16>,
    pub response_code: Option<RedirectResponseCode>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectResponseCode {
    MovedPermanently,
    Found,
    SeeOther,
    TemporaryRedirect,
    PermanentRedirect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOptionConfig {
    pub header: HeaderValueConfig,
    pub append: Option<bool>,
    pub append_action: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueConfig {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// The HTTP filters wasp has.
#[derive(Debug, Clone)]
pub enum HttpFilterConfig {
    Router,
    Wasm(Box<WasmFilterConfig>),
}

const ROUTER_TYPES: &[&str] = &[
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.config.filter.http.router.v2.Router",
];
const ROUTER_NAMES: &[&str] = &["envoy.filters.http.router", "envoy.router"];
const WASM_TYPE: &str = "envoy.extensions.filters.http.wasm.v3.Wasm";
const WASM_NAME: &str = "envoy.filters.http.wasm";

impl Extensions for HttpFilterConfig {
    const KIND: &'static str = "HTTP filter";
    const SWITCHABLE: bool = true;

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        if ROUTER_TYPES.contains(&type_name) {
            Empty::deserialize(d)?;
            return Ok(HttpFilterConfig::Router);
        }
        if type_name == WASM_TYPE {
            return Ok(HttpFilterConfig::Wasm(Box::new(
                WasmFilterConfig::deserialize(d)?,
            )));
        }
        Err(unsupported(
            Self::KIND,
            type_name,
            &[ROUTER_TYPES[0], ROUTER_TYPES[1], WASM_TYPE],
        ))
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, d: D) -> Result<Self, D::Error> {
        if ROUTER_NAMES.contains(&name) {
            Empty::deserialize(d)?;
            return Ok(HttpFilterConfig::Router);
        }
        if name == WASM_NAME {
            return Ok(HttpFilterConfig::Wasm(Box::new(
                WasmFilterConfig::deserialize(d)?,
            )));
        }
        Err(unsupported(
            Self::KIND,
            name,
            &[ROUTER_NAMES[0], ROUTER_NAMES[1], WASM_NAME],
        ))
    }
}

/// A `typed_per_filter_config` value. wasp's HTTP filters have no
/// per-route settings, so what one can say is whether the filter runs:
/// Envoy's generic `envoy.config.route.v3.FilterConfig`.
#[derive(Debug, Clone)]
pub enum PerFilterConfig {
    Generic {
        disabled: bool,
        is_optional: bool,
        /// `config`: absent (`None`), empty (`Some("")`, which turns the
        /// filter on), or a config of the given type.
        config: Option<String>,
    },
    /// A filter's own per-route config, of this type.
    Specific(String),
}

const FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";

impl Extensions for PerFilterConfig {
    const KIND: &'static str = "per-filter config";

    fn from_type<'de, D: Deserializer<'de>>(type_name: &str, d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(default)]
            disabled: bool,
            #[serde(default)]
            is_optional: bool,
            config: Option<serde_norway::Mapping>,
        }
        if type_name != FILTER_CONFIG_TYPE {
            serde::de::IgnoredAny::deserialize(d)?;
            return Ok(PerFilterConfig::Specific(type_name.to_string()));
        }
        let f = Fields::deserialize(d)?;
        Ok(PerFilterConfig::Generic {
            disabled: f.disabled,
            is_optional: f.is_optional,
            config: f.config.map(|c| match c.get("@type") {
                Some(serde_norway::Value::String(t)) => super::proto_name(t).to_string(),
                _ => String::new(),
            }),
        })
    }

    fn from_name<'de, D: Deserializer<'de>>(name: &str, _: D) -> Result<Self, D::Error> {
        Err(unsupported(Self::KIND, name, &[FILTER_CONFIG_TYPE]))
    }
}

impl<'de> Deserialize<'de> for PerFilterConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::DeserializeSeed::deserialize(super::TypedConfig::<Self>::new(), d)
    }
}

/// `local_reply_config`: how wasp's own answers are rewritten.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalReplyConfig {
    #[serde(default)]
    pub mappers: Vec<ResponseMapperConfig>,
    pub body_format: Option<super::LogFormatConfig>,
}

/// One of `local_reply_config.mappers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMapperConfig {
    pub filter: super::AccessLogFilterConfig,
    pub status_code: Option<u16>,
    pub body: Option<DataSourceConfig>,
    pub body_format_override: Option<super::LogFormatConfig>,
    #[serde(default)]
    pub headers_to_add: Vec<HeaderValueOptionConfig>,
}
