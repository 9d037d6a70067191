//! Real `redis-server` processes on free loopback ports.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port, temp_dir};

/// A redis-server, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts redis-server with extra arguments (`--requirepass x`, ...).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let dir = temp_dir("redis");
        let log = dir.join("redis.log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (the test command installs it)");
        self.child = Some(child);
        let addr = self.addr();
        eventually(Duration::from_secs(10), "redis-server to start", || {
            // A server that exited (a port taken meanwhile, a bad flag)
            // fails the test at once, with redis-server's own words.
            if let Ok(Some(status)) = self.child.as_mut().expect("spawned").try_wait() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "redis-server on port {} exited ({status}):\n{said}",
                    self.port
                );
            }
            TcpStream::connect(addr).ok().map(|_| ())
        });
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the server (its port stays free for a restart).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends SIGSTOP / SIGCONT: a server that accepts but never answers.
    pub fn pause(&self, paused: bool) {
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Runs one command directly against this server; returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        raw_command(self.addr(), args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// Sends one RESP command and reads one line-or-bulk reply (enough for the
/// tests' direct checks).
pub fn raw_command(addr: SocketAddr, args: &[&str]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).unwrap();
    read_reply(&mut s)
}

/// Reads exactly one complete RESP reply (framed by wasp's own codec, which
/// its unit tests check against hand-written replies).
pub fn read_reply(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(Some(len)) = wasp::filter::network::redis_proxy::resp::reply_len(&out) {
            out.truncate(len);
            break;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A real Redis Cluster of `n` masters (no replicas), slots spread evenly
/// by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<_> = (0..n)
            .map(|i| {
                let conf = format!("nodes-{}-{i}.conf", std::process::id());
                // The bus port defaults to port + 10000, which nothing
                // reserved; a free one of its own keeps nodes from
                // colliding with other tests' ports.
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &conf,
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr().to_string());
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        for node in &nodes {
            eventually(Duration::from_secs(20), "cluster_state:ok", || {
                node.command(&["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                    .then_some(())
            });
        }
        RedisCluster { nodes }
    }

    /// The node id of node `i`.
    pub fn id(&self, i: usize) -> String {
        let reply = self.nodes[i].command(&["CLUSTER", "MYID"]);
        reply.lines().nth(1).unwrap_or_default().to_string()
    }

    /// Which node serves `key` (the others answer MOVED).
    pub fn owner(&self, key: &str) -> usize {
        (0..self.nodes.len())
            .find(|&i| !self.nodes[i].command(&["GET", key]).starts_with("-MOVED"))
            .expect("some node owns every slot")
    }
}
