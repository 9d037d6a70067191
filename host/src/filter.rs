//! Filters: the built-in network filters that sit in a listener's filter
//! chain.
pub mod http;
pub mod network;
