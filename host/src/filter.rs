//! Filters: the built-in network filters that sit in a listener's filter
//! chain, and the HTTP routing the http_connection_manager does.
pub mod http;
pub mod network;
