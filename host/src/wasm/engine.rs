//! The process's one wasmtime engine, its epoch ticker, and modules compiled
//! once per distinct code (sha256) with an on-disk cache, so a restart does
//! not compile again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module, OptLevel};

/// How often the epoch advances: the granularity of callback deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine every VM runs on (created on first use, with its ticker
/// thread).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            // Linear memories grow in place instead of reserving 4 GiB of
            // address space each: VMs are many (per worker, per plugin).
            .memory_reservation(64 << 20)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(1 << 20);
        let engine = Engine::new(&config).expect("the wasmtime configuration is valid");
        let ticker = engine.weak();
        let spawned = std::thread::Builder::new()
            .name("wasp-wasm-epoch".into())
            .spawn(move || {
                while let Some(e) = ticker.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(EPOCH_TICK);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the wasm epoch ticker: callbacks have no deadline");
        }
        engine
    })
}

/// A compiled module and what identifies it.
#[derive(Clone)]
pub struct CompiledModule {
    pub module: Module,
    /// sha256 of the code, hex.
    pub sha256: String,
}

/// Compiles `code` (wasm binary or text), or finds it compiled: in this
/// process's memory, then in the disk cache.
pub fn compile(code: &[u8]) -> Result<CompiledModule, String> {
    static MEMORY: OnceLock<Mutex<Vec<(String, Module)>>> = OnceLock::new();
    let sha256 = hex(&Sha256::digest(code));
    let memory = MEMORY.get_or_init(Default::default);
    if let Some((_, m)) = lock(memory).iter().find(|(k, _)| *k == sha256) {
        return Ok(CompiledModule {
            module: m.clone(),
            sha256,
        });
    }
    let module = match cached(&sha256) {
        Some(m) => m,
        None => {
            let module = Module::new(engine(), code).map_err(|e| format!("{e:#}"))?;
            store_cached(&sha256, &module);
            module
        }
    };
    lock(memory).push((sha256.clone(), module.clone()));
    Ok(CompiledModule { module, sha256 })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where compiled modules are kept: `$WASP_WASM_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/wasp/wasm`, else `~/.cache/wasp/wasm`. An empty
/// `WASP_WASM_CACHE_DIR` turns the cache off.
fn cache_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("WASP_WASM_CACHE_DIR") {
            return (!d.is_empty()).then(|| PathBuf::from(d));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("wasp").join("wasm"))
    })
    .clone()
}

fn cache_path(sha256: &str) -> Option<PathBuf> {
    // The engine's settings and wasmtime's version are part of the key, so
    // an upgrade or a config change never loads an incompatible artifact.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut h);
    Some(cache_dir()?.join(format!("{sha256}-{:016x}.cwasm", h.finish())))
}

fn cached(sha256: &str) -> Option<Module> {
    let path = cache_path(sha256)?;
    if !path.exists() {
        return None;
    }
    // SAFETY: the file was written by `store_cached` below from
    // `Module::serialize` of this same engine configuration (the file name
    // carries the engine's compatibility hash), into a directory only this
    // user writes; wasmtime also checks its own header and version.
    #[allow(unsafe_code)]
    let loaded = unsafe { Module::deserialize_file(engine(), &path) };
    match loaded {
        Ok(m) => {
            tracing::debug!(path = %path.display(), "wasm module loaded from the compile cache");
            Some(m)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable compile cache entry");
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

fn store_cached(sha256: &str, module: &Module) {
    let Some(path) = cache_path(sha256) else {
        return;
    };
    let write = || -> std::io::Result<()> {
        let bytes = module.serialize().map_err(std::io::Error::other)?;
        let dir = path.parent().expect("cache paths have a parent");
        std::fs::create_dir_all(dir)?;
        // Write then rename, so a concurrent reader never sees half a file.
        let tmp = dir.join(format!(".{}.{}", sha256, std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::debug!(path = %path.display(), error = %e, "cannot write the wasm compile cache");
    }
}

/// Compiled-module bytes kept alive for a validated plugin.
pub type SharedModule = Arc<CompiledModule>;
