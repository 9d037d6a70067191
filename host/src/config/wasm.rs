//! Envoy's wasm extension configs: `envoy.extensions.filters.{http,network}.wasm.v3.Wasm`
//! wrapping a `PluginConfig` (`envoy.extensions.wasm.v3`).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

use super::{DataSourceConfig, Duration};

/// `envoy.extensions.filters.{http,network}.wasm.v3.Wasm`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmFilterConfig {
    pub config: PluginConfig,
}

/// `envoy.extensions.wasm.v3.PluginConfig`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub root_id: String,
    pub vm_config: Option<VmConfig>,
    pub configuration: Option<AnyValue>,
    /// Deprecated in Envoy for `failure_policy`; `true` means FAIL_OPEN.
    #[serde(default)]
    pub fail_open: bool,
    #[serde(default)]
    pub failure_policy: FailurePolicyConfig,
    #[serde(default)]
    pub allow_on_headers_stop_iteration: bool,
    pub capability_restriction_config: Option<CapabilityRestrictionConfig>,
    /// wasp's own sandbox limits (Envoy has no such block; leave it out
    /// for configs that must also load in Envoy).
    pub sandbox: Option<SandboxConfig>,
}

#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailurePolicyConfig {
    #[default]
    FailUnspecified,
    FailClosed,
    FailOpen,
    FailReload,
}

/// `envoy.extensions.wasm.v3.CapabilityRestrictionConfig`: which hostcalls
/// a plugin may use (an empty list allows all).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CapabilityRestrictionConfig {
    #[serde(default)]
    pub allowed_capabilities: BTreeMap<String, serde_norway::Value>,
}

/// wasp's per-plugin sandbox.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// CPU time one callback may take before it is stopped (default 1s).
    pub callback_deadline: Option<Duration>,
    /// Largest linear memory, in bytes (default 1 GiB, as Envoy).
    pub max_memory_bytes: Option<u64>,
    /// Clusters `proxy_http_call` may reach (default: any).
    pub allowed_clusters: Option<Vec<String>>,
}

/// `envoy.extensions.wasm.v3.VmConfig`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub vm_id: String,
    #[serde(default)]
    pub runtime: String,
    pub code: Option<AsyncDataSourceConfig>,
    pub configuration: Option<AnyValue>,
    #[serde(default)]
    pub allow_precompiled: bool,
    #[serde(default)]
    pub nack_on_code_cache_miss: bool,
    pub environment_variables: Option<EnvironmentVariablesConfig>,
}

/// `envoy.config.core.v3.AsyncDataSource` (only `local`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AsyncDataSourceConfig {
    pub local: Option<DataSourceConfig>,
    pub remote: Option<serde_norway::Value>,
}

/// `envoy.extensions.wasm.v3.EnvironmentVariables`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentVariablesConfig {
    #[serde(default)]
    pub host_env_keys: Vec<String>,
    #[serde(default)]
    pub key_values: BTreeMap<String, String>,
}

/// A `google.protobuf.Any` holding the configuration a plugin reads:
/// `StringValue`/`BytesValue` (passed raw) or `Struct` (passed as JSON).
#[derive(Debug, Clone, Deserialize)]
pub struct AnyValue {
    #[serde(rename = "@type")]
    pub type_url: String,
    #[serde(default)]
    pub value: serde_json::Value,
}

impl AnyValue {
    /// The bytes the plugin sees, as Envoy passes them.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let name = super::proto_name(&self.type_url);
        match (name, &self.value) {
            ("google.protobuf.StringValue", serde_json::Value::String(s)) => {
                Ok(s.clone().into_bytes())
            }
            (
                "google.protobuf.StringValue" | "google.protobuf.BytesValue",
                serde_json::Value::Null,
            ) => Ok(Vec::new()),
            ("google.protobuf.BytesValue", serde_json::Value::String(s)) => {
                base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|e| format!("value is not valid base64: {e}"))
            }
            ("google.protobuf.Struct", v @ serde_json::Value::Object(_)) => {
                Ok(serde_json::to_vec(v).expect("JSON values serialise"))
            }
            ("google.protobuf.Struct", serde_json::Value::Null) => Ok(b"{}".to_vec()),
            (
                "google.protobuf.StringValue"
                | "google.protobuf.BytesValue"
                | "google.protobuf.Struct",
                _,
            ) => Err(format!("`value` does not fit {name}")),
            _ => Err(format!(
                "unsupported configuration type `{}` (supported: google.protobuf.StringValue, BytesValue, Struct)",
                self.type_url
            )),
        }
    }
}
