//! `envoy.filters.network.redis_proxy`: a sharding Redis proxy.
//!
//! Each client connection is read as a stream of RESP requests
//! ([`resp`]); each request becomes one future that yields its reply
//! (answered locally, or sent to the shard its key hashes to, or split over
//! several shards and merged). The futures sit in a `FuturesOrdered`, so
//! replies go back in request order however the shards answer, and every
//! reply that is ready is written in one go.

pub mod command;
pub mod resp;
pub mod upstream;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::future::{Either, FutureExt, Ready, join_all, ready};
use futures_util::stream::{FuturesOrdered, StreamExt};

use crate::cluster::{WorkerClusters, lb};
use crate::config::path::{index, join};
use crate::config::{RedisProxyConfig, RedisRouteConfig, ValidationError};
use crate::stats::{Counter, Gauge, Histogram, Scope};
use tokio::time::Instant;

use super::Downstream;
use super::io::{Sink, Source};
use command::Kind;
use resp::Request;
use upstream::{ReplyResult, UpstreamClient, UpstreamError, Upstreams};

/// Requests one client may have in flight before wasp stops reading from it.
const MAX_IN_FLIGHT: usize = 1024;
/// Bytes of one unfinished request wasp buffers before reading stops... and
/// the request is refused: a bulk string may be up to 512 MiB, as in Redis.
const MAX_REQUEST_BUFFER: usize = resp::MAX_BULK_LEN + 64 * 1024;

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub prefix: Vec<u8>,
    pub remove_prefix: bool,
    pub cluster: String,
    /// (cluster, exclude_read_commands)
    pub mirrors: Vec<(String, bool)>,
}

/// A validated redis_proxy config.
#[derive(Debug, Clone)]
pub struct RedisProxySettings {
    pub stat_prefix: String,
    pub op_timeout: Duration,
    pub enable_hashtagging: bool,
    pub enable_redirection: bool,
    pub enable_command_stats: bool,
    pub latency_in_micros: bool,
    pub case_insensitive: bool,
    /// Longest prefix first.
    pub routes: Vec<RouteSettings>,
    pub catch_all: Option<RouteSettings>,
    pub auth_passwords: Vec<Bytes>,
    pub auth_username: Option<Bytes>,
}

impl RedisProxySettings {
    pub fn validate(
        c: &RedisProxyConfig,
        path: &str,
        clusters: &HashSet<String>,
    ) -> Result<Self, ValidationError> {
        crate::config::path::non_empty(&c.stat_prefix, path, "stat_prefix")?;
        let settings_path = join(path, "settings");
        let settings = c.settings.clone().ok_or_else(|| {
            ValidationError::new(
                settings_path.clone(),
                "settings (with op_timeout) is required",
            )
        })?;
        let op_timeout = settings.op_timeout.ok_or_else(|| {
            ValidationError::new(join(&settings_path, "op_timeout"), "op_timeout is required")
        })?;
        if op_timeout.is_zero() {
            return Err(ValidationError::new(
                join(&settings_path, "op_timeout"),
                "op_timeout must be greater than zero",
            ));
        }
        let route = |r: &RedisRouteConfig,
                     at: &str,
                     case_insensitive: bool|
         -> Result<RouteSettings, ValidationError> {
            if !clusters.contains(&r.cluster) {
                return Err(ValidationError::new(
                    join(at, "cluster"),
                    format!("unknown cluster `{}`", r.cluster),
                ));
            }
            let mut mirrors = Vec::new();
            for (i, m) in r.request_mirror_policy.iter().enumerate() {
                if !clusters.contains(&m.cluster) {
                    return Err(ValidationError::new(
                        join(&index(&join(at, "request_mirror_policy"), i), "cluster"),
                        format!("unknown cluster `{}`", m.cluster),
                    ));
                }
                mirrors.push((m.cluster.clone(), m.exclude_read_commands));
            }
            let mut prefix = r.prefix.clone().into_bytes();
            if case_insensitive {
                prefix.make_ascii_lowercase();
            }
            Ok(RouteSettings {
                prefix,
                remove_prefix: r.remove_prefix,
                cluster: r.cluster.clone(),
                mirrors,
            })
        };
        let pr_path = join(path, "prefix_routes");
        let pr = c.prefix_routes.clone().unwrap_or_default();
        let mut routes = Vec::new();
        for (i, r) in pr.routes.iter().enumerate() {
            let at = index(&join(&pr_path, "routes"), i);
            let settings = route(r, &at, pr.case_insensitive)?;
            if routes
                .iter()
                .any(|x: &RouteSettings| x.prefix == settings.prefix)
            {
                return Err(ValidationError::new(
                    join(&at, "prefix"),
                    format!("duplicate prefix `{}`", r.prefix),
                ));
            }
            routes.push(settings);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let catch_all = match (&pr.catch_all_route, &pr.catch_all_cluster, &c.cluster) {
            (Some(r), _, _) => Some(route(r, &join(&pr_path, "catch_all_route"), false)?),
            (None, Some(name), _) | (None, None, Some(name)) => {
                let at = if pr.catch_all_cluster.is_some() {
                    join(&pr_path, "catch_all_cluster")
                } else {
                    join(path, "cluster")
                };
                let r = RedisRouteConfig {
                    prefix: String::new(),
                    remove_prefix: false,
                    cluster: name.clone(),
                    request_mirror_policy: Vec::new(),
                };
                Some(
                    route(&r, &at, false)
                        .map_err(|e| ValidationError::new(at.clone(), e.message))?,
                )
            }
            (None, None, None) => None,
        };
        if routes.is_empty() && catch_all.is_none() {
            return Err(ValidationError::new(
                pr_path,
                "no routes: set prefix_routes.routes or catch_all_route",
            ));
        }
        let load = |d: &crate::config::DataSourceConfig, at: String| {
            d.load()
                .map(Bytes::from)
                .map_err(|m| ValidationError::new(at, m))
        };
        let mut auth_passwords = Vec::new();
        if let Some(p) = &c.downstream_auth_password {
            auth_passwords.push(load(p, join(path, "downstream_auth_password"))?);
        }
        for (i, p) in c.downstream_auth_passwords.iter().enumerate() {
            auth_passwords.push(load(p, index(&join(path, "downstream_auth_passwords"), i))?);
        }
        let auth_username = c
            .downstream_auth_username
            .as_ref()
            .map(|u| load(u, join(path, "downstream_auth_username")))
            .transpose()?;
        Ok(RedisProxySettings {
            stat_prefix: c.stat_prefix.clone(),
            op_timeout: op_timeout.0,
            enable_hashtagging: settings.enable_hashtagging,
            enable_redirection: settings.enable_redirection,
            enable_command_stats: settings.enable_command_stats,
            latency_in_micros: c.latency_in_micros,
            case_insensitive: pr.case_insensitive,
            routes,
            catch_all,
            auth_passwords,
            auth_username,
        })
    }
}

/// A route as a worker runs it.
struct Route {
    prefix: Vec<u8>,
    remove_prefix: bool,
    target: Rc<Upstreams>,
    mirrors: Vec<(Rc<Upstreams>, bool)>,
}

/// Envoy's `redis.<stat_prefix>.*` stats (one worker's shards).
struct RedisStats {
    downstream_cx_total: Counter,
    downstream_cx_active: Gauge,
    downstream_cx_protocol_error: Counter,
    downstream_cx_rx_bytes_total: Counter,
    downstream_cx_tx_bytes_total: Counter,
    downstream_rq_total: Counter,
    downstream_rq_active: Gauge,
    scope: Scope,
    commands: RefCell<HashMap<String, Rc<CommandStats>>>,
}

struct CommandStats {
    total: Counter,
    success: Counter,
    error: Counter,
    latency: Histogram,
}

/// One worker's redis_proxy.
pub struct RedisProxy {
    settings: RedisProxySettings,
    routes: Vec<Route>,
    catch_all: Option<Route>,
    stats: RedisStats,
}

type ReplyFuture<'a> = Either<Ready<Reply>, Pin<Box<dyn Future<Output = Reply> + 'a>>>;

/// What one client connection has said so far.
struct Session {
    authenticated: bool,
    transaction: Option<Transaction>,
}

/// A MULTI (or WATCH) in progress. Its commands go, unsplit, to a connection
/// of its own on the shard of the first key it names.
#[derive(Default)]
struct Transaction {
    pinned: Option<Rc<UpstreamClient>>,
    /// MULTI was given (WATCH alone does not start queueing).
    multi: bool,
}

/// A reply, and whether the connection closes after it.
struct Reply {
    bytes: Bytes,
    close: bool,
    /// With enable_command_stats: the command's stats and when it arrived.
    command: Option<(Rc<CommandStats>, Instant)>,
}

impl Reply {
    fn new(bytes: Bytes) -> Self {
        Reply {
            bytes,
            close: false,
            command: None,
        }
    }
}

fn now(bytes: Bytes) -> ReplyFuture<'static> {
    Either::Left(ready(Reply::new(bytes)))
}

fn static_reply(b: &'static [u8]) -> ReplyFuture<'static> {
    now(Bytes::from_static(b))
}

impl RedisProxy {
    pub fn new(settings: RedisProxySettings, clusters: &WorkerClusters, stats: &Scope) -> Self {
        let mut upstreams: HashMap<String, Rc<Upstreams>> = HashMap::new();
        let mut upstream = |name: &str| {
            upstreams
                .entry(name.to_string())
                .or_insert_with(|| Upstreams::new(clusters.get(name).expect("validated cluster")))
                .clone()
        };
        let mut build = |r: &RouteSettings| Route {
            prefix: r.prefix.clone(),
            remove_prefix: r.remove_prefix,
            target: upstream(&r.cluster),
            mirrors: r.mirrors.iter().map(|(c, x)| (upstream(c), *x)).collect(),
        };
        let routes = settings.routes.iter().map(&mut build).collect();
        let catch_all = settings.catch_all.as_ref().map(&mut build);
        let scope = stats.tagged("redis", "envoy_redis_prefix", &settings.stat_prefix);
        RedisProxy {
            stats: RedisStats {
                downstream_cx_total: scope.counter("downstream_cx_total"),
                downstream_cx_active: scope.gauge("downstream_cx_active"),
                downstream_cx_protocol_error: scope.counter("downstream_cx_protocol_error"),
                downstream_cx_rx_bytes_total: scope.counter("downstream_cx_rx_bytes_total"),
                downstream_cx_tx_bytes_total: scope.counter("downstream_cx_tx_bytes_total"),
                downstream_rq_total: scope.counter("downstream_rq_total"),
                downstream_rq_active: scope.gauge("downstream_rq_active"),
                scope,
                commands: RefCell::default(),
            },
            settings,
            routes,
            catch_all,
        }
    }

    /// Serves one client connection until it closes or QUITs.
    pub async fn serve(&self, d: Downstream) {
        let stats = &self.stats;
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        let mut read_buf = BytesMut::new();
        let mut write_buf = BytesMut::new();
        let mut in_flight: FuturesOrdered<ReplyFuture<'_>> = FuturesOrdered::new();
        let mut session = Session {
            authenticated: self.settings.auth_passwords.is_empty(),
            transaction: None,
        };
        let mut reading = true;
        loop {
            if !reading && in_flight.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(reply) = in_flight.next(), if !in_flight.is_empty() => {
                    let mut close = self.collect(reply, &mut write_buf);
                    // Everything else already answered goes in the same write.
                    while let Some(Some(reply)) = in_flight.next().now_or_never() {
                        close |= self.collect(reply, &mut write_buf);
                    }
                    stats.downstream_cx_tx_bytes_total.add(write_buf.len() as u64);
                    if d.write_all(&write_buf).await.is_err() {
                        break;
                    }
                    write_buf.clear();
                    if close {
                        break;
                    }
                }
                // Cancel-safe: it races reply writing.
                n = d.read_buf(&mut read_buf), if reading && in_flight.len() < MAX_IN_FLIGHT => {
                    let n = match n {
                        Ok(0) | Err(_) => { reading = false; continue; }
                        Ok(n) => n,
                    };
                    stats.downstream_cx_rx_bytes_total.add(n as u64);
                    loop {
                        match resp::parse_request(&mut read_buf) {
                            Ok(Some(request)) => {
                                stats.downstream_rq_total.inc();
                                stats.downstream_rq_active.inc();
                                let reply = self.handle(request, &mut session);
                                in_flight.push_back(reply);
                            }
                            Ok(None) if read_buf.len() > MAX_REQUEST_BUFFER => {
                                stats.downstream_cx_protocol_error.inc();
                                in_flight.push_back(static_reply(b"-ERR Protocol error: request too large\r\n"));
                                reading = false;
                                break;
                            }
                            Ok(None) => break,
                            Err(e) => {
                                // Answer what came before, then the error, then close.
                                stats.downstream_cx_protocol_error.inc();
                                in_flight.push_back(now(resp::error(&format!("ERR {e}"))));
                                reading = false;
                                break;
                            }
                        }
                    }
                }
            }
        }
        if !write_buf.is_empty() {
            let _ = d.write_all(&write_buf).await;
        }
        d.close_write().await;
        stats.downstream_cx_active.dec();
    }

    /// Appends a finished reply to the write buffer; true if the connection
    /// closes after it.
    fn collect(&self, reply: Reply, out: &mut BytesMut) -> bool {
        self.stats.downstream_rq_active.dec();
        if let Some((c, started)) = &reply.command {
            if reply.bytes.starts_with(b"-") {
                c.error.inc();
            } else {
                c.success.inc();
            }
            let took = started.elapsed();
            c.latency.record(if self.settings.latency_in_micros {
                took.as_micros() as u64
            } else {
                took.as_millis() as u64
            });
        }
        out.extend_from_slice(&reply.bytes);
        reply.close
    }

    fn command_stats(&self, name: &str) -> Option<Rc<CommandStats>> {
        if !self.settings.enable_command_stats {
            return None;
        }
        let mut commands = self.stats.commands.borrow_mut();
        if !commands.contains_key(name) {
            let scope = self.stats.scope.child("command").child(name);
            let stats = Rc::new(CommandStats {
                total: scope.counter("total"),
                success: scope.counter("success"),
                error: scope.counter("error"),
                latency: scope.histogram("latency"),
            });
            commands.insert(name.to_string(), stats);
        }
        let stats = &commands[name];
        stats.total.inc();
        Some(stats.clone())
    }

    /// Turns one request into the future of its reply.
    fn handle(&self, request: Request, session: &mut Session) -> ReplyFuture<'_> {
        let mut name_buf = [0u8; 24];
        let name = request.command(&mut name_buf);
        let Some(kind) = command::kind(name) else {
            tracing::debug!(command = %name, "unsupported redis command");
            return now(unknown_command(&request));
        };
        if !session.authenticated && kind != Kind::Auth {
            return static_reply(b"-NOAUTH Authentication required.\r\n");
        }
        // Envoy's wording for malformed requests, so clients see the same
        // replies through either proxy.
        if kind == Kind::Mset && request.args.len() % 2 == 0 {
            return now(resp::error(&format!(
                "wrong number of arguments for '{}' command",
                String::from_utf8_lossy(&request.args[0])
            )));
        }
        if request.args.len() < command::min_args(kind) {
            return static_reply(b"-invalid request\r\n");
        }
        let command = self.command_stats(name);
        if kind == Kind::Transaction || session.transaction.is_some() {
            return self.transaction(request, kind, name, session);
        }
        let reply = match kind {
            Kind::Ping => match request.args.get(1) {
                Some(msg) => now(resp::bulk(msg)),
                None => static_reply(b"+PONG\r\n"),
            },
            Kind::Echo => now(resp::bulk(&request.args[1])),
            Kind::Time => now(time_reply()),
            Kind::Quit => Either::Left(ready(Reply {
                bytes: Bytes::from_static(b"+OK\r\n"),
                close: true,
                command: None,
            })),
            Kind::Auth => now(self.auth(&request, &mut session.authenticated)),
            Kind::Transaction => unreachable!("handled above"),
            Kind::Simple => self.forward(request, 1, name),
            Kind::Eval => self.forward(request, 3, name),
            Kind::Mget => self.fan_out(&request, 1, Merge::Array),
            Kind::Mset => self.fan_out(&request, 2, Merge::AllOk),
            Kind::SumPerKey => self.fan_out(&request, 1, Merge::Sum),
        };
        match command {
            None => reply,
            Some(c) => {
                let started = Instant::now();
                Either::Right(Box::pin(reply.map(move |mut r| {
                    r.command = Some((c, started));
                    r
                })))
            }
        }
    }

    /// MULTI/EXEC/DISCARD/WATCH/UNWATCH, and every command while one is open.
    fn transaction(
        &self,
        request: Request,
        kind: Kind,
        name: &str,
        session: &mut Session,
    ) -> ReplyFuture<'_> {
        let tx = session.transaction.get_or_insert_with(Transaction::default);
        match name {
            "multi" if tx.multi => return now(resp::error("ERR MULTI calls can not be nested")),
            "multi" => {
                tx.multi = true;
                // Not pinned yet: MULTI goes upstream with the first keyed command.
                if tx.pinned.is_none() {
                    return static_reply(b"+OK\r\n");
                }
            }
            "exec" | "discard" if !tx.multi => {
                session.transaction = None;
                return now(resp::error(&format!(
                    "ERR {} without MULTI",
                    name.to_ascii_uppercase()
                )));
            }
            "exec" | "discard" | "unwatch" if tx.pinned.is_none() => {
                let done = name != "unwatch";
                if done || !tx.multi {
                    session.transaction = None;
                }
                return if name == "exec" {
                    static_reply(b"*0\r\n")
                } else {
                    static_reply(b"+OK\r\n")
                };
            }
            _ => {}
        }
        let Some(tx) = session.transaction.as_mut() else {
            return static_reply(b"+OK\r\n");
        };
        if tx.pinned.is_none() {
            let key_at = if kind == Kind::Eval { 3 } else { 1 };
            let Some(key) = request
                .args
                .get(key_at)
                .filter(|_| kind != Kind::Transaction || name == "watch")
            else {
                // Keyless commands before the transaction is pinned are
                // answered as outside one (PING, ECHO, TIME).
                return match kind {
                    Kind::Ping | Kind::Echo | Kind::Time => {
                        let mut outside = Session {
                            authenticated: true,
                            transaction: None,
                        };
                        self.handle(request, &mut outside)
                    }
                    _ => now(resp::error(
                        "ERR this command is not supported inside a transaction before a keyed command",
                    )),
                };
            };
            let Some(route) = self.route(key) else {
                return static_reply(b"-no upstream host\r\n");
            };
            let pinned = match route.target.dedicated(self.hash(&route.target, key)) {
                Ok(p) => p,
                Err(e) => return now(e.reply()),
            };
            if tx.multi {
                // Its reply (+OK) was already given locally.
                drop(pinned.send(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n")));
            }
            tx.pinned = Some(pinned);
        }
        let pinned = tx.pinned.clone().expect("pinned above");
        if matches!(name, "exec" | "discard") {
            session.transaction = None;
        }
        let pending = Ok(pinned.send(request.encoded()));
        let op_timeout = self.settings.op_timeout;
        Either::Right(Box::pin(async move {
            // Holding `pinned` keeps the transaction's connection open until
            // this reply is in.
            let reply = await_reply(pending, op_timeout, &pinned.cluster().stats).await;
            Reply::new(reply.unwrap_or_else(UpstreamError::reply))
        }))
    }

    fn auth(&self, request: &Request, authenticated: &mut bool) -> Bytes {
        let s = &self.settings;
        if s.auth_passwords.is_empty() {
            return resp::error("ERR Client sent AUTH, but no password is set");
        }
        let ok = match request.args.len() {
            2 => {
                s.auth_username.is_none() && s.auth_passwords.iter().any(|p| *p == request.args[1])
            }
            3 => {
                s.auth_username
                    .as_ref()
                    .is_some_and(|u| *u == request.args[1])
                    && s.auth_passwords.iter().any(|p| *p == request.args[2])
            }
            _ => return resp::error("ERR wrong number of arguments for 'auth' command"),
        };
        if ok {
            *authenticated = true;
            Bytes::from_static(b"+OK\r\n")
        } else if request.args.len() == 3 {
            resp::error("WRONGPASS invalid username-password pair")
        } else {
            resp::error("ERR invalid password")
        }
    }

    fn route(&self, key: &[u8]) -> Option<&Route> {
        let matches = |prefix: &[u8]| {
            key.len() >= prefix.len()
                && if self.settings.case_insensitive {
                    key[..prefix.len()].eq_ignore_ascii_case(prefix)
                } else {
                    key.starts_with(prefix)
                }
        };
        self.routes
            .iter()
            .find(|r| matches(&r.prefix))
            .or(self.catch_all.as_ref())
    }

    /// The hash of `key` for the shard choice: its slot for a Redis Cluster;
    /// otherwise of its `{tag}` when hash tagging is on and the key has a
    /// non-empty one.
    fn hash(&self, target: &Upstreams, key: &[u8]) -> u64 {
        if target.redis_cluster {
            return lb::redis_slot(key);
        }
        let mut k = key;
        if self.settings.enable_hashtagging {
            if let Some(open) = key.iter().position(|&c| c == b'{') {
                if let Some(len) = key[open + 1..].iter().position(|&c| c == b'}') {
                    if len > 0 {
                        k = &key[open + 1..open + 1 + len];
                    }
                }
            }
        }
        lb::hash_key(k)
    }

    /// Sends a request whose key is argument `key_at` to its shard.
    fn forward(&self, mut request: Request, key_at: usize, name: &str) -> ReplyFuture<'_> {
        let Some(key) = request.args.get(key_at).cloned() else {
            return static_reply(b"-invalid request\r\n");
        };
        let Some(route) = self.route(&key) else {
            return static_reply(b"-no upstream host\r\n");
        };
        if route.remove_prefix && !route.prefix.is_empty() {
            request.args[key_at] = key.slice(route.prefix.len()..);
            request.raw = None;
        }
        let hash = self.hash(&route.target, &request.args[key_at]);
        let encoded = request.encoded();
        for (mirror, exclude_reads) in &route.mirrors {
            if !(*exclude_reads && command::is_read(name)) {
                // Fire and forget: a mirror's reply (or failure) is dropped.
                let _ = mirror.send(hash, encoded.clone());
            }
        }
        let pending = route.target.send(hash, encoded.clone());
        let target = &route.target;
        Either::Right(Box::pin(async move {
            Reply::new(self.finish(target, pending, encoded).await)
        }))
    }

    /// Splits a multi-key command by shard: each shard gets the same
    /// command with only its keys (each followed by `stride - 1` values),
    /// all in one round trip, and the replies are merged back in key order.
    /// (Envoy sends one single-key command per key; grouping, as twemproxy
    /// does, saves the shards and wasp all but one command each.) A Redis
    /// Cluster refuses keys of different slots in one command, so there the
    /// groups are per slot.
    fn fan_out(&self, request: &Request, stride: usize, merge: Merge) -> ReplyFuture<'_> {
        let mut shares: Vec<Share<'_>> = Vec::new();
        let mut unrouted = Vec::new();
        for (pos, chunk) in request.args[1..].chunks(stride).enumerate() {
            let Some(route) = self.route(&chunk[0]) else {
                unrouted.push((pos, UpstreamError::NoHost));
                continue;
            };
            let key = if route.remove_prefix {
                chunk[0].slice(route.prefix.len()..)
            } else {
                chunk[0].clone()
            };
            let target = &route.target;
            let hash = self.hash(target, &key);
            let endpoint = match target.endpoint(hash) {
                Ok(e) => e,
                Err(e) => {
                    unrouted.push((pos, e));
                    continue;
                }
            };
            let slot = target.redis_cluster.then_some(hash);
            let share = match shares.iter().position(|s| {
                std::ptr::eq(s.target, &**target)
                    && s.endpoint.address == endpoint.address
                    && s.slot == slot
            }) {
                Some(i) => &mut shares[i],
                None => {
                    shares.push(Share {
                        target,
                        endpoint,
                        slot,
                        args: vec![request.args[0].clone()],
                        positions: Vec::new(),
                    });
                    shares.last_mut().expect("just pushed")
                }
            };
            share.args.push(key);
            share.args.extend(chunk[1..].iter().cloned());
            share.positions.push(pos);
        }
        let keys = (request.args.len() - 1) / stride;
        let sent: Vec<_> = shares
            .into_iter()
            .map(|s| {
                let encoded = resp::encode(s.args.iter().map(|a| &a[..]));
                let pending = s.target.send_to(&s.endpoint, encoded.clone());
                (s.target, s.positions, pending, encoded)
            })
            .collect();
        Either::Right(Box::pin(async move {
            // All keys on one shard, in the client's order: its reply is the
            // answer as it is, unless it is an error (which the merge turns
            // into one per key, as Envoy answers).
            if sent.len() == 1 && sent[0].1.iter().copied().eq(0..keys) {
                let (target, positions, pending, encoded) =
                    sent.into_iter().next().expect("one share");
                let reply = self.finish(target, Ok(pending), encoded).await;
                if merge.passes_through(&reply) {
                    return Reply::new(reply);
                }
                return Reply::new(merge.apply(keys, vec![(positions, reply)], unrouted));
            }
            let replies = join_all(sent.into_iter().map(
                |(target, positions, pending, encoded)| async move {
                    (positions, self.finish(target, Ok(pending), encoded).await)
                },
            ))
            .await;
            Reply::new(merge.apply(keys, replies, unrouted))
        }))
    }
}

/// One shard's part of a multi-key command.
struct Share<'a> {
    target: &'a Upstreams,
    endpoint: std::sync::Arc<crate::cluster::Endpoint>,
    /// Redis Cluster: the keys' slot.
    slot: Option<u64>,
    /// The command name, then this shard's keys (and values).
    args: Vec<Bytes>,
    /// Where each of its keys is in the client's command.
    positions: Vec<usize>,
}

impl RedisProxy {
    /// Waits for a request's reply and, with `enable_redirection`, follows
    /// one MOVED or ASK to the node it names (asking the main thread to
    /// refresh the slot map after a MOVED). Upstream errors become Envoy's
    /// error replies.
    async fn finish(
        &self,
        target: &Upstreams,
        pending: Result<tokio::sync::oneshot::Receiver<ReplyResult>, UpstreamError>,
        request: Bytes,
    ) -> Bytes {
        let op_timeout = self.settings.op_timeout;
        let stats = &target.cluster.stats;
        let reply = match await_reply(pending, op_timeout, stats).await {
            Ok(r) => r,
            Err(e) => return e.reply(),
        };
        if !self.settings.enable_redirection {
            return reply;
        }
        let Some((ask, addr)) = redirection(&reply) else {
            return reply;
        };
        let client = target.client_for(addr);
        if ask {
            drop(client.send(Bytes::from_static(b"*1\r\n$6\r\nASKING\r\n")));
        } else {
            target.cluster.cluster.request_refresh();
        }
        let redirected = await_reply(Ok(client.send(request)), op_timeout, stats).await;
        redirected.unwrap_or_else(UpstreamError::reply)
    }
}

/// `-MOVED <slot> <ip:port>` → (false, addr); `-ASK ...` → (true, addr).
fn redirection(reply: &[u8]) -> Option<(bool, std::net::SocketAddr)> {
    let text = std::str::from_utf8(reply.strip_prefix(b"-")?.strip_suffix(b"\r\n")?).ok()?;
    let mut words = text.split(' ');
    let ask = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    let _slot = words.next()?;
    Some((ask, words.next()?.parse().ok()?))
}

#[derive(Clone, Copy)]
enum Merge {
    /// MGET: an array of the replies (errors become error elements).
    Array,
    /// MSET: OK if every SET was.
    AllOk,
    /// DEL and friends: the sum of the integers.
    Sum,
}

impl Merge {
    /// Whether one shard's reply to the whole command is already the
    /// client's reply.
    fn passes_through(self, reply: &[u8]) -> bool {
        match self {
            Merge::Array => reply.first() == Some(&b'*'),
            Merge::AllOk => reply == b"+OK\r\n",
            Merge::Sum => resp::as_integer(reply).is_some(),
        }
    }

    /// The client's reply to a command over `keys` keys, from each shard's
    /// reply with the positions of its keys, and the keys no shard took.
    fn apply(
        self,
        keys: usize,
        replies: Vec<(Vec<usize>, Bytes)>,
        unrouted: Vec<(usize, UpstreamError)>,
    ) -> Bytes {
        match self {
            Merge::Array => {
                let mut items = vec![Bytes::new(); keys];
                for (pos, e) in unrouted {
                    items[pos] = e.reply();
                }
                for (positions, reply) in replies {
                    match resp::array_items(&reply, positions.len()) {
                        Some(values) => {
                            for (pos, v) in positions.into_iter().zip(values) {
                                items[pos] = v;
                            }
                        }
                        None => {
                            // The shard's error stands for each of its keys.
                            let e = if reply.first() == Some(&b'-') {
                                reply
                            } else {
                                UpstreamError::Failure.reply()
                            };
                            for pos in positions {
                                items[pos] = e.clone();
                            }
                        }
                    }
                }
                let mut out = BytesMut::from(format!("*{keys}\r\n").as_bytes());
                for item in items {
                    out.extend_from_slice(&item);
                }
                out.freeze()
            }
            Merge::AllOk => {
                let failed = replies
                    .iter()
                    .filter(|(_, r)| &r[..] != b"+OK\r\n")
                    .map(|(p, _)| p.len())
                    .sum::<usize>()
                    + unrouted.len();
                if failed == 0 {
                    Bytes::from_static(b"+OK\r\n")
                } else {
                    resp::error(&format!("finished with {failed} error(s)"))
                }
            }
            Merge::Sum => {
                let mut sum = 0i64;
                let mut failed = unrouted.len();
                for (positions, r) in &replies {
                    match resp::as_integer(r) {
                        Some(n) => sum += n,
                        None => failed += positions.len(),
                    }
                }
                if failed == 0 {
                    resp::integer(sum)
                } else {
                    resp::error(&format!("finished with {failed} error(s)"))
                }
            }
        }
    }
}

/// Waits for an upstream reply for at most `op_timeout`; a late reply is
/// dropped when it comes and only this request fails.
async fn await_reply(
    pending: Result<tokio::sync::oneshot::Receiver<ReplyResult>, UpstreamError>,
    op_timeout: Duration,
    stats: &crate::cluster::ClusterStats,
) -> ReplyResult {
    let rx = pending?;
    stats.upstream_rq_active.inc();
    let deadline = tokio::time::Instant::now() + op_timeout;
    let result = match crate::clock::timeout_at(deadline, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(UpstreamError::Failure),
        Err(_) => {
            stats.upstream_rq_timeout.inc();
            Err(UpstreamError::Failure)
        }
    };
    stats.upstream_rq_active.dec();
    result
}

fn time_reply() -> Bytes {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (now.as_secs().to_string(), now.subsec_micros().to_string());
    resp::encode([secs.as_bytes(), micros.as_bytes()].into_iter())
}

/// Redis's own wording, so clients and people recognise it.
fn unknown_command(request: &Request) -> Bytes {
    let mut msg = format!(
        "ERR unknown command '{}', with args beginning with: ",
        String::from_utf8_lossy(&request.args[0])
    );
    for a in request.args.iter().skip(1) {
        msg.push('\'');
        msg.push_str(&String::from_utf8_lossy(a));
        msg.push_str("' ");
    }
    resp::error(&msg)
}
