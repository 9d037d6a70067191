//! Logs through `tracing`, with the level changeable at run time
//! (`POST /logging?level=`).

use std::sync::Arc;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::reload;

/// Turns Envoy's level names into a filter.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::TRACE,
        "debug" => LevelFilter::DEBUG,
        "info" => LevelFilter::INFO,
        "warning" | "warn" => LevelFilter::WARN,
        "error" | "critical" => LevelFilter::ERROR,
        "off" => LevelFilter::OFF,
        _ => return None,
    })
}

/// Changes the level of the installed logger.
#[derive(Clone)]
pub struct LogControl {
    set: Arc<dyn Fn(LevelFilter) -> bool + Send + Sync>,
    get: Arc<dyn Fn() -> Option<LevelFilter> + Send + Sync>,
}

impl LogControl {
    pub fn set_level(&self, level: LevelFilter) -> bool {
        (self.set)(level)
    }

    pub fn level(&self) -> Option<LevelFilter> {
        (self.get)()
    }
}

/// Installs the global logger writing to stderr or `path`.
pub fn init(level: LevelFilter, path: Option<&std::path::Path>) -> std::io::Result<LogControl> {
    let (filter, handle) = reload::Layer::new(level);
    let fmt = tracing_subscriber::fmt::layer().with_thread_names(true);
    let result = match path {
        Some(p) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?;
            tracing_subscriber::registry()
                .with(filter)
                .with(fmt.with_ansi(false).with_writer(Arc::new(file)))
                .try_init()
        }
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A logger already installed (tests running several servers) is fine.
    let _ = result;
    let get_handle = handle.clone();
    Ok(LogControl {
        set: Arc::new(move |l| handle.modify(|f| *f = l).is_ok()),
        get: Arc::new(move || get_handle.clone_current()),
    })
}
