//! A validated plugin: its compiled module (checked imports and ABI
//! version), its configuration bytes, and its sandbox limits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{ExternType, InstancePre, Linker};

use super::abi::{self, AbiVersion};
use super::context::HostState;
use super::engine::{self, CompiledModule};
use crate::config::path::join;
use crate::config::{FailurePolicyConfig, PluginConfig, ValidationError};

/// What the affected streams get when the plugin's VM has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// 503 (HTTP) or close (TCP).
    Closed,
    /// The stream goes on as if the filter were not there.
    Open,
    /// As closed for the failed stream; the VM is rebuilt for the next.
    Reload,
}

/// A plugin, ready to be started on each worker's VM.
pub struct PluginSettings {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    pub module: CompiledModule,
    pub instance_pre: InstancePre<HostState>,
    pub abi: AbiVersion,
    pub vm_configuration: Bytes,
    pub configuration: Bytes,
    pub env: Vec<(String, String)>,
    pub failure_policy: FailurePolicy,
    pub callback_deadline: Duration,
    pub max_memory_bytes: usize,
    pub allowed_clusters: Option<HashSet<String>>,
    /// Hostcalls the plugin may make (None: all).
    pub allowed_capabilities: Option<HashSet<String>>,
    /// The log prefix Envoy uses for stream contexts: ` name root_id
    /// vm_id`, empty parts left out.
    pub log_prefix: String,
    /// ... and for the root context: ` root_id vm_id`.
    pub root_log_prefix: String,
}

impl std::fmt::Debug for PluginSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSettings")
            .field("name", &self.name)
            .field("root_id", &self.root_id)
            .field("vm_id", &self.vm_id)
            .field("sha256", &self.module.sha256)
            .finish_non_exhaustive()
    }
}

impl PluginSettings {
    /// Loads and compiles the code, checks its imports, and starts it once
    /// on a throw-away VM (`proxy_on_vm_start`, `proxy_on_configure`): a
    /// plugin that fails there is a config error.
    pub fn validate(
        c: &PluginConfig,
        path: &str,
        clusters: &HashSet<String>,
    ) -> Result<Arc<Self>, ValidationError> {
        let vm_path = join(path, "vm_config");
        let vm = c
            .vm_config
            .as_ref()
            .ok_or_else(|| ValidationError::new(&vm_path, "vm_config is required"))?;
        let code_path = join(&vm_path, "code");
        let code = vm
            .code
            .as_ref()
            .ok_or_else(|| ValidationError::new(&code_path, "code is required"))?;
        if code.remote.is_some() {
            return Err(ValidationError::new(
                join(&code_path, "remote"),
                "remote code is not supported; use code.local",
            ));
        }
        let local = code.local.as_ref().ok_or_else(|| {
            ValidationError::new(join(&code_path, "local"), "code.local is required")
        })?;
        let bytes = local
            .load()
            .map_err(|m| ValidationError::new(join(&code_path, "local"), m))?;
        let module = engine::compile(&bytes).map_err(|m| {
            ValidationError::new(
                join(&code_path, "local"),
                format!("not a loadable wasm module: {m}"),
            )
        })?;
        let abi = AbiVersion::detect(&module.module).ok_or_else(|| {
            ValidationError::new(
                join(&code_path, "local"),
                "missing or unknown Proxy-Wasm ABI version (the module exports none of proxy_abi_version_0_1_0, _0_2_0, _0_2_1)",
            )
        })?;
        let linker = abi::linker(abi);
        check_imports(&module, &linker).map_err(|m| ValidationError::new(&code_path, m))?;
        let instance_pre = linker
            .instantiate_pre(&module.module)
            .map_err(|e| ValidationError::new(&code_path, format!("{e:#}")))?;
        let config_bytes = |v: &Option<crate::config::AnyValue>, p: &str| match v {
            Some(v) => v
                .to_bytes()
                .map(Bytes::from)
                .map_err(|m| ValidationError::new(p, m)),
            None => Ok(Bytes::new()),
        };
        let vm_configuration = config_bytes(&vm.configuration, &join(&vm_path, "configuration"))?;
        let configuration = config_bytes(&c.configuration, &join(path, "configuration"))?;
        let mut env = Vec::new();
        if let Some(e) = &vm.environment_variables {
            for key in &e.host_env_keys {
                if let Ok(v) = std::env::var(key) {
                    env.push((key.clone(), v));
                }
            }
            env.extend(e.key_values.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let sandbox = c.sandbox.clone().unwrap_or_default();
        if let Some(allowed) = &sandbox.allowed_clusters {
            for (i, name) in allowed.iter().enumerate() {
                if !clusters.contains(name) {
                    return Err(ValidationError::new(
                        crate::config::path::index(&join(path, "sandbox.allowed_clusters"), i),
                        format!("unknown cluster `{name}`"),
                    ));
                }
            }
        }
        let failure_policy = match (c.failure_policy, c.fail_open) {
            (FailurePolicyConfig::FailOpen, _) | (FailurePolicyConfig::FailUnspecified, true) => {
                FailurePolicy::Open
            }
            (FailurePolicyConfig::FailReload, _) => FailurePolicy::Reload,
            _ => FailurePolicy::Closed,
        };
        let prefix = |parts: &[&str]| -> String {
            parts
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| format!(" {s}"))
                .collect()
        };
        let log_prefix = prefix(&[&c.name, &c.root_id, &vm.vm_id]);
        let root_log_prefix = prefix(&[&c.root_id, &vm.vm_id]);
        let plugin = Arc::new(PluginSettings {
            name: c.name.clone(),
            root_id: c.root_id.clone(),
            vm_id: vm.vm_id.clone(),
            module,
            instance_pre,
            abi,
            vm_configuration,
            configuration,
            env,
            failure_policy,
            callback_deadline: sandbox
                .callback_deadline
                .map_or(Duration::from_secs(1), |d| d.0),
            max_memory_bytes: sandbox.max_memory_bytes.unwrap_or(1 << 30) as usize,
            allowed_clusters: sandbox.allowed_clusters.map(|v| v.into_iter().collect()),
            allowed_capabilities: c
                .capability_restriction_config
                .as_ref()
                .filter(|r| !r.allowed_capabilities.is_empty())
                .map(|r| r.allowed_capabilities.keys().cloned().collect()),
            log_prefix,
            root_log_prefix,
        });
        super::vm::canary(&plugin).map_err(|m| ValidationError::new(path, m))?;
        Ok(plugin)
    }

    /// The key of the VM this plugin runs in: plugins with the same vm_id
    /// and code share one.
    pub fn vm_key(&self) -> (String, String) {
        (self.vm_id.clone(), self.module.sha256.clone())
    }
}

/// Every import must be one wasp provides, with the right signature; the
/// error lists all that are not.
fn check_imports(module: &CompiledModule, linker: &Linker<HostState>) -> Result<(), String> {
    let mut store = wasmtime::Store::new(engine::engine(), HostState::new("", Vec::new(), 0));
    let mut missing = Vec::new();
    for import in module.module.imports() {
        let ExternType::Func(want) = import.ty() else {
            missing.push(format!(
                "{}.{} (not a function)",
                import.module(),
                import.name()
            ));
            continue;
        };
        let ok = match linker.get(&mut store, import.module(), import.name()) {
            Ok(wasmtime::Extern::Func(f)) => wasmtime::FuncType::eq(&f.ty(&store), &want),
            _ => false,
        };
        if !ok {
            missing.push(format!("{}.{}: {want}", import.module(), import.name()));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the module imports functions wasp does not provide (or with another signature): {}",
            missing.join(", ")
        ))
    }
}
