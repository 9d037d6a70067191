//! The process: load and validate the config, bind, start the workers, serve
//! admin, then wait for SIGTERM/SIGINT or `/quitquitquit` and drain.

pub mod bootstrap;
pub mod logging;
pub mod options;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;

use crate::admin::{self, AdminState};
use crate::cluster::health::HealthChecker;
use crate::cluster::{ClusterManager, dns, redis_cluster};
use crate::config::{ConfigError, DEFAULT_CONFIG, DiscoveryType};
use crate::filter::network::FilterFactory;
use crate::listener::{self, ListenerFactory};
use crate::stats::Store;
use crate::worker::{self, WorkerSetup};

pub use bootstrap::Bootstrap;
pub use options::{Mode, Options};

/// The text to load and the name errors give it.
pub fn config_source(opts: &Options) -> Result<(String, String), ConfigError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            origin: p.display().to_string(),
            source,
        })
    };
    Ok(match (&opts.config_path, &opts.config_yaml) {
        (None, None) => (
            DEFAULT_CONFIG.to_string(),
            "built-in default config".to_string(),
        ),
        (Some(p), None) => (read(p)?, p.display().to_string()),
        (None, Some(y)) => (y.clone(), "--config-yaml".to_string()),
        (Some(p), Some(y)) => {
            let origin = format!("{} merged with --config-yaml", p.display());
            let parse = |text: &str, origin: &str| {
                serde_norway::from_str::<serde_norway::Value>(text)
                    .map_err(|e| crate::config::ConfigError::parse(origin, &e))
            };
            let mut base = parse(&read(p)?, &p.display().to_string())?;
            merge(&mut base, parse(y, "--config-yaml")?);
            let text =
                serde_norway::to_string(&base).map_err(|e| ConfigError::parse(&origin, &e))?;
            (text, origin)
        }
    })
}

/// Protobuf merge semantics: maps merge, lists append, scalars replace.
fn merge(base: &mut serde_norway::Value, over: serde_norway::Value) {
    use serde_norway::Value;
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

/// Runs wasp as `opts` says. Returns when the server has shut down.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let level = logging::parse_level(&opts.log_level)
        .with_context(|| format!("unknown log level `{}`", opts.log_level))?;
    let log = logging::init(level, opts.log_path.as_deref()).context("cannot open --log-path")?;

    let (text, origin) = config_source(&opts)?;
    let mut bootstrap = Bootstrap::load(&text, &origin)?;
    if let Some(c) = &opts.service_cluster {
        bootstrap.node.cluster = Some(c.clone());
    }
    if let Some(n) = &opts.service_node {
        bootstrap.node.id = Some(n.clone());
    }
    crate::wasm::set_node(crate::wasm::NodeInfo {
        id: bootstrap.node.id.clone().unwrap_or_default(),
        cluster: bootstrap.node.cluster.clone().unwrap_or_default(),
    });
    if opts.mode == Mode::Validate {
        println!("configuration '{origin}' OK");
        return Ok(());
    }
    // Build every filter once for the process (this opens access logs).
    let factories = bootstrap
        .listeners
        .iter()
        .map(|l| {
            let filters = l
                .filters
                .iter()
                .map(FilterFactory::build)
                .collect::<std::io::Result<Vec<_>>>()
                .with_context(|| format!("listener `{}`", l.name))?;
            Ok(Arc::new(ListenerFactory {
                settings: l.clone(),
                filters,
            }))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let concurrency = opts
        .concurrency
        .filter(|c| *c > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the main runtime")?;
    let stats = Store::new();
    let clusters = ClusterManager::new(bootstrap.clusters.clone(), &stats.root());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Warm clusters before accepting, as Envoy does: resolve DNS names and
    // run a first round of health checks. A name that does not resolve yet
    // is retried in the background.
    let health_checkers = runtime.block_on(async {
        let mut checkers = Vec::new();
        for c in clusters.iter() {
            if c.settings.redis_cluster.is_some() {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), redis_cluster::discover_once(c))
                        .await;
            } else if c.settings.discovery != DiscoveryType::Static {
                let _ = tokio::time::timeout(Duration::from_secs(5), dns::resolve_once(c)).await;
            }
            for hc in &c.settings.health_checks {
                let mut checker = HealthChecker::new(c.clone(), hc.clone());
                checker.round(true).await;
                checkers.push(checker);
            }
        }
        checkers
    });

    // Bind everything before starting anything: a port in use is an error
    // with nothing half-started.
    let mut per_worker: Vec<Vec<(Arc<ListenerFactory>, std::net::TcpListener)>> =
        (0..concurrency).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for f in &factories {
        let mut addr = f.settings.address;
        listener::ensure_free(addr)
            .with_context(|| format!("cannot bind listener `{}` to {addr}", f.settings.name))?;
        for sockets in per_worker.iter_mut() {
            let socket = listener::bind(addr)
                .with_context(|| format!("cannot bind listener `{}` to {addr}", f.settings.name))?;
            // Port 0: the first bind picks the port, the other workers share it.
            addr = socket.local_addr()?;
            sockets.push((f.clone(), socket));
        }
        bound.push((f.settings.name.clone(), addr));
    }
    let admin_listener = match bootstrap.admin {
        Some(addr) => {
            let l = listener::bind(addr).with_context(|| format!("cannot bind admin to {addr}"))?;
            Some(l)
        }
        None => None,
    };
    if opts.mode == Mode::InitOnly {
        println!("configuration '{origin}' initialized");
        return Ok(());
    }

    let config_json: serde_json::Value = serde_norway::from_str(&text).unwrap_or_default();
    let state = AdminState::new(
        stats.clone(),
        clusters.clone(),
        config_json,
        bound.clone(),
        opts.clone(),
        bootstrap.node.clone(),
        concurrency,
        shutdown_tx,
        log,
    );

    let setups = per_worker
        .into_iter()
        .enumerate()
        .map(|(index, listeners)| WorkerSetup {
            index,
            workers: concurrency,
            listeners,
            clusters: clusters.clone(),
            stats: stats.clone(),
            shutdown: shutdown_rx.clone(),
            drain_time: Duration::from_secs(opts.drain_time_s),
        });
    // One worker runs on the main thread, beside admin, rather than on a
    // thread of its own: a single-threaded process's syscalls skip the
    // reference count on every file they look up (the kernel shares no
    // file table), and no second thread is woken or scheduled.
    let main_thread = tokio::task::LocalSet::new();
    let mut worker_threads = Vec::new();
    let mut main_worker = None;
    for setup in setups {
        if concurrency == 1 {
            main_worker = Some(main_thread.spawn_local(worker::run_here(setup)));
        } else {
            worker_threads.push(worker::spawn(setup)?);
        }
    }

    tracing::info!(
        "wasp {} starting with {concurrency} worker(s), config {origin}",
        env!("CARGO_PKG_VERSION")
    );
    for (name, addr) in &bound {
        tracing::info!("listener `{name}` listening on {addr}");
    }

    main_thread.block_on(&runtime, async {
        if let Some(l) = admin_listener {
            let l = tokio::net::TcpListener::from_std(l)?;
            let addr = l.local_addr()?;
            tracing::info!("admin interface listening on http://{addr}/");
            if let Some(p) = &opts.admin_address_path {
                std::fs::write(p, addr.to_string()).with_context(|| {
                    format!("cannot write --admin-address-path {}", p.display())
                })?;
            }
            tokio::spawn(admin::serve(l, state.clone()));
        }
        for c in clusters.iter() {
            if c.settings.redis_cluster.is_some() {
                tokio::spawn(redis_cluster::refresh(c.clone(), shutdown_rx.clone()));
            } else if c.settings.discovery != DiscoveryType::Static {
                tokio::spawn(dns::refresh(c.clone(), shutdown_rx.clone()));
            }
        }
        for checker in health_checkers {
            tokio::spawn(checker.run(shutdown_rx.clone()));
        }
        wait_for_shutdown(shutdown_rx.clone()).await?;
        state.begin_shutdown();
        tracing::info!("shutting down: draining for up to {}s", opts.drain_time_s);
        // Keep admin answering (`/ready` says DRAINING) while workers drain.
        let mut joined = true;
        if let Some(w) = main_worker {
            joined &= w.await.is_ok();
        }
        joined &= tokio::task::spawn_blocking(move || {
            // Join every thread, even after one that panicked.
            let joins = worker_threads.into_iter().map(|w| w.join());
            joins.filter(Result::is_err).count() == 0
        })
        .await?;
        if !joined {
            bail!("a worker panicked");
        }
        tracing::info!("shutdown complete");
        Ok::<_, anyhow::Error>(())
    })
}

async fn wait_for_shutdown(mut quit: watch::Receiver<bool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("caught SIGTERM"),
        _ = int.recv() => tracing::info!("caught SIGINT"),
        _ = quit.wait_for(|q| *q) => {}
    }
    Ok(())
}
