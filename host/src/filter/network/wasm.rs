//! `envoy.filters.network.wasm`: a proxy-wasm plugin as a network filter in
//! front of the terminal filter (tcp_proxy, redis_proxy, ...).
//!
//! Downstream bytes are `DOWNSTREAM_DATA` in `proxy_on_downstream_data`,
//! bytes going back to the client are `UPSTREAM_DATA` in
//! `proxy_on_upstream_data`; `PAUSE` holds them (they are offered again,
//! with whatever arrives next), `proxy_close_stream` closes the connection.
//! When the connection ends the plugin sees the close callbacks, then done
//! → log → delete.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::BytesMut;

use super::chain::{FilterContext, FilterStatus, NetworkFilter};
use crate::wasm::{
    Action, ConnectionFacts, FailurePolicy, PluginHandle, StreamCall, StreamContext, StreamData,
};

pub struct WasmNetworkFilter {
    plugin: PluginHandle,
    data: Rc<RefCell<StreamData>>,
    context: Option<StreamContext>,
}

impl WasmNetworkFilter {
    pub fn new(plugin: PluginHandle, connection: ConnectionFacts) -> Self {
        let mut data = StreamData::new(connection);
        data.protocol = "";
        WasmNetworkFilter {
            plugin,
            data: Rc::new(RefCell::new(data)),
            context: None,
        }
    }

    /// Runs a callback with `buf` as the stream's data buffer of that
    /// direction; maps the answer onto the chain's.
    fn run(
        &mut self,
        call: impl FnOnce(u32) -> StreamCall,
        mut buf: Option<(&mut BytesMut, bool)>,
        cx: &mut FilterContext,
    ) -> FilterStatus {
        let Some(ctx) = &self.context else {
            return self.failed(cx);
        };
        let mut size = 0;
        if let Some((b, downstream)) = &mut buf {
            let mut d = self.data.borrow_mut();
            let slot = if *downstream {
                &mut d.downstream_data
            } else {
                &mut d.upstream_data
            };
            std::mem::swap(slot, *b);
            size = slot.len() as u32;
        }
        let action = self
            .plugin
            .vm
            .call_stream(&self.plugin.plugin, ctx, call(size));
        if let Some((b, downstream)) = buf {
            let mut d = self.data.borrow_mut();
            let slot = if downstream {
                &mut d.downstream_data
            } else {
                &mut d.upstream_data
            };
            std::mem::swap(slot, b);
        }
        if self.data.borrow().close {
            cx.close();
            return FilterStatus::StopIteration;
        }
        match action {
            Action::Continue => FilterStatus::Continue,
            Action::Pause => FilterStatus::StopIteration,
            Action::Failed => self.failed(cx),
        }
    }

    fn failed(&self, cx: &mut FilterContext) -> FilterStatus {
        if self.plugin.plugin.failure_policy == FailurePolicy::Open {
            FilterStatus::Continue
        } else {
            cx.close();
            FilterStatus::StopIteration
        }
    }
}

impl NetworkFilter for WasmNetworkFilter {
    fn on_new_connection(&mut self, cx: &mut FilterContext) -> FilterStatus {
        self.context = self
            .plugin
            .vm
            .create_stream(&self.plugin, self.data.clone());
        self.run(|_| StreamCall::NewConnection, None, cx)
    }

    fn on_data(&mut self, data: &mut BytesMut, end: bool, cx: &mut FilterContext) -> FilterStatus {
        self.run(
            |size| StreamCall::DownstreamData { size, end },
            Some((data, true)),
            cx,
        )
    }

    fn on_local_close(&mut self) {
        self.data.borrow_mut().close = true;
    }

    fn on_write(&mut self, data: &mut BytesMut, end: bool, cx: &mut FilterContext) -> FilterStatus {
        self.run(
            |size| StreamCall::UpstreamData { size, end },
            Some((data, false)),
            cx,
        )
    }
}

impl Drop for WasmNetworkFilter {
    fn drop(&mut self) {
        let Some(ctx) = self.context.take() else {
            return;
        };
        let vm = &self.plugin.vm;
        let plugin = &self.plugin.plugin;
        // The downstream closed (peer REMOTE) or wasp closed it (LOCAL: the
        // plugin or the terminal filter ended it first).
        let peer = if self.data.borrow().close { 1 } else { 2 };
        vm.call_stream(plugin, &ctx, StreamCall::DownstreamClose { peer });
        vm.call_stream(plugin, &ctx, StreamCall::UpstreamClose { peer: 1 });
        vm.end_stream(plugin, &ctx);
    }
}
