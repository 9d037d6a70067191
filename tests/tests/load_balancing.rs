//! Every lb_policy spreading real connections over three real backends,
//! with two workers.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use wasp_tests::{Wasp, backend, config, free_port};

struct Setup {
    wasp: Wasp,
    port: u16,
    _backends: Vec<backend::Backend>,
}

const NAMES: [&str; 3] = ["b0", "b1", "b2"];

fn start(lb_policy: &str, weights: [u32; 3], lb_extra: &str, tcp_extra: &str) -> Setup {
    let backends: Vec<_> = NAMES.iter().map(|n| backend::named(n)).collect();
    let endpoints: Vec<(SocketAddr, u32)> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| (b.addr, w))
        .collect();
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        &format!("          cluster: shards\n{tcp_extra}"),
        "",
        &config::cluster("shards", lb_policy, &endpoints, lb_extra),
    );
    let wasp = Wasp::start(&cfg, &["--concurrency", "2"]);
    Setup {
        wasp,
        port,
        _backends: backends,
    }
}

/// Connects from `source` (any 127/8 address is local) and returns the
/// backend's name; the connection is kept open if `keep` is given.
fn connect_from(port: u16, source: Option<Ipv4Addr>, keep: Option<&mut Vec<TcpStream>>) -> String {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
            .unwrap();
    }
    socket
        .connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)).into(),
            Duration::from_secs(5),
        )
        .unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut name = [0u8; 3];
    stream.read_exact(&mut name).expect("backend greeting");
    if let Some(keep) = keep {
        keep.push(stream);
    }
    String::from_utf8_lossy(&name[..2]).into_owned()
}

fn counts(names: impl IntoIterator<Item = String>) -> [u32; 3] {
    let mut c = [0; 3];
    for n in names {
        c[NAMES.iter().position(|x| *x == n).unwrap()] += 1;
    }
    c
}

/// Both workers took connections.
fn assert_both_workers(wasp: &Wasp, port: u16) {
    for w in 0..2 {
        let name = format!("listener.127.0.0.1_{port}.worker_{w}.downstream_cx_total");
        assert!(wasp.stat(&name) > 0, "worker {w} accepted nothing ({name})");
    }
}

fn within(actual: u32, expected: f64, tolerance: f64) -> bool {
    (actual as f64 - expected).abs() <= expected * tolerance
}

#[test]
fn round_robin_respects_weights() {
    let s = start("ROUND_ROBIN", [1, 2, 3], "", "");
    let c = counts((0..600).map(|_| connect_from(s.port, None, None)));
    // Smooth weighted round robin per worker: close to exact.
    for (i, expected) in [100.0, 200.0, 300.0].into_iter().enumerate() {
        assert!(within(c[i], expected, 0.1), "{c:?}");
    }
    assert_both_workers(&s.wasp, s.port);
}

#[test]
fn random_respects_weights() {
    let s = start("RANDOM", [1, 1, 2], "", "");
    let c = counts((0..800).map(|_| connect_from(s.port, None, None)));
    for (i, expected) in [200.0, 200.0, 400.0].into_iter().enumerate() {
        assert!(within(c[i], expected, 0.25), "{c:?}");
    }
    assert_both_workers(&s.wasp, s.port);
}

#[test]
fn least_request_balances_open_connections() {
    let s = start(
        "LEAST_REQUEST",
        [1, 1, 1],
        "    least_request_lb_config: { choice_count: 3 }\n",
        "",
    );
    let mut open = Vec::new();
    let c = counts((0..60).map(|_| connect_from(s.port, None, Some(&mut open))));
    // With every connection still open, each pick sees the active counts:
    // three random choices out of three endpoints keep them near 20 each.
    for n in c {
        assert!((12..=28).contains(&n), "{c:?}");
    }
    assert_both_workers(&s.wasp, s.port);
    drop(open);
}

/// Maps `keys` source addresses to backends, each key connecting `rounds`
/// times; panics if any key moves between rounds.
fn hash_mapping(port: u16, keys: u32, rounds: u32) -> HashMap<Ipv4Addr, String> {
    let mut mapping = HashMap::new();
    for round in 0..rounds {
        for k in 0..keys {
            let ip = Ipv4Addr::new(127, 0, (k / 250) as u8 + 1, (k % 250) as u8 + 1);
            let name = connect_from(port, Some(ip), None);
            let first = mapping.entry(ip).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "source {ip} moved in round {round}");
        }
    }
    mapping
}

fn check_hash_policy(lb_policy: &str, extra: &str) {
    let weights = [1, 1, 2];
    let hash = "          hash_policy:\n          - source_ip: {}\n";
    let s = start(lb_policy, weights, extra, hash);
    let first = hash_mapping(s.port, 300, 3);
    assert_both_workers(&s.wasp, s.port);
    let c = counts(first.values().cloned());
    for (i, expected) in [75.0, 75.0, 150.0].into_iter().enumerate() {
        assert!(within(c[i], expected, 0.35), "{lb_policy} spread {c:?}");
    }
    // A restart (same endpoints, fresh process) keeps every key in place.
    let port = s.port;
    let cfg = std::fs::read_to_string(&s.wasp.config_path).unwrap();
    drop(s.wasp);
    let again = Wasp::start(&cfg, &["--concurrency", "2"]);
    let second = hash_mapping(port, 300, 1);
    assert_eq!(
        first, second,
        "{lb_policy} mapping changed across a restart"
    );
    drop(again);
}

#[test]
fn ring_hash_is_stable_across_workers_and_restarts() {
    check_hash_policy(
        "RING_HASH",
        "    ring_hash_lb_config: { minimum_ring_size: 1024 }\n",
    );
}

#[test]
fn maglev_is_stable_across_workers_and_restarts() {
    check_hash_policy("MAGLEV", "    maglev_lb_config: { table_size: 65537 }\n");
}
