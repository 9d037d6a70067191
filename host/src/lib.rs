//! wasp: an Envoy-model proxy.
pub mod access_log;
pub mod cluster;
pub mod config;
pub mod stats;
