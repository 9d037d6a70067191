//! wasp: an Envoy-model proxy that hosts proxy-wasm filters.
//!
//! # How a connection flows
//!
//! ```text
//! main thread                          worker thread (× --concurrency)
//! ───────────                          ──────────────────────────────
//! config::parse ── YAML → *Config      listener::WorkerListener::run
//! server::Bootstrap::validate            accept (SO_REUSEPORT socket)
//!   → ListenerSettings, ClusterSettings   └─ filter::network::WorkerChain::serve
//! cluster::Cluster (ArcSwap<EndpointSet>)      non-terminal filters (chain.rs)
//!   ↑ cluster::dns, redis_cluster refresh      then one terminal filter:
//!   ↑ cluster::health checks                   tcp_proxy → WorkerCluster::connect, io::pump
//! admin (stats, clusters, config_dump)         redis_proxy → resp, upstream (pipelined)
//!                                              http_connection_manager: HTTP/1.1 by
//!                                                http::h1::server on the connection's
//!                                                task (HTTP/2 by hyper's server) →
//!                                                http::mutation (x-forwarded-*, ids) →
//!                                                http::wasm filters (those the route
//!                                                enables) → http::route (and
//!                                                http::controls: timeouts,
//!                                                retries), http::router →
//!                                                http::pool per cluster (http::h1::client
//!                                                on the stream's task, or hyper's
//!                                                HTTP/2 client); wasp's own answers
//!                                                through http::local_reply and
//!                                                http::grpc where they are made
//! ```
//!
//! The main thread owns configuration, DNS, admin and shutdown; it publishes
//! immutable snapshots that workers read without locks. With
//! `--concurrency 1` the one worker runs on the main thread too (as tasks
//! of its own): a single-threaded process's syscalls are cheaper. A
//! connection lives and dies on the worker that accepted it, with that
//! worker's load-balancer state and stat shards ([`stats`]).
//!
//! Module map: [`config`] (YAML model, strict parsing, source positions),
//! [`server`] (bootstrap validation, binding, workers, signals, drain),
//! [`worker`] (with [`clock`], its cached time), [`listener`], [`cluster`]
//! (endpoints, DNS, load balancers), [`filter`] (network filters, HTTP
//! routing), [`access_log`], [`admin`], [`stats`].

pub mod access_log;
pub mod admin;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod filter;
pub mod listener;
pub mod server;
pub mod spare;
pub mod stats;
pub mod wasm;
pub mod worker;
