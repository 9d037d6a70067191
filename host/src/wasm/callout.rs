//! `proxy_http_call`: a request to a configured cluster through the
//! worker's own client and load balancer, answered later through
//! `proxy_on_http_call_response` on the calling plugin's root context.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use super::abi::Status;
use super::context::{CallResponse, HostState, PendingCall};
use crate::filter::http::router::Upstream;

/// Largest http_call response body delivered to a plugin.
const MAX_RESPONSE_BODY: usize = 16 << 20;

/// Starts an http_call from the effective context; returns its id.
pub fn dispatch(
    state: &mut HostState,
    cluster: &str,
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    _trailers: Vec<(String, Bytes)>,
    timeout_ms: u32,
) -> Result<u32, Status> {
    let pseudo = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(method), Some(path), Some(authority)) =
        (pseudo(":method"), pseudo(":path"), pseudo(":authority"))
    else {
        return Err(Status::BadArgument);
    };
    let plugin = state.plugin().ok_or(Status::BadArgument)?.clone();
    if plugin
        .allowed_clusters
        .as_ref()
        .is_some_and(|allowed| !allowed.contains(cluster))
    {
        super::abi::log(
            state,
            3,
            &format!("http_call to cluster `{cluster}` is not allowed by the plugin's sandbox"),
        );
        return Err(Status::BadArgument);
    }
    let vm = state.vm.upgrade().ok_or(Status::InternalFailure)?;
    let upstream = {
        let mut upstreams = vm.upstreams.borrow_mut();
        match upstreams.get(cluster) {
            Some(u) => u.clone(),
            None => {
                let c = vm.clusters.get(cluster).ok_or(Status::BadArgument)?;
                let u = Rc::new(Upstream::new(c));
                upstreams.insert(cluster.to_string(), u.clone());
                u
            }
        }
    };
    let mut req = http::Request::builder()
        .method(http::Method::from_bytes(&method).map_err(|_| Status::BadArgument)?)
        .uri(
            std::str::from_utf8(&path)
                .ok()
                .and_then(|p| p.parse::<http::Uri>().ok())
                .ok_or(Status::BadArgument)?,
        )
        .header(http::header::HOST, &authority[..])
        // What Envoy's async client adds to every callout.
        .header("x-envoy-internal", "true")
        .header("x-envoy-expected-rq-timeout-ms", timeout_ms.to_string());
    for (k, v) in headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        req = req.header(k.as_str(), &v[..]);
    }
    let req = req.body(Full::new(body)).map_err(|_| Status::BadArgument)?;
    let root_id = state.root_of(state.effective).ok_or(Status::BadArgument)?;
    state.next_call_id = state.next_call_id.wrapping_add(1).max(1);
    let id = state.next_call_id;
    state.calls.insert(id, PendingCall { root_id });
    let generation = vm.generation();
    let weak = Rc::downgrade(&vm);
    let timeout = Duration::from_millis(u64::from(timeout_ms.max(1)));
    tokio::task::spawn_local(async move {
        let response = tokio::time::timeout(timeout, async {
            let resp = upstream.call(req).await?;
            let (parts, body) = resp.into_parts();
            let collected = Limited::new(body, MAX_RESPONSE_BODY).collect().await.ok()?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            let mut headers = vec![(
                ":status".to_string(),
                Bytes::from(parts.status.as_str().to_string()),
            )];
            headers.extend(
                parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes()))),
            );
            let trailers = trailers
                .iter()
                .flatten()
                .map(|(k, v)| (k.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect();
            Some(CallResponse {
                headers,
                body,
                trailers,
            })
        })
        .await
        .ok()
        .flatten();
        if let Some(vm) = weak.upgrade() {
            vm.call_response(generation, id, response);
        }
    });
    Ok(id)
}

/// gRPC status UNIMPLEMENTED.
const GRPC_UNIMPLEMENTED: u32 = 12;

/// Takes a gRPC call or stream from the effective context and ends it, on
/// the next turn of the worker's loop, with UNIMPLEMENTED through
/// `proxy_on_grpc_close`: wasp does not make gRPC callouts, and this is the
/// answer every SDK handles (a failing hostcall status may make one panic).
pub fn grpc_unimplemented(state: &mut HostState) -> Result<u32, Status> {
    let root_id = state.root_of(state.effective).ok_or(Status::BadArgument)?;
    let vm = state.vm.upgrade().ok_or(Status::InternalFailure)?;
    state.next_call_id = state.next_call_id.wrapping_add(1).max(1);
    let id = state.next_call_id;
    state.calls.insert(id, PendingCall { root_id });
    let generation = vm.generation();
    let weak = Rc::downgrade(&vm);
    tokio::task::spawn_local(async move {
        if let Some(vm) = weak.upgrade() {
            vm.grpc_close(
                generation,
                id,
                GRPC_UNIMPLEMENTED,
                "gRPC callouts are not implemented by wasp",
            );
        }
    });
    Ok(id)
}
