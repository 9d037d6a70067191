//! The validated bootstrap: every rule checked before anything binds.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use crate::cluster::ClusterSettings;
use crate::config::path::{index, join};
use crate::config::{BootstrapConfig, ConfigError, NodeConfig, SourceMap, ValidationError};
use crate::listener::ListenerSettings;

/// A config that passed validation.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub node: NodeConfig,
    pub admin: Option<SocketAddr>,
    pub listeners: Vec<ListenerSettings>,
    pub clusters: Vec<ClusterSettings>,
}

impl Bootstrap {
    /// Checks `config` as a whole: names unique, references resolved.
    pub fn validate(config: &BootstrapConfig) -> Result<Bootstrap, ValidationError> {
        let clusters_path = "static_resources.clusters";
        let mut names = HashSet::new();
        let mut clusters = Vec::new();
        for (i, c) in config.static_resources.clusters.iter().enumerate() {
            let path = index(clusters_path, i);
            let settings = c.validate(&path)?;
            if !names.insert(settings.name.clone()) {
                return Err(ValidationError::new(
                    join(&path, "name"),
                    format!("duplicate cluster name `{}`", settings.name),
                ));
            }
            clusters.push(settings);
        }

        let listeners_path = "static_resources.listeners";
        let mut listener_names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut listeners = Vec::new();
        for (i, l) in config.static_resources.listeners.iter().enumerate() {
            let path = index(listeners_path, i);
            let settings = ListenerSettings::validate(l, &path, &names)?;
            if !listener_names.insert(settings.name.clone()) {
                return Err(ValidationError::new(
                    join(&path, "name"),
                    format!("duplicate listener name `{}`", settings.name),
                ));
            }
            if settings.address.port() != 0 && !addresses.insert(settings.address) {
                return Err(ValidationError::new(
                    join(&path, "address"),
                    format!("another listener already uses {}", settings.address),
                ));
            }
            listeners.push(settings);
        }

        let admin = match &config.admin {
            None => None,
            Some(a) => {
                let Some(sa) = &a.address.socket_address else {
                    return Err(ValidationError::new(
                        "admin.address",
                        "admin needs a socket_address",
                    ));
                };
                let ip: IpAddr = sa.address.parse().map_err(|_| {
                    ValidationError::new(
                        "admin.address.socket_address.address",
                        format!("`{}` is not an IP address", sa.address),
                    )
                })?;
                Some(SocketAddr::new(ip, sa.port_value))
            }
        };
        Ok(Bootstrap {
            node: config.node.clone(),
            admin,
            listeners,
            clusters,
        })
    }

    /// Parses and validates `text`, placing any error in it.
    pub fn load(text: &str, origin: &str) -> Result<Bootstrap, ConfigError> {
        let config = crate::config::parse(text, origin)?;
        Bootstrap::validate(&config)
            .map_err(|e| ConfigError::invalid(origin, &SourceMap::new(text), e))
    }
}
