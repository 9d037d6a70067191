//! redis_proxy end to end: real redis-server shards, the `redis` crate and
//! redis-cli as clients.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use redis::Commands;
use wasp_tests::redis::{RedisServer, raw_command, read_reply};
use wasp_tests::{Proxy, config, eventually, free_port};

struct Shards {
    servers: Vec<RedisServer>,
    wasp: Proxy,
    port: u16,
}

impl Shards {
    /// Three shards behind one RING_HASH cluster.
    fn start(settings_extra: &str, proxy_extra: &str) -> Shards {
        let servers: Vec<_> = (0..3).map(|_| RedisServer::start()).collect();
        let endpoints: Vec<_> = servers.iter().map(|s| (s.addr(), 1)).collect();
        let port = free_port();
        let proxy_extra = if proxy_extra.is_empty() {
            config::catch_all("shards")
        } else {
            proxy_extra.to_string()
        };
        let cfg = config::redis_proxy(
            port,
            settings_extra,
            &proxy_extra,
            &config::cluster("shards", "RING_HASH", &endpoints, ""),
        );
        let wasp = Proxy::start(&cfg, &["--concurrency", "2"]);
        Shards {
            servers,
            wasp,
            port,
        }
    }

    fn client(&self) -> redis::Connection {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        let con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap();
        con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        con
    }

    /// Which shard holds `key` (by asking each server directly).
    fn owner(&self, key: &str) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| s.command(&["EXISTS", key]).starts_with(":1"))
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

#[test]
fn every_command_family_works_across_shards() {
    let s = Shards::start("", "");
    let mut c = s.client();

    // Simple commands, hashed on their key.
    let _: () = c.set("greeting", "hello").unwrap();
    assert_eq!(c.get::<_, String>("greeting").unwrap(), "hello");
    assert_eq!(c.incr::<_, _, i64>("counter", 5).unwrap(), 5);
    let _: () = c.hset("h", "f", "v").unwrap();
    assert_eq!(c.hget::<_, _, String>("h", "f").unwrap(), "v");
    let _: () = c.rpush("list", &["a", "b", "c"]).unwrap();
    assert_eq!(
        c.lrange::<_, Vec<String>>("list", 0, -1).unwrap(),
        ["a", "b", "c"]
    );
    let _: () = c.zadd("z", "m", 2.5).unwrap();
    assert_eq!(c.zscore::<_, _, f64>("z", "m").unwrap(), 2.5);
    let _: () = c.expire("greeting", 100).unwrap();
    assert!(c.ttl::<_, i64>("greeting").unwrap() > 0);
    assert_eq!(
        s.owner("greeting")
            .map(|i| s.servers[i].command(&["GET", "greeting"])),
        Some("$5\r\nhello\r\n".into())
    );

    // EVAL on its first key.
    let v: String = redis::cmd("EVAL")
        .arg("return redis.call('GET', KEYS[1])")
        .arg(1)
        .arg("greeting")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, "hello");

    // MSET/MGET split over the shards and merged.
    let pairs: Vec<(String, String)> = (0..30)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    for server in &s.servers {
        server.command(&["CONFIG", "RESETSTAT"]);
    }
    let _: () = c.mset(&pairs).unwrap();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let mut with_missing = keys.clone();
    with_missing.push("absent");
    let values: Vec<Option<String>> = c.mget(&with_missing).unwrap();
    assert_eq!(values.len(), 31);
    for (i, v) in values[..30].iter().enumerate() {
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }
    assert_eq!(values[30], None);
    // Each shard got its keys in one MSET and one MGET, not a command per key.
    for server in &s.servers {
        let stats = server.command(&["INFO", "commandstats"]);
        for (cmd, calls) in [("mset", 1), ("mget", 1), ("set", 0), ("get", 0)] {
            let seen = stats
                .split(&format!("cmdstat_{cmd}:calls="))
                .nth(1)
                .and_then(|rest| rest.split(',').next()?.parse::<u32>().ok())
                .unwrap_or(0);
            assert_eq!(seen, calls, "{cmd} on a shard: {stats}");
        }
    }

    let owners: std::collections::HashSet<_> = keys.iter().map(|k| s.owner(k).unwrap()).collect();
    assert_eq!(owners.len(), 3, "30 keys spread over all three shards");
    // DEL, EXISTS, TOUCH, UNLINK sum over shards.
    assert_eq!(
        redis::cmd("EXISTS")
            .arg(&keys[..10])
            .arg("absent")
            .query::<i64>(&mut c)
            .unwrap(),
        10
    );
    assert_eq!(
        redis::cmd("TOUCH")
            .arg(&keys[..5])
            .query::<i64>(&mut c)
            .unwrap(),
        5
    );
    assert_eq!(c.del::<_, i64>(&keys[..10]).unwrap(), 10);
    assert_eq!(
        redis::cmd("UNLINK")
            .arg(&keys[10..])
            .arg("absent")
            .query::<i64>(&mut c)
            .unwrap(),
        20
    );

    // Answered locally.
    assert_eq!(redis::cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
    assert_eq!(
        redis::cmd("PING")
            .arg("hi")
            .query::<String>(&mut c)
            .unwrap(),
        "hi"
    );
    assert_eq!(
        redis::cmd("ECHO")
            .arg("x y")
            .query::<String>(&mut c)
            .unwrap(),
        "x y"
    );
    let time: Vec<String> = redis::cmd("TIME").query(&mut c).unwrap();
    assert!(time[0].parse::<u64>().unwrap() > 1_600_000_000);

    // Unknown commands get Redis's error, and the connection stays usable.
    let err = redis::cmd("KEYS")
        .arg("*")
        .query::<Vec<String>>(&mut c)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown command 'KEYS', with args beginning with: '*'"),
        "{err}"
    );
    // Envoy's reply to a malformed request.
    let err = redis::cmd("GET").query::<String>(&mut c).unwrap_err();
    // (redis-rs splits an error reply into code and text.)
    let text = err.to_string();
    assert!(
        text.contains("invalid") && text.contains("request"),
        "{text}"
    );
    assert_eq!(c.get::<_, String>("h2").ok(), None);
    assert_eq!(c.hget::<_, _, String>("h", "f").unwrap(), "v");
    assert!(s.wasp.stat("redis.redis.downstream_rq_total") > 20);
}

#[test]
fn hash_tags_keep_keys_on_one_shard() {
    let s = Shards::start("", "");
    let mut c = s.client();
    for user in 0..6 {
        let keys: Vec<String> = (0..8).map(|i| format!("{{user{user}}}.field{i}")).collect();
        for k in &keys {
            let _: () = c.set(k, 1).unwrap();
        }
        let owners: std::collections::HashSet<_> =
            keys.iter().map(|k| s.owner(k).unwrap()).collect();
        assert_eq!(owners.len(), 1, "user{user} keys spread over {owners:?}");
    }
}

#[test]
fn a_pipeline_of_ten_thousand_mixed_commands_keeps_order() {
    let s = Shards::start("", "");
    let mut c = s.client();
    let mut pipe = redis::pipe();
    for i in 0..2500 {
        pipe.set(format!("p{i}"), i).ignore();
        pipe.get(format!("p{i}"));
        pipe.incr(format!("n{}", i % 50), 1);
        pipe.cmd("PING");
    }
    let results: Vec<redis::Value> = pipe.query(&mut c).unwrap();
    assert_eq!(results.len(), 7500);
    let mut counters: HashMap<usize, i64> = HashMap::new();
    for (i, chunk) in results.chunks(3).enumerate() {
        assert_eq!(
            redis::from_redis_value::<i64>(chunk[0].clone()).unwrap(),
            i as i64,
            "GET p{i}"
        );
        let n = counters.entry(i % 50).or_default();
        *n += 1;
        assert_eq!(
            redis::from_redis_value::<i64>(chunk[1].clone()).unwrap(),
            *n,
            "INCR n{}",
            i % 50
        );
        assert_eq!(
            redis::from_redis_value::<String>(chunk[2].clone()).unwrap(),
            "PONG"
        );
    }
}

#[test]
fn downstream_and_upstream_auth() {
    let upstream = RedisServer::start_with(&["--requirepass", "backend-secret"]);
    let port = free_port();
    let cluster = config::cluster("locked", "RING_HASH", &[(upstream.addr(), 1)], "")
        + "    typed_extension_protocol_options:\n      envoy.filters.network.redis_proxy:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions\n        auth_password: { inline_string: backend-secret }\n";
    let proxy_extra = config::catch_all("locked")
        + "          downstream_auth_passwords:\n          - inline_string: front-secret\n          - inline_string: other-secret\n";
    let cfg = config::redis_proxy(port, "", &proxy_extra, &cluster);
    let _wasp = Proxy::start(&cfg, &[]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ask = |cmd: &str| {
        s.write_all(cmd.as_bytes()).unwrap();
        read_reply(&mut s)
    };
    assert_eq!(ask("GET x\r\n"), "-NOAUTH Authentication required.\r\n");
    assert_eq!(ask("AUTH wrong\r\n"), "-ERR invalid password\r\n");
    assert_eq!(ask("AUTH other-secret\r\n"), "+OK\r\n");
    // wasp authenticates itself to the backend with its own password.
    assert_eq!(ask("SET x 1\r\n"), "+OK\r\n");
    assert_eq!(ask("GET x\r\n"), "$1\r\n1\r\n");
}

#[test]
fn malformed_input_gets_a_protocol_error_and_a_close() {
    let s = Shards::start("", "");
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A good request, then garbage: the first is answered, then the error.
    c.write_all(b"PING\r\n*1\r\n+GET\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).expect("closed after the error");
    assert_eq!(all, "+PONG\r\n-ERR Protocol error: expected '$'\r\n");
    assert_eq!(s.wasp.stat("redis.redis.downstream_cx_protocol_error"), 1);
    // An absurd bulk length is refused before anything is buffered.
    let mut c = TcpStream::connect(s.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"*2\r\n$3\r\nGET\r\n$99999999999\r\n").unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    assert_eq!(all, "-ERR Protocol error: invalid bulk length\r\n");
}

/// Keys that the ring puts on each shard: (key, shard).
fn keys_by_shard(s: &Shards, c: &mut redis::Connection, n: usize) -> Vec<(String, usize)> {
    (0..n)
        .map(|i| {
            let k = format!("key{i}");
            let _: () = c.set(&k, format!("value{i}")).unwrap();
            let owner = s.owner(&k).unwrap();
            (k, owner)
        })
        .collect()
}

#[test]
fn a_shard_killed_mid_pipeline_fails_only_its_keys() {
    let mut s = Shards::start("", "");
    let mut c = s.client();
    let keys = keys_by_shard(&s, &mut c, 300);
    let victim = 1;
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 30,000 GETs in one stream, with the shard killed while they flow.
    let mut request = Vec::new();
    let rounds = 100;
    for _ in 0..rounds {
        for (k, _) in &keys {
            request.extend_from_slice(
                format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).as_bytes(),
            );
        }
    }
    let mut writer = raw.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&request));
    std::thread::sleep(Duration::from_millis(30));
    s.servers[victim].kill();

    // Read every reply, in order; bounded by time and count.
    let started = Instant::now();
    let expected = rounds * keys.len();
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 65536];
    while replies.len() < expected {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "hung after {} replies",
            replies.len()
        );
        let n = raw.read(&mut chunk).expect("replies keep coming");
        assert!(n > 0, "closed after {} replies", replies.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Some((reply, used)) = next_reply(&buf) {
            replies.push(reply);
            buf.drain(..used);
        }
    }
    sender.join().unwrap().unwrap();
    let mut failed_on_victim = 0;
    for (i, reply) in replies.iter().enumerate() {
        let (k, owner) = &keys[i % keys.len()];
        if reply.starts_with('-') {
            assert_eq!(*owner, victim, "{k} on a live shard failed: {reply}");
            assert!(
                reply == "-upstream failure" || reply == "-no upstream host",
                "{reply}"
            );
            failed_on_victim += 1;
        } else {
            assert_eq!(reply, &format!("value{}", &k[3..]), "reply {i} for {k}");
        }
    }
    assert!(failed_on_victim > 0, "the kill landed after the pipeline");
    // Keys of the live shards keep working on a fresh connection too.
    let (live_key, _) = keys.iter().find(|(_, o)| *o != victim).unwrap();
    assert!(c.get::<_, String>(live_key).is_ok());
}

/// Parses one `$n\r\n...` / `-err` / `+ok` reply; returns its text and size.
fn next_reply(buf: &[u8]) -> Option<(String, usize)> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.parse().ok()?;
        if len < 0 {
            return Some(("(nil)".into(), line_end + 2));
        }
        let end = line_end + 2 + len as usize;
        if buf.len() < end + 2 {
            return None;
        }
        return Some((
            String::from_utf8_lossy(&buf[line_end + 2..end]).into_owned(),
            end + 2,
        ));
    }
    Some((line, line_end + 2))
}

#[test]
fn op_timeout_fails_only_the_slow_request() {
    let s = Shards::start("            op_timeout: 0.3s\n", "");
    let mut c = s.client();
    let keys = keys_by_shard(&s, &mut c, 60);
    let (slow_key, slow) = keys[0].clone();
    let (fast_key, _) = keys.iter().find(|(_, o)| *o != slow).unwrap().clone();

    s.servers[slow].pause(true);
    let started = Instant::now();
    let err = c.get::<_, String>(&slow_key).unwrap_err();
    let took = started.elapsed();
    // Envoy's error reply `-upstream failure` (the client splits code and text).
    let text = err.to_string();
    assert!(
        text.contains("upstream") && text.contains("failure"),
        "{text}"
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The other shards answer meanwhile, on the same client connection.
    assert_eq!(
        c.get::<_, String>(&fast_key).unwrap(),
        format!("value{}", &fast_key[3..])
    );
    s.servers[slow].pause(false);
    // The late reply is discarded, not handed to the next request.
    eventually(
        Duration::from_secs(5),
        "the slow shard to answer again",
        || c.get::<_, String>(&slow_key).ok(),
    );
    for (k, _) in keys.iter().filter(|(_, o)| *o == slow).take(5) {
        assert_eq!(c.get::<_, String>(k).unwrap(), format!("value{}", &k[3..]));
    }
    assert!(s.wasp.stat("cluster.shards.upstream_rq_timeout") >= 1);
}

#[test]
fn health_checks_take_a_dead_shard_out_of_rotation() {
    let a = RedisServer::start();
    let mut b = RedisServer::start();
    let port = free_port();
    let hc = "    health_checks:\n    - timeout: 0.2s\n      interval: 0.2s\n      unhealthy_threshold: 2\n      healthy_threshold: 2\n      custom_health_check:\n        name: envoy.health_checkers.redis\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.health_checkers.redis.v3.Redis\n";
    let cluster = config::cluster("pair", "MAGLEV", &[(a.addr(), 1), (b.addr(), 1)], hc);
    let cfg = config::redis_proxy(port, "", &config::catch_all("pair"), &cluster);
    let wasp = Proxy::start(&cfg, &["--concurrency", "2"]);
    assert_eq!(wasp.stat("cluster.pair.membership_healthy"), 2);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    b.kill();
    eventually(Duration::from_secs(5), "b marked unhealthy", || {
        (wasp.stat("cluster.pair.membership_healthy") == 1).then_some(())
    });
    // Every key now goes to a.
    for i in 0..20 {
        let _: () = c.set(format!("after{i}"), i).unwrap();
        assert!(
            a.command(&["EXISTS", &format!("after{i}")])
                .starts_with(":1")
        );
    }
    let (_, clusters) = wasp.get("/clusters").unwrap();
    assert!(
        clusters.contains(&format!(
            "pair::{}::health_flags::/failed_active_hc",
            b.addr()
        )),
        "{clusters}"
    );
    b.restart();
    eventually(Duration::from_secs(5), "b healthy again", || {
        (wasp.stat("cluster.pair.membership_healthy") == 2).then_some(())
    });
    assert!(wasp.stat("cluster.pair.health_check.failure") >= 2);
}

#[test]
fn a_real_client_library_runs_a_mixed_workload() {
    let s = Shards::start("", "");
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let mut c = s.client();
            std::thread::spawn(move || {
                let mut rng = 0x9e3779b97f4a7c15u64 ^ t;
                let mut model: HashMap<String, i64> = HashMap::new();
                for i in 0..1500 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = format!("t{t}:k{}", rng % 40);
                    match i % 5 {
                        0 => {
                            let _: () = c.set(&key, i).unwrap();
                            model.insert(key, i);
                        }
                        1 => {
                            let got: Option<i64> = c.get(&key).unwrap();
                            assert_eq!(got, model.get(&key).copied(), "{key}");
                        }
                        2 => {
                            let n: i64 = c.incr(&key, 3).unwrap();
                            let v = model.entry(key).or_default();
                            *v += 3;
                            assert_eq!(n, *v);
                        }
                        3 => {
                            let ks: Vec<String> = (0..5).map(|j| format!("t{t}:k{j}")).collect();
                            let got: Vec<Option<i64>> = c.mget(&ks).unwrap();
                            let want: Vec<Option<i64>> =
                                ks.iter().map(|k| model.get(k).copied()).collect();
                            assert_eq!(got, want);
                        }
                        _ => {
                            let n: i64 = c.del(&key).unwrap();
                            assert_eq!(n, i64::from(model.remove(&key).is_some()));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("no client errors");
    }
    assert_eq!(s.wasp.stat("redis.redis.downstream_cx_protocol_error"), 0);
}

/// The Envoy v2-era example: a listener on 8000, keys starting `a` to
/// cluster `redis` and `b` to `redis_1`, strict_dns clusters with `hosts:`
/// and a redis health check. Only the backend addresses differ from the
/// published config (there is no `redis` host name here).
#[test]
fn the_v2_example_config_runs_unchanged_with_redis_cli() {
    let redis = RedisServer::start();
    let redis_1 = RedisServer::start();
    let cfg = format!(
        r#"static_resources:
  listeners:
  - name: redis_listener
    address:
      socket_address:
        address: 127.0.0.1
        port_value: 8000
    filter_chains:
    - filters:
      - name: envoy.redis_proxy
        config:
          stat_prefix: egress_redis
          settings:
            op_timeout: 5s
          prefix_routes:
            routes:
            - prefix: "a"
              cluster: redis
            - prefix: "b"
              cluster: redis_1
  clusters:
  - name: redis
    connect_timeout: 1s
    type: strict_dns
    lb_policy: MAGLEV
    hosts:
    - socket_address:
        address: 127.0.0.1
        port_value: {}
    health_checks:
    - custom_health_check:
        name: envoy.health_checkers.redis
        config: {{}}
      timeout: 1s
      interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
  - name: redis_1
    connect_timeout: 1s
    type: strict_dns
    lb_policy: MAGLEV
    hosts:
    - socket_address:
        address: 127.0.0.1
        port_value: {}
    health_checks:
    - custom_health_check:
        name: envoy.health_checkers.redis
        config: {{}}
      timeout: 1s
      interval: 1s
      unhealthy_threshold: 1
      healthy_threshold: 1
admin:
  access_log_path: "/dev/null"
  address:
    socket_address:
      address: 127.0.0.1
      port_value: 0
"#,
        redis.port, redis_1.port
    );
    let wasp = Proxy::start(&cfg, &[]);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", "8000"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["set", "a", "123"]), "OK");
    assert_eq!(cli(&["get", "a"]), "123");
    assert_eq!(cli(&["set", "b", "456"]), "OK");
    assert_eq!(redis.command(&["GET", "a"]), "$3\r\n123\r\n");
    assert_eq!(redis_1.command(&["GET", "b"]), "$3\r\n456\r\n");
    assert_eq!(redis.command(&["EXISTS", "b"]), ":0\r\n");
    // Keys under no prefix and no catch-all: Envoy's answer.
    assert_eq!(cli(&["get", "zzz"]), "no upstream host");
    assert!(wasp.stat("cluster.redis.health_check.success") >= 1);
    assert_eq!(
        raw_command(SocketAddr::from(([127, 0, 0, 1], 8000)), &["PING"]),
        "+PONG\r\n"
    );
}

#[test]
fn transactions_are_pinned_to_one_shard() {
    let s = Shards::start("", "");
    let mut c = s.client();
    // MULTI ... EXEC in one round trip, through redis-rs's atomic pipeline.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .set("{acct}.x", 10)
        .ignore()
        .incr("{acct}.x", 5)
        .incr("{acct}.y", 1)
        .query(&mut c)
        .unwrap();
    assert_eq!((a, b), (15, 1));
    let owner = s.owner("{acct}.x").unwrap();
    assert_eq!(s.owner("{acct}.y"), Some(owner));

    // DISCARD throws the queued commands away.
    let mut raw = TcpStream::connect(s.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut ask = |cmd: &str| {
        raw.write_all(cmd.as_bytes()).unwrap();
        read_reply(&mut raw)
    };
    assert_eq!(ask("EXEC\r\n"), "-ERR EXEC without MULTI\r\n");
    assert_eq!(ask("MULTI\r\n"), "+OK\r\n");
    assert_eq!(ask("MULTI\r\n"), "-ERR MULTI calls can not be nested\r\n");
    assert_eq!(ask("SET {acct}.x 0\r\n"), "+QUEUED\r\n");
    assert_eq!(ask("DISCARD\r\n"), "+OK\r\n");
    assert_eq!(ask("GET {acct}.x\r\n"), "$2\r\n15\r\n");

    // WATCH: a write by another client between WATCH and EXEC aborts it.
    assert_eq!(ask("WATCH {acct}.x\r\n"), "+OK\r\n");
    let _: () = c.set("{acct}.x", 99).unwrap();
    assert_eq!(ask("MULTI\r\n"), "+OK\r\n");
    assert_eq!(ask("SET {acct}.x 1\r\n"), "+QUEUED\r\n");
    assert_eq!(ask("EXEC\r\n"), "*-1\r\n");
    assert_eq!(ask("GET {acct}.x\r\n"), "$2\r\n99\r\n");
}

/// A 3-node real Redis Cluster behind `envoy.clusters.redis`: keys go to the
/// slot owner, and a resharded slot exercises ASK (mid-migration) and MOVED
/// (after it).
#[test]
fn redis_cluster_follows_slots_ask_and_moved() {
    use wasp_tests::redis::RedisCluster;
    let rc = RedisCluster::start(3);
    let port = free_port();
    let seeds: Vec<_> = rc.nodes.iter().map(|n| (n.addr(), 1)).collect();
    // The docs' form: cluster_type with a Struct, lb_policy CLUSTER_PROVIDED.
    let cluster = config::cluster("rc", "CLUSTER_PROVIDED", &seeds[..1], "")
        .replace("    type: STATIC\n", "")
        + "    cluster_type:\n      name: envoy.clusters.redis\n      typed_config:\n        \"@type\": type.googleapis.com/google.protobuf.Struct\n        value:\n          cluster_refresh_rate: 60s\n          cluster_refresh_timeout: 1s\n";
    let cfg = config::redis_proxy(
        port,
        "            enable_redirection: true\n",
        &config::catch_all("rc"),
        &cluster,
    );
    let wasp = Proxy::start(&cfg, &["--concurrency", "2"]);
    assert_eq!(
        wasp.stat("cluster.rc.membership_total"),
        3,
        "all masters discovered from one seed"
    );

    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    for i in 0..60 {
        let _: () = c.set(format!("user:{i}"), i).unwrap();
    }
    // Every key sits on its slot's owner, so each node answers it without MOVED.
    let mut per_node = [0; 3];
    for i in 0..60 {
        let key = format!("user:{i}");
        let owner = rc.owner(&key);
        assert_eq!(
            rc.nodes[owner].command(&["GET", &key]),
            format!("${}\r\n{i}\r\n", i.to_string().len())
        );
        per_node[owner] += 1;
    }
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");

    // Reshard the slot of `foo` (12182) from its owner to another node.
    let from = rc.owner("foo");
    let to = (from + 1) % 3;
    let (from_id, to_id) = (rc.id(from), rc.id(to));
    assert!(
        rc.nodes[to]
            .command(&["CLUSTER", "SETSLOT", "12182", "IMPORTING", &from_id])
            .starts_with("+OK")
    );
    assert!(
        rc.nodes[from]
            .command(&["CLUSTER", "SETSLOT", "12182", "MIGRATING", &to_id])
            .starts_with("+OK")
    );
    // Mid-migration, a key absent from the source gets ASK: wasp follows it.
    let _: () = c.set("foo", "asked").unwrap();
    assert_eq!(
        rc.nodes[to].command(&["CLUSTER", "COUNTKEYSINSLOT", "12182"]),
        ":1\r\n"
    );
    assert_eq!(
        rc.nodes[from].command(&["CLUSTER", "COUNTKEYSINSLOT", "12182"]),
        ":0\r\n"
    );

    // Finish the move: the old owner now answers MOVED, which wasp follows
    // (and then refreshes its slot map).
    for node in &rc.nodes {
        assert!(
            node.command(&["CLUSTER", "SETSLOT", "12182", "NODE", &to_id])
                .starts_with("+OK")
        );
    }
    let before = wasp.stat("cluster.rc.update_success");
    assert_eq!(c.get::<_, String>("foo").unwrap(), "asked");
    eventually(Duration::from_secs(5), "a refresh after MOVED", || {
        (wasp.stat("cluster.rc.update_success") > before).then_some(())
    });
    assert_eq!(c.get::<_, String>("foo").unwrap(), "asked");
    // Other slots are untouched.
    assert_eq!(c.get::<_, i64>("user:7").unwrap(), 7);
}

#[test]
fn command_stats_count_and_time_each_command() {
    let s = Shards::start("            enable_command_stats: true\n", "");
    let mut c = s.client();
    for i in 0..5 {
        let _: () = c.set(format!("s{i}"), i).unwrap();
    }
    let _ = redis::cmd("INCR")
        .arg("s1")
        .arg("extra")
        .query::<i64>(&mut c);
    let (_, stats) = s.wasp.get("/stats").unwrap();
    let stat = |name: &str| wasp_tests::stat_from(&stats, name);
    assert_eq!(stat("redis.redis.command.set.total"), Some(5));
    assert_eq!(stat("redis.redis.command.set.success"), Some(5));
    assert_eq!(stat("redis.redis.command.incr.error"), Some(1));
    let latency = stats
        .lines()
        .find(|l| l.starts_with("redis.redis.command.set.latency: "))
        .expect("latency histogram");
    assert!(latency.contains(" P99(nan,"), "{latency}");
    let (_, prom) = s.wasp.get("/stats/prometheus").unwrap();
    assert!(
        prom.contains("envoy_redis_command_set_latency_count{envoy_redis_prefix=\"redis\"} 5"),
        "{prom}"
    );
}

/// The same config and the same commands through Envoy and wasp, in front of
/// one real Redis: the replies a client sees match byte for byte. (The one
/// deliberate difference, Redis's own wording for unsupported commands, is
/// checked in `every_command_family_works_across_shards`.)
#[test]
fn replies_match_envoy() {
    let backend = RedisServer::start();
    let cluster = config::cluster("one", "MAGLEV", &[(backend.addr(), 1)], "");
    let (wp, ep) = (free_port(), free_port());
    let cfg = |port| config::redis_proxy(port, "", &config::catch_all("one"), &cluster);
    let _wasp = Proxy::start(&cfg(wp), &[]);
    let _envoy = Proxy::envoy(&cfg(ep), &[]);
    let script: &[&[&str]] = &[
        &["SET", "a", "1"],
        &["GET", "a"],
        &["GET", "missing"],
        &["MSET", "b", "2", "c", "3"],
        &["MGET", "a", "b", "missing", "c"],
        &["EXISTS", "a", "b", "missing"],
        &["DEL", "a", "b", "missing"],
        &["INCR", "c"],
        &["INCR", "c", "extra"],
        &["HSET", "h", "f", "v"],
        &["HGETALL", "h"],
        &["EVAL", "return KEYS[1]", "1", "c"],
        &["PING"],
        &["ECHO", "hello"],
        &["GET"],
        &["MSET", "x"],
        &["AUTH", "pw"],
        &["SET", "c", "4"],
        &["GET", "c"],
    ];
    let run = |port: u16| -> Vec<String> {
        backend.command(&["FLUSHALL"]);
        script
            .iter()
            .map(|cmd| raw_command(SocketAddr::from(([127, 0, 0, 1], port)), cmd))
            .collect()
    };
    let (w, e) = (run(wp), run(ep));
    let differences: Vec<String> = script
        .iter()
        .zip(w.iter().zip(&e))
        .filter(|(_, (w, e))| w != e)
        .map(|(cmd, (w, e))| format!("{cmd:?}: wasp {w:?} envoy {e:?}"))
        .collect();
    assert!(differences.is_empty(), "{differences:#?}");
}

#[test]
fn prefix_routes_choose_the_longest_prefix_strip_it_and_mirror_writes() {
    let (users, admins, rest, mirror) = (
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
        RedisServer::start(),
    );
    let clusters = config::cluster("users", "MAGLEV", &[(users.addr(), 1)], "")
        + &config::cluster("admins", "MAGLEV", &[(admins.addr(), 1)], "")
        + &config::cluster("rest", "MAGLEV", &[(rest.addr(), 1)], "")
        + &config::cluster("mirror", "MAGLEV", &[(mirror.addr(), 1)], "");
    let routes = "          prefix_routes:\n            case_insensitive: true\n            routes:\n            - prefix: \"user:\"\n              cluster: users\n              request_mirror_policy:\n              - cluster: mirror\n                exclude_read_commands: true\n            - prefix: \"user:admin:\"\n              cluster: admins\n              remove_prefix: true\n            catch_all_route:\n              cluster: rest\n";
    let port = free_port();
    let _wasp = Proxy::start(&config::redis_proxy(port, "", routes, &clusters), &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(raw_command(addr, &["SET", "USER:1", "a"]), "+OK\r\n");
    assert_eq!(
        raw_command(addr, &["SET", "user:admin:root", "b"]),
        "+OK\r\n"
    );
    assert_eq!(raw_command(addr, &["SET", "other", "c"]), "+OK\r\n");
    assert_eq!(
        raw_command(addr, &["GET", "user:1"]),
        "$-1\r\n",
        "keys are case-sensitive in Redis"
    );
    assert_eq!(raw_command(addr, &["GET", "USER:1"]), "$1\r\na\r\n");
    // Case-insensitive prefix match; the longer prefix wins and is stripped.
    assert_eq!(users.command(&["GET", "USER:1"]), "$1\r\na\r\n");
    assert_eq!(admins.command(&["GET", "root"]), "$1\r\nb\r\n");
    assert_eq!(rest.command(&["GET", "other"]), "$1\r\nc\r\n");
    // Writes on the mirrored route reach the mirror too; reads do not.
    let stats = eventually(Duration::from_secs(5), "the mirrored write", || {
        let stats = mirror.command(&["INFO", "commandstats"]);
        stats.contains("cmdstat_set:calls=1,").then_some(stats)
    });
    assert!(
        !stats.contains("cmdstat_get:"),
        "reads are not mirrored: {stats}"
    );
    assert_eq!(mirror.command(&["GET", "USER:1"]), "$1\r\na\r\n");
}
