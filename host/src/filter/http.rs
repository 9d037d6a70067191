//! HTTP: the route table an http_connection_manager matches requests
//! against, and the router that sends them upstream.

pub mod body;
pub mod codec;
pub mod controls;
pub mod grpc;
pub mod h1;
pub mod h2;
pub mod local_reply;
pub mod mutation;
pub mod path;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod route;
pub mod router;
pub mod tracing;
pub mod tunnel;
pub mod wasm;
