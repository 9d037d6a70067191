//! Network (L4) filters.
//!
//! A listener's filter chain ends in a terminal filter that owns the
//! downstream connection: tcp_proxy, echo or direct_response. Each has three
//! forms: the validated settings (pure data, checked by `--mode validate`), a
//! factory built once on the main thread (opening access logs), and a
//! per-worker instance holding that worker's cluster handles and stat shards.

pub mod direct_response;
pub mod echo;
pub mod io;
pub mod tcp_proxy;

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;

use crate::access_log::{self, StreamInfo};
use crate::cluster::WorkerClusters;
use crate::config::path::join;
use crate::config::{Extension, NetworkFilterConfig, ValidationError};
use crate::stats::Scope;

pub use tcp_proxy::{TcpProxy, TcpProxySettings};

/// A validated network filter.
#[derive(Debug, Clone)]
pub enum NetworkFilterSettings {
    TcpProxy(Arc<TcpProxySettings>),
    Echo,
    DirectResponse(Bytes),
}

impl NetworkFilterSettings {
    pub fn validate(
        config: &Extension<NetworkFilterConfig>,
        path: &str,
        clusters: &HashSet<String>,
    ) -> Result<Self, ValidationError> {
        let at = join(path, "typed_config");
        Ok(match &config.config {
            NetworkFilterConfig::TcpProxy(c) => NetworkFilterSettings::TcpProxy(Arc::new(
                TcpProxySettings::validate(c, &at, clusters)?,
            )),
            NetworkFilterConfig::Echo => NetworkFilterSettings::Echo,
            NetworkFilterConfig::DirectResponse(c) => {
                let bytes = match &c.response {
                    Some(source) => source
                        .load()
                        .map_err(|m| ValidationError::new(join(&at, "response"), m))?,
                    None => Vec::new(),
                };
                NetworkFilterSettings::DirectResponse(bytes.into())
            }
        })
    }
}

/// A network filter ready to be instantiated on each worker.
pub enum FilterFactory {
    TcpProxy {
        settings: Arc<TcpProxySettings>,
        logs: Vec<Arc<access_log::AccessLog>>,
    },
    Echo,
    DirectResponse(Bytes),
}

impl FilterFactory {
    /// Opens what the filter needs once per process (access log files).
    pub fn build(settings: &NetworkFilterSettings) -> std::io::Result<Self> {
        Ok(match settings {
            NetworkFilterSettings::TcpProxy(s) => FilterFactory::TcpProxy {
                logs: access_log::open_all(&s.access_logs)?,
                settings: s.clone(),
            },
            NetworkFilterSettings::Echo => FilterFactory::Echo,
            NetworkFilterSettings::DirectResponse(b) => FilterFactory::DirectResponse(b.clone()),
        })
    }

    /// This worker's instance.
    pub fn instantiate(&self, clusters: &WorkerClusters, stats: &Scope) -> TerminalFilter {
        match self {
            FilterFactory::TcpProxy { settings, logs } => TerminalFilter::TcpProxy(Rc::new(
                TcpProxy::new(settings.clone(), logs.clone(), clusters, stats),
            )),
            FilterFactory::Echo => TerminalFilter::Echo,
            FilterFactory::DirectResponse(b) => TerminalFilter::DirectResponse(b.clone()),
        }
    }
}

/// The filter that owns a connection once accepted.
#[derive(Clone)]
pub enum TerminalFilter {
    TcpProxy(Rc<TcpProxy>),
    Echo,
    DirectResponse(Bytes),
}

/// An accepted downstream connection, as filters see it.
pub struct Downstream {
    pub stream: TcpStream,
    pub info: StreamInfo,
    /// The listener's per_connection_buffer_limit_bytes.
    pub buffer_limit: usize,
}

impl TerminalFilter {
    /// Serves the connection until it closes.
    pub async fn serve(&self, downstream: Downstream) {
        match self {
            TerminalFilter::TcpProxy(p) => p.serve(downstream).await,
            TerminalFilter::Echo => echo::serve(downstream).await,
            TerminalFilter::DirectResponse(b) => direct_response::serve(downstream, b).await,
        }
    }
}
