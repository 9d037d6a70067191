//! Envoy's admin output formats.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::cluster::{ClusterManager, Priority};
use crate::stats::{Kind, Sample};

use super::AdminState;

/// The quantiles Envoy reports for histograms, in percent.
const QUANTILES: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];

/// `/stats`: `name: value` lines sorted by name, then histograms as
/// Envoy prints them (`P50(interval,cumulative)`; wasp keeps no interval
/// windows, so the interval is `nan`).
pub fn stats_text(samples: &[Sample]) -> String {
    let mut out = String::with_capacity(samples.len() * 48);
    for s in samples.iter().filter(|s| s.histogram.is_none()) {
        let _ = writeln!(out, "{}: {}", s.name, s.value);
    }
    for s in samples {
        let Some(h) = &s.histogram else { continue };
        if h.count == 0 {
            let _ = writeln!(out, "{}: No recorded values", s.name);
            continue;
        }
        let _ = write!(out, "{}:", s.name);
        for q in QUANTILES {
            let v = h.quantile(q / 100.0).unwrap_or(f64::NAN);
            let _ = write!(out, " P{q}(nan,{v})");
        }
        out.push('\n');
    }
    out
}

/// `/stats?format=json`, in Envoy's shape.
pub fn stats_json(samples: &[Sample]) -> Value {
    let mut stats: Vec<Value> = samples
        .iter()
        .filter(|s| s.histogram.is_none())
        .map(|s| json!({"name": s.name, "value": s.value}))
        .collect();
    let computed: Vec<Value> = samples
        .iter()
        .filter_map(|s| {
            let h = s.histogram.as_ref()?;
            let values: Vec<Value> = QUANTILES
                .iter()
                .map(|q| json!({"interval": null, "cumulative": h.quantile(q / 100.0)}))
                .collect();
            Some(json!({"name": s.name, "values": values}))
        })
        .collect();
    if !computed.is_empty() {
        stats.push(json!({"histograms": {"supported_quantiles": QUANTILES, "computed_quantiles": computed}}));
    }
    json!({ "stats": stats })
}

/// `/stats/prometheus`: one `# TYPE` line per metric family, then a line
/// per tag set.
pub fn prometheus(samples: &[Sample]) -> String {
    let mut families: BTreeMap<&str, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        families.entry(&s.prom_name).or_default().push(s);
    }
    let mut out = String::new();
    for (name, members) in families {
        let kind = match members[0].kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in members {
            let labels = labels(&s.tags);
            let Some(h) = &s.histogram else {
                let _ = writeln!(out, "{name}{} {}", braces(&labels), s.value);
                continue;
            };
            let sep = if labels.is_empty() { "" } else { "," };
            for (i, count) in h.cumulative.iter().enumerate() {
                let le = crate::stats::BUCKETS
                    .get(i)
                    .map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_sum{} {}", braces(&labels), h.sum);
            let _ = writeln!(out, "{name}_count{} {}", braces(&labels), h.count);
        }
    }
    out
}

/// `k="v",k2="v2"` for a series' tags.
fn labels(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect::<Vec<_>>()
        .join(",")
}

fn braces(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/clusters`: Envoy's `cluster::endpoint::stat::value` lines.
pub fn clusters_text(clusters: &ClusterManager) -> String {
    let mut out = String::new();
    for c in clusters.iter() {
        let name = c.name();
        let _ = writeln!(out, "{name}::observability_name::{name}");
        let _ = writeln!(out, "{name}::added_via_api::false");
        for (p, t) in Priority::ALL.iter().zip(&c.settings.circuit_breakers) {
            for (limit, v) in [
                ("max_connections", t.max_connections),
                ("max_pending_requests", t.max_pending_requests),
                ("max_requests", t.max_requests),
                ("max_retries", t.retries_at_rest()),
            ] {
                let _ = writeln!(out, "{name}::{}_priority::{limit}::{v}", p.name());
            }
        }
        for e in c.endpoints().all.iter() {
            let a = e.address;
            for (stat, v) in endpoint_counters(e) {
                let _ = writeln!(out, "{name}::{a}::{stat}::{v}");
            }
            let _ = writeln!(out, "{name}::{a}::hostname::{}", e.hostname);
            let _ = writeln!(out, "{name}::{a}::health_flags::{}", health_flags(e));
            let _ = writeln!(out, "{name}::{a}::weight::{}", e.weight);
            let _ = writeln!(out, "{name}::{a}::region::{}", e.locality.region);
            let _ = writeln!(out, "{name}::{a}::zone::{}", e.locality.zone);
            let _ = writeln!(out, "{name}::{a}::sub_zone::{}", e.locality.sub_zone);
            let _ = writeln!(out, "{name}::{a}::canary::false");
            let _ = writeln!(out, "{name}::{a}::priority::{}", e.priority);
            let _ = writeln!(out, "{name}::{a}::success_rate::-1");
            let _ = writeln!(out, "{name}::{a}::local_origin_success_rate::-1");
        }
    }
    out
}

fn health_flags(e: &crate::cluster::Endpoint) -> &'static str {
    if e.is_healthy() {
        "healthy"
    } else {
        "/failed_active_hc"
    }
}

fn endpoint_counters(e: &crate::cluster::Endpoint) -> [(&'static str, u64); 8] {
    let s = &e.stats;
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    [
        ("cx_active", l(&s.cx_active)),
        ("cx_connect_fail", l(&s.cx_connect_fail)),
        ("cx_total", l(&s.cx_total)),
        ("rq_active", l(&s.rq_active)),
        ("rq_error", l(&s.rq_error)),
        ("rq_success", l(&s.rq_success)),
        ("rq_timeout", l(&s.rq_timeout)),
        ("rq_total", l(&s.rq_total)),
    ]
}

/// `/clusters?format=json`.
pub fn clusters_json(clusters: &ClusterManager) -> Value {
    let statuses: Vec<Value> = clusters
        .iter()
        .map(|c| {
            let hosts: Vec<Value> = c
                .endpoints()
                .all
                .iter()
                .map(|e| {
                    json!({
                        "address": {"socket_address": {"address": e.address.ip().to_string(), "port_value": e.address.port()}},
                        "stats": endpoint_counters(e).iter().map(|(n, v)| json!({"name": n, "value": v.to_string(), "type": if n.ends_with("active") {"GAUGE"} else {"COUNTER"}})).collect::<Vec<_>>(),
                        "health_status": {"eds_health_status": if e.is_healthy() {"HEALTHY"} else {"UNHEALTHY"}},
                        "weight": e.weight,
                        "hostname": e.hostname,
                        "priority": e.priority,
                        "locality": {"region": e.locality.region, "zone": e.locality.zone, "sub_zone": e.locality.sub_zone},
                    })
                })
                .collect();
            let thresholds: Vec<Value> = Priority::ALL
                .iter()
                .zip(&c.settings.circuit_breakers)
                .map(|(p, t)| {
                    json!({
                        "priority": p.name().to_uppercase(),
                        "max_connections": t.max_connections,
                        "max_pending_requests": t.max_pending_requests,
                        "max_requests": t.max_requests,
                        "max_retries": t.retries_at_rest(),
                    })
                })
                .collect();
            json!({
                "name": c.name(),
                "observability_name": c.name(),
                "circuit_breakers": {"thresholds": thresholds},
                "host_statuses": hosts,
            })
        })
        .collect();
    json!({ "cluster_statuses": statuses })
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `/config_dump`: the bootstrap, then its static clusters and listeners, in
/// Envoy's `ConfigDump` envelope.
pub fn config_dump(config: &Value, loaded: SystemTime) -> Value {
    let when = timestamp(loaded);
    let statics = |key: &str, ty: &str, wrap: &str| -> Vec<Value> {
        config["static_resources"][key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let mut item = item.clone();
                        if let Value::Object(m) = &mut item {
                            m.insert(
                                "@type".into(),
                                json!(format!("type.googleapis.com/envoy.config.{ty}")),
                            );
                        }
                        json!({ wrap: item, "last_updated": when })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    json!({
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                "bootstrap": config,
                "last_updated": when,
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                "static_clusters": statics("clusters", "cluster.v3.Cluster", "cluster"),
            },
            {
                "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                "static_listeners": statics("listeners", "listener.v3.Listener", "listener"),
            },
        ]
    })
}

/// `/server_info`.
pub fn server_info(state: &AdminState) -> Value {
    let o = &state.options;
    let uptime = format!("{}s", state.uptime().as_secs());
    json!({
        "version": format!("wasp/{}/RELEASE", env!("CARGO_PKG_VERSION")),
        "state": if state.is_draining() { "DRAINING" } else { "LIVE" },
        "hot_restart_version": "disabled",
        "command_line_options": {
            "base_id": o.base_id.unwrap_or(0).to_string(),
            "concurrency": state.concurrency,
            "config_path": o.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "config_yaml": o.config_yaml.clone().unwrap_or_default(),
            "log_level": o.log_level,
            "log_path": o.log_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "service_cluster": o.service_cluster.clone().unwrap_or_default(),
            "service_node": o.service_node.clone().unwrap_or_default(),
            "mode": format!("{:?}", o.mode),
            "drain_time": format!("{}s", o.drain_time_s),
            "disable_hot_restart": true,
        },
        "node": {
            "id": state.node.id.clone().unwrap_or_default(),
            "cluster": state.node.cluster.clone().unwrap_or_default(),
            "metadata": state.node.metadata.clone().unwrap_or(Value::Null),
            "user_agent_name": "wasp",
        },
        "uptime_current_epoch": uptime,
        "uptime_all_epochs": uptime,
    })
}
