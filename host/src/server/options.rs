//! Envoy's command-line flags, the ones wasp serves.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "wasp",
    version,
    about = "An Envoy-model proxy that hosts proxy-wasm filters",
    long_about = "An Envoy-model proxy that hosts proxy-wasm filters.\n\n\
        With no configuration, wasp serves a built-in default: a listener on \
        127.0.0.1:10000 that answers every connection, and the admin interface \
        on 127.0.0.1:9901."
)]
pub struct Options {
    /// Path to an Envoy v3 bootstrap config (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    pub config_path: Option<PathBuf>,

    /// Bootstrap YAML given inline; merged over --config-path when both are set
    /// (maps merge, lists append, as protobuf merging does).
    #[arg(long = "config-yaml")]
    pub config_yaml: Option<String>,

    /// Number of worker threads (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<usize>,

    /// Log level: trace, debug, info, warning, error, critical, off.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,

    /// serve: run the proxy; validate: check the config (and everything it
    /// loads) without binding anything; init_only: set everything up, then exit.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    pub mode: Mode,

    /// On SIGTERM or /quitquitquit, how long open connections may take to finish.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    pub drain_time_s: u64,

    /// Write the admin address (ip:port) to this file once bound.
    #[arg(long = "admin-address-path")]
    pub admin_address_path: Option<PathBuf>,

    /// Overrides node.cluster.
    #[arg(long = "service-cluster")]
    pub service_cluster: Option<String>,

    /// Overrides node.id.
    #[arg(long = "service-node")]
    pub service_node: Option<String>,

    /// Write logs to this file instead of stderr.
    #[arg(long = "log-path")]
    pub log_path: Option<PathBuf>,

    /// Accepted for Envoy compatibility; wasp has no hot restart.
    #[arg(long = "disable-hot-restart")]
    pub disable_hot_restart: bool,

    /// Accepted for Envoy compatibility; wasp has no hot restart.
    #[arg(long = "base-id")]
    pub base_id: Option<u32>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "snake_case")]
pub enum Mode {
    Serve,
    Validate,
    InitOnly,
}
