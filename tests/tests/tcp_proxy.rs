//! tcp_proxy end to end: bytes, half-close, backpressure, connect failures,
//! idle timeout, weighted clusters, access log.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasp_tests::{Wasp, backend, config, eventually, free_port};

fn proxy_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The i-th byte of the test stream: not periodic in any small power of two,
/// so a dropped or repeated chunk shows.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8 ^ (i / 4093) as u8
}

#[test]
fn sixty_four_mib_each_way_with_a_slow_reader_stays_bounded() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    let echo = backend::echo();
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: echo\n",
        "    per_connection_buffer_limit_bytes: 32768\n",
        &config::cluster("echo", "ROUND_ROBIN", &[(echo.addr, 1)], ""),
    );
    let wasp = Wasp::start(&cfg, &["--concurrency", "2"]);
    let baseline = wasp.rss_kib();

    let client = TcpStream::connect(proxy_addr(port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = client.try_clone().unwrap();
    let write_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < TOTAL {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = pattern(sent + k as u64);
            }
            writer.write_all(&buf).unwrap();
            sent += buf.len() as u64;
        }
        // Half-close: the echo backend sees EOF only through wasp.
        writer.shutdown(Shutdown::Write).unwrap();
    });

    // Sample wasp's memory while the transfer runs.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        let pid = wasp.pid();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The deliberately slow reader: 64 KiB at a time with a pause, so the
    // writer is far ahead and wasp must push back instead of buffering.
    let mut reader = client;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let started = Instant::now();
    loop {
        let n = reader.read(&mut buf).expect("read through proxy");
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            let at = received + k as u64;
            assert_eq!(*b, pattern(at), "byte {at} differs");
        }
        received += n as u64;
        if received % (1024 * 1024) < n as u64 {
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "transfer too slow"
        );
    }
    write_thread.join().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(
        received, TOTAL,
        "every byte comes back, then EOF (half-close both ways)"
    );

    let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!("wasp RSS baseline {baseline} KiB, peak growth {grown} KiB");
    assert!(
        grown < 16 * 1024,
        "wasp grew by {grown} KiB while moving 64 MiB: buffering is not bounded"
    );
    eventually(Duration::from_secs(5), "byte stats", || {
        (wasp.stat("tcp.tcp.downstream_cx_rx_bytes_total") == TOTAL as i64
            && wasp.stat("tcp.tcp.downstream_cx_tx_bytes_total") == TOTAL as i64
            && wasp.stat("cluster.echo.upstream_cx_tx_bytes_total") == TOTAL as i64)
            .then_some(())
    });
}

#[test]
fn half_close_from_the_upstream_side_reaches_the_client() {
    // The `named` backend writes its name and keeps reading: the client's
    // FIN must reach it (it then closes), and its FIN must reach the client.
    let b = backend::named("alpha");
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: b\n",
        "",
        &config::cluster("b", "ROUND_ROBIN", &[(b.addr, 1)], ""),
    );
    let _wasp = Wasp::start(&cfg, &[]);
    let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = [0u8; 6];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"alpha\n");
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("EOF after the backend closes");
    assert!(rest.is_empty());
}

#[test]
fn connect_failures_move_to_the_next_endpoint() {
    let live = backend::named("live");
    let dead: SocketAddr = proxy_addr(free_port()); // nothing listens here
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: mixed\n          max_connect_attempts: 3\n",
        "",
        &config::cluster("mixed", "ROUND_ROBIN", &[(dead, 1), (live.addr, 1)], ""),
    );
    let wasp = Wasp::start(&cfg, &["--concurrency", "1"]);
    for _ in 0..10 {
        let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = [0u8; 5];
        c.read_exact(&mut line)
            .expect("every connection reaches the live endpoint");
        assert_eq!(&line, b"live\n");
    }
    assert!(wasp.stat("cluster.mixed.upstream_cx_connect_fail") >= 4);
    let (_, clusters) = wasp.get("/clusters").unwrap();
    assert!(
        clusters.contains(&format!("mixed::{dead}::cx_connect_fail::")),
        "{clusters}"
    );
}

#[test]
fn all_endpoints_down_closes_the_client_and_logs_uf() {
    let dead = proxy_addr(free_port());
    let port = free_port();
    let dir = wasp_tests::temp_dir("accesslog");
    let log = dir.join("access.log");
    let extra = format!(
        "          cluster: dead\n          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n",
        log.display()
    );
    let cfg = config::tcp_proxy(
        port,
        &extra,
        "",
        &config::cluster("dead", "ROUND_ROBIN", &[(dead, 1)], ""),
    );
    let wasp = Wasp::start(&cfg, &[]);
    let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).expect("closed, not hung");
    assert!(buf.is_empty());
    let line = eventually(Duration::from_secs(5), "access log line", || {
        std::fs::read_to_string(&log).ok().filter(|s| !s.is_empty())
    });
    // Envoy's default format for a TCP connection that never connected.
    assert!(line.contains("\"- - -\" 0 UF 0 0 "), "{line}");
    assert!(line.ends_with("\"-\"\n"), "{line}");
    assert_eq!(wasp.stat("cluster.dead.upstream_cx_connect_fail"), 1);
}

#[test]
fn access_log_records_bytes_and_upstream_host() {
    let echo = backend::echo();
    let port = free_port();
    let dir = wasp_tests::temp_dir("accesslog");
    let log = dir.join("access.log");
    let extra = format!(
        "          cluster: echo\n          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n              log_format:\n                text_format_source:\n                  inline_string: \"%BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS%\\n\"\n",
        log.display()
    );
    let cfg = config::tcp_proxy(
        port,
        &extra,
        "",
        &config::cluster("echo", "ROUND_ROBIN", &[(echo.addr, 1)], ""),
    );
    let _wasp = Wasp::start(&cfg, &[]);
    let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
    c.write_all(b"hello world").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"hello world");
    let line = eventually(Duration::from_secs(5), "access log line", || {
        std::fs::read_to_string(&log).ok().filter(|s| !s.is_empty())
    });
    assert_eq!(line, format!("11 11 {} echo -\n", echo.addr));
}

#[test]
fn idle_connections_are_closed_after_idle_timeout() {
    let b = backend::named("idle");
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: b\n          idle_timeout: 0.3s\n",
        "",
        &config::cluster("b", "ROUND_ROBIN", &[(b.addr, 1)], ""),
    );
    let wasp = Wasp::start(&cfg, &[]);
    let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut all = Vec::new();
    c.read_to_end(&mut all).expect("closed by wasp");
    let waited = started.elapsed();
    assert_eq!(all, b"idle\n");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(wasp.stat("tcp.tcp.idle_timeout"), 1);
}

#[test]
fn weighted_clusters_split_connections() {
    let a = backend::named("a");
    let b = backend::named("b");
    let port = free_port();
    let clusters = config::cluster("ca", "ROUND_ROBIN", &[(a.addr, 1)], "")
        + &config::cluster("cb", "ROUND_ROBIN", &[(b.addr, 1)], "");
    let cfg = config::tcp_proxy(
        port,
        "          weighted_clusters:\n            clusters:\n            - name: ca\n              weight: 1\n            - name: cb\n              weight: 3\n",
        "",
        &clusters,
    );
    let wasp = Wasp::start(&cfg, &[]);
    let mut counts = [0u32; 2];
    for _ in 0..400 {
        let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = [0u8; 2];
        c.read_exact(&mut line).unwrap();
        counts[usize::from(line[0] == b'b')] += 1;
    }
    // Expected 100 / 300; a binomial spread of this size stays well inside.
    assert!((60..=140).contains(&counts[0]), "{counts:?}");
    assert_eq!(
        wasp.stat("cluster.ca.upstream_cx_total") + wasp.stat("cluster.cb.upstream_cx_total"),
        400
    );
}

#[test]
fn strict_dns_cluster_resolves_names() {
    let b = backend::named("dns");
    let port = free_port();
    let cluster = format!(
        "  - name: named\n    type: STRICT_DNS\n    connect_timeout: 1s\n    dns_lookup_family: V4_ONLY\n    dns_refresh_rate: 0.2s\n    load_assignment:\n      cluster_name: named\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: localhost, port_value: {} }}\n",
        b.addr.port()
    );
    let cfg = config::tcp_proxy(port, "          cluster: named\n", "", &cluster);
    let wasp = Wasp::start(&cfg, &[]);
    let mut c = TcpStream::connect(proxy_addr(port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = [0u8; 4];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"dns\n");
    // The refresh keeps running.
    eventually(Duration::from_secs(5), "DNS refreshes", || {
        (wasp.stat("cluster.named.update_success") >= 3).then_some(())
    });
    let (_, clusters) = wasp.get("/clusters").unwrap();
    assert!(
        clusters.contains(&format!(
            "named::127.0.0.1:{}::hostname::localhost",
            b.addr.port()
        )),
        "{clusters}"
    );
}

#[test]
fn ipv6_listener_and_logical_dns_cluster() {
    let b = backend::named("six");
    let port = free_port();
    // A LOGICAL_DNS cluster uses the first address its name resolves to.
    let cluster = format!(
        "  - name: logical\n    type: LOGICAL_DNS\n    connect_timeout: 1s\n    dns_lookup_family: V4_ONLY\n    load_assignment:\n      cluster_name: logical\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: localhost, port_value: {} }}\n",
        b.addr.port()
    );
    let cfg = config::tcp_proxy(port, "          cluster: logical\n", "", &cluster).replace(
        "socket_address: { address: 127.0.0.1, port_value",
        "socket_address: { address: \"::1\", port_value",
    );
    let wasp = Wasp::start(&cfg, &[]);
    let mut c =
        TcpStream::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = [0u8; 4];
    c.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"six\n");
    assert_eq!(
        wasp.stat(&format!("listener.[__1]_{port}.downstream_cx_total")),
        1
    );
    assert_eq!(wasp.stat("cluster.logical.membership_total"), 1);
}

#[test]
fn config_yaml_merges_over_the_config_file() {
    let a = backend::named("a");
    let b = backend::named("b");
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: ca\n",
        "",
        &config::cluster("ca", "ROUND_ROBIN", &[(a.addr, 1)], ""),
    );
    // Lists append (a second cluster, a second listener), as protobuf merges.
    let second = free_port();
    let extra = format!(
        "static_resources:\n  clusters:\n{}  listeners:\n  - name: extra\n    address:\n      socket_address: {{ address: 127.0.0.1, port_value: {second} }}\n    filter_chains:\n    - filters:\n      - name: envoy.tcp_proxy\n        config: {{ stat_prefix: extra, cluster: cb }}\n",
        config::cluster("cb", "ROUND_ROBIN", &[(b.addr, 1)], "")
    );
    let _wasp = Wasp::start(&cfg, &["--config-yaml", &extra]);
    for (p, want) in [(port, b"a\n"), (second, b"b\n")] {
        let mut c = TcpStream::connect(proxy_addr(p)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = [0u8; 2];
        c.read_exact(&mut line).unwrap();
        assert_eq!(&line, want);
    }
}

/// Past the cluster's `max_connections` a client is closed at once and
/// the overflow counted; a slot is free again once a proxied connection
/// ends.
#[test]
fn max_connections_closes_the_client_past_the_limit() {
    let b = backend::named("cap");
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: b\n",
        "",
        &config::cluster(
            "b",
            "ROUND_ROBIN",
            &[(b.addr, 1)],
            "    circuit_breakers: { thresholds: [{ max_connections: 1 }] }\n",
        ),
    );
    let wasp = Wasp::start(&cfg, &["--concurrency", "1"]);
    let connect = || {
        let c = TcpStream::connect(proxy_addr(port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    };
    let mut first = connect();
    let mut hello = [0u8; 4];
    first.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"cap\n");
    let mut all = Vec::new();
    connect().read_to_end(&mut all).expect("closed by wasp");
    assert!(all.is_empty(), "{all:?}");
    assert_eq!(wasp.stat("cluster.b.upstream_cx_overflow"), 1);
    drop(first);
    eventually(Duration::from_secs(5), "a free slot", || {
        let mut again = connect();
        let mut hello = [0u8; 4];
        again
            .read_exact(&mut hello)
            .ok()
            .map(|()| assert_eq!(&hello, b"cap\n"))
    });
}
