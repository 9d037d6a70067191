//! A real HTTP server for the proxy to talk to: hyper, HTTP/1.1 and h2c
//! (prior knowledge) on one port, on its own thread and runtime.
//!
//! Every response is JSON describing what the backend saw: its name, the
//! method, path, HTTP version and request headers. `?delay_ms=N` waits
//! before answering; `?status=N` answers with that status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A running backend; it stops when dropped.
pub struct HttpBackend {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl HttpBackend {
    pub fn start(name: &'static str) -> HttpBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = tokio::select! {
                        r = listener.accept() => match r { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| answer(name, req));
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        HttpBackend {
            addr,
            stop: Some(stop),
        }
    }
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let param = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    if let Some(ms) = param("delay_ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
        .collect();
    let (method, path, version) = (
        req.method().to_string(),
        req.uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        format!("{:?}", req.version()),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "name": name,
        "method": method,
        "path": path,
        "version": version,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    if let Some(status) = param("status").and_then(|s| s.parse().ok()) {
        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    }
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// What curl saw.
#[derive(Debug)]
pub struct CurlResponse {
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl CurlResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The backend's JSON report.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Runs curl (the real one) with `args` and parses its `-i` output.
pub fn curl(args: &[&str]) -> CurlResponse {
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "-i", "--max-time", "15"])
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default().to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    CurlResponse {
        version,
        status,
        headers,
        body: body.to_string(),
    }
}
