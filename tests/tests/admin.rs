//! The admin interface, side by side with Envoy: the same config and the same
//! traffic through both, then every endpoint compared in form (and, for the
//! traffic counters, in value).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use wasp_tests::{Proxy, backend, config, eventually, free_port, stat_from};

const CONNECTIONS: usize = 6;

/// Runs `CONNECTIONS` echo round trips through the proxy on `port`.
fn traffic(port: u16) {
    for i in 0..CONNECTIONS {
        let mut c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("ping {i}");
        c.write_all(msg.as_bytes()).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = String::new();
        c.read_to_string(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

struct Pair {
    wasp: Proxy,
    envoy: Proxy,
    wasp_port: u16,
    envoy_port: u16,
    _echo: backend::Backend,
}

fn start_pair() -> Pair {
    let echo = backend::echo();
    let cluster = config::cluster("echo", "ROUND_ROBIN", &[(echo.addr, 1)], "");
    let (wasp_port, envoy_port) = (free_port(), free_port());
    let cfg = |port| config::tcp_proxy(port, "          cluster: echo\n", "", &cluster);
    let wasp = Proxy::start(&cfg(wasp_port), &["--concurrency", "2"]);
    let envoy = Proxy::envoy(&cfg(envoy_port), &["--concurrency", "2"]);
    traffic(wasp_port);
    traffic(envoy_port);
    Pair {
        wasp,
        envoy,
        wasp_port,
        envoy_port,
        _echo: echo,
    }
}

fn body(p: &Proxy, path: &str) -> String {
    let (status, body) = p.get(path).unwrap();
    assert_eq!(status, 200, "{:?} {path}: {body}", p.kind);
    body
}

/// Replaces a proxy's own listener port in stat names so the two compare.
fn normalize(s: &str, port: u16) -> String {
    s.replace(&format!("127.0.0.1_{port}"), "127.0.0.1_PORT")
        .replace(&format!("127.0.0.1:{port}"), "127.0.0.1:PORT")
}

#[test]
fn admin_endpoints_answer_as_envoy_does() {
    let p = start_pair();
    let (w, e) = (&p.wasp, &p.envoy);

    // /ready
    assert_eq!(body(w, "/ready"), body(e, "/ready"));

    // /help: same header, and every wasp endpoint is an Envoy endpoint.
    let (wh, eh) = (body(w, "/help"), body(e, "/help"));
    assert_eq!(wh.lines().next(), eh.lines().next());
    let paths = |h: &str| -> BTreeSet<String> {
        h.lines()
            .filter(|l| l.starts_with("  /"))
            .map(|l| l.trim().split([':', ' ']).next().unwrap().to_string())
            .collect()
    };
    let (wp, ep) = (paths(&wh), paths(&eh));
    assert!(wp.len() >= 10, "{wp:?}");
    assert!(
        wp.is_subset(&ep),
        "wasp-only endpoints: {:?}",
        wp.difference(&ep).collect::<Vec<_>>()
    );

    // /stats: every wasp stat exists in Envoy under the same name; the
    // traffic counters agree in value once both have settled.
    eventually(Duration::from_secs(5), "traffic stats to settle", || {
        let ws = normalize(&body(w, "/stats"), p.wasp_port);
        let es = normalize(&body(e, "/stats"), p.envoy_port);
        let key_stats = [
            "listener.127.0.0.1_PORT.downstream_cx_total",
            "listener.127.0.0.1_PORT.downstream_cx_destroy",
            "cluster.echo.upstream_cx_total",
            "cluster.echo.upstream_cx_rx_bytes_total",
            "cluster.echo.upstream_cx_tx_bytes_total",
            "tcp.tcp.downstream_cx_total",
            "tcp.tcp.downstream_cx_rx_bytes_total",
            "tcp.tcp.downstream_cx_tx_bytes_total",
            "server.concurrency",
            "server.live",
        ];
        key_stats
            .iter()
            .all(|k| {
                let (a, b) = (stat_from(&ws, k), stat_from(&es, k));
                a.is_some() && a == b
            })
            .then_some(())
    });
    let ws = normalize(&body(w, "/stats"), p.wasp_port);
    let es = normalize(&body(e, "/stats"), p.envoy_port);
    let envoy_names: BTreeSet<&str> = es
        .lines()
        .filter_map(|l| l.split_once(": ").map(|x| x.0))
        .collect();
    let missing: Vec<&str> = ws
        .lines()
        .filter_map(|l| l.split_once(": ").map(|x| x.0))
        .filter(|n| !envoy_names.contains(n))
        .collect();
    assert!(missing.is_empty(), "stats Envoy does not have: {missing:?}");
    // Counters and gauges are integers; histograms use Envoy's quantile form.
    for w_line in ws.lines() {
        let (_, v) = w_line.split_once(": ").unwrap();
        assert!(
            v.parse::<i64>().is_ok() || v.starts_with("P0(nan,") || v == "No recorded values",
            "{w_line}"
        );
    }
    let hist = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("cluster.echo.upstream_cx_length_ms: "))
            .map(str::to_string)
    };
    assert!(hist(&ws).is_some_and(|l| l.contains(" P50(nan,")), "{ws}");
    assert!(hist(&es).is_some(), "Envoy has the same histogram");
    let per_worker: i64 = (0..2)
        .map(|i| {
            stat_from(
                &ws,
                &format!("listener.127.0.0.1_PORT.worker_{i}.downstream_cx_total"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(per_worker, CONNECTIONS as i64);

    // /stats/prometheus: each wasp series is an Envoy series (name and labels).
    let series = |text: &str| -> BTreeSet<(String, BTreeSet<String>)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let metric = l.rsplit_once(' ').unwrap().0;
                let (name, labels) = metric.split_once('{').unwrap_or((metric, "}"));
                let labels = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .map(str::to_string)
                    .collect();
                (name.to_string(), labels)
            })
            .collect()
    };
    let wprom = series(&normalize(&body(w, "/stats/prometheus"), p.wasp_port));
    let eprom = series(&normalize(&body(e, "/stats/prometheus"), p.envoy_port));
    let extra: Vec<_> = wprom.difference(&eprom).collect();
    assert!(extra.is_empty(), "series Envoy does not have: {extra:?}");
    assert!(
        wprom
            .iter()
            .any(|(n, l)| n == "envoy_cluster_upstream_cx_total"
                && l.contains("envoy_cluster_name=\"echo\""))
    );

    // /clusters: the same `cluster::endpoint::key` lines, cx_total equal.
    let keys = |text: &str| -> HashMap<String, String> {
        text.lines()
            .filter_map(|l| l.rsplit_once("::"))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (wc, ec) = (keys(&body(w, "/clusters")), keys(&body(e, "/clusters")));
    for k in wc.keys() {
        assert!(ec.contains_key(k), "/clusters key Envoy does not have: {k}");
        // The circuit breakers' limits (Envoy's defaults here).
        if k.contains("::default_priority::") {
            assert_eq!(wc[k], ec[k], "{k}");
        }
    }
    assert!(
        wc.keys()
            .any(|k| k.ends_with("::default_priority::max_retries"))
    );
    let cx_total = wc
        .keys()
        .find(|k| k.ends_with("::cx_total"))
        .expect("cx_total line");
    assert_eq!(wc[cx_total], ec[cx_total]);
    assert_eq!(wc[cx_total], CONNECTIONS.to_string());

    // /server_info and /config_dump: JSON with Envoy's shape.
    let json = |p: &Proxy, path| serde_json::from_str::<serde_json::Value>(&body(p, path)).unwrap();
    let (wi, ei) = (json(w, "/server_info"), json(e, "/server_info"));
    for k in wi.as_object().unwrap().keys() {
        assert!(
            ei.get(k).is_some(),
            "server_info key Envoy does not have: {k}"
        );
    }
    assert_eq!(wi["state"], ei["state"]);
    assert_eq!(
        wi["command_line_options"]["concurrency"],
        ei["command_line_options"]["concurrency"]
    );
    let (wd, ed) = (json(w, "/config_dump"), json(e, "/config_dump"));
    let types = |d: &serde_json::Value| -> Vec<String> {
        d["configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["@type"].as_str().unwrap().to_string())
            .collect()
    };
    for t in types(&wd) {
        assert!(types(&ed).contains(&t), "{t}");
    }
    for (section, item, field) in [
        ("static_listeners", "listener", "name"),
        ("static_clusters", "cluster", "name"),
    ] {
        let pick = |d: &serde_json::Value| {
            d["configs"]
                .as_array()
                .unwrap()
                .iter()
                .find_map(|c| c.get(section).cloned())
                .unwrap()[0][item]
                .clone()
        };
        assert_eq!(pick(&wd)[field], pick(&ed)[field]);
        assert_eq!(pick(&wd)["@type"], pick(&ed)["@type"]);
    }
    assert_eq!(
        wd["configs"][0]["bootstrap"]["static_resources"]["clusters"][0]["connect_timeout"],
        ed["configs"][0]["bootstrap"]["static_resources"]["clusters"][0]["connect_timeout"]
    );

    // /listeners
    assert_eq!(
        normalize(&body(w, "/listeners"), p.wasp_port),
        normalize(&body(e, "/listeners"), p.envoy_port)
    );

    // /logging: POST changes the level; both answer with the logger list.
    for proxy in [w, e] {
        let (status, text) = proxy.post("/logging?level=debug").unwrap();
        assert_eq!(status, 200);
        assert!(text.starts_with("active loggers:"), "{text}");
        assert!(text.contains(": debug"), "{text}");
    }
    let (status, _) = w.post("/logging?level=loud").unwrap();
    assert_eq!(status, 400);
}

#[test]
fn quitquitquit_needs_post_and_exits_cleanly() {
    let mut p = start_pair();
    for proxy in [&p.wasp, &p.envoy] {
        let (status, _) = proxy.get("/quitquitquit").unwrap();
        assert_eq!(status, 405, "{:?}", proxy.kind);
    }
    for proxy in [&mut p.wasp, &mut p.envoy] {
        let (status, text) = proxy.post("/quitquitquit").unwrap();
        assert_eq!((status, text.as_str()), (200, "OK\n"));
        let exit = proxy.wait_exit(Duration::from_secs(10));
        assert!(exit.success(), "{:?} exited with {exit}", proxy.kind);
    }
}

#[test]
fn stats_filters_and_formats() {
    let echo = backend::echo();
    let port = free_port();
    let cfg = config::tcp_proxy(
        port,
        "          cluster: echo\n",
        "",
        &config::cluster("echo", "ROUND_ROBIN", &[(echo.addr, 1)], ""),
    );
    let w = Proxy::start(&cfg, &["--concurrency", "1"]);
    let before = w.stat("cluster.echo.upstream_cx_total");
    traffic(port);
    assert_eq!(
        w.stat("cluster.echo.upstream_cx_total"),
        before + CONNECTIONS as i64
    );

    let filtered = body(&w, "/stats?filter=%5Ecluster%5C.echo%5C.upstream_cx_t");
    assert!(!filtered.is_empty());
    assert!(
        filtered
            .lines()
            .all(|l| l.starts_with("cluster.echo.upstream_cx_t")),
        "{filtered}"
    );
    let used = body(&w, "/stats?usedonly");
    assert!(
        used.lines()
            .all(|l| !l.ends_with(": 0") || l.contains("server.")),
        "{used}"
    );
    let json: serde_json::Value = serde_json::from_str(&body(&w, "/stats?format=json")).unwrap();
    assert!(
        json["stats"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "cluster.echo.upstream_cx_total")
    );
    let (status, _) = w.get("/stats?filter=(").unwrap();
    assert_eq!(status, 400);
    let (status, _) = w.get("/nope").unwrap();
    assert_eq!(status, 404);
}
