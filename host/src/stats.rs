//! Envoy-named counters and gauges.
//!
//! Every worker gets its own shard of each stat (an atomic on its own
//! allocation) and bumps it with a relaxed add: no lock and no shared cache
//! line on the data path. Readers (the admin interface) sum the shards. Stat
//! names are Envoy's dotted ones (`cluster.backend.upstream_cx_total`); each
//! stat also carries the Prometheus name and tags Envoy's tag extraction would
//! give it (`envoy_cluster_upstream_cx_total{envoy_cluster_name="backend"}`),
//! fixed when the stat is created rather than recovered by regex.
//!
//! Histograms use Envoy's default bucket bounds; each worker records into its
//! own shard's bucket counters, and readers merge them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// All stats of the process.
#[derive(Default)]
pub struct Store {
    // Touched only when a stat is created (start-up, per worker) and when
    // stats are read; never on the data path.
    metrics: Mutex<BTreeMap<String, Arc<Metric>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Metric {
    kind: Kind,
    prom_name: String,
    tags: Vec<(String, String)>,
    shards: Mutex<Vec<Arc<AtomicU64>>>,
    histogram_shards: Mutex<Vec<Arc<HistogramShard>>>,
}

/// Envoy's default histogram bucket bounds.
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// One worker's counts for one histogram: per bucket (plus overflow), the
/// sum and the count of recorded values.
#[derive(Debug, Default)]
pub struct HistogramShard {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum: AtomicU64,
    count: AtomicU64,
}

/// A histogram as read: cumulative bucket counts (the last is +Inf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSummary {
    pub cumulative: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl HistogramSummary {
    /// An estimate of quantile `q` (0..=1): the upper bound of the bucket
    /// holding it, as Envoy's bucketed estimate does; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        let i = self.cumulative.iter().position(|&c| c >= rank)?;
        Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY))
    }
}

/// One stat as read: the sum of its shards.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub prom_name: String,
    pub tags: Vec<(String, String)>,
    pub kind: Kind,
    /// For gauges, the two's-complement sum (gauges may go below zero on one
    /// shard while staying non-negative in total).
    pub value: i64,
    /// Whether anything ever touched it (Envoy's `usedonly`).
    pub used: bool,
    /// For histograms, the merged buckets (`value` is then the count).
    pub histogram: Option<HistogramSummary>,
}

fn merge(shards: &[Arc<HistogramShard>]) -> HistogramSummary {
    let mut per_bucket = vec![0u64; BUCKETS.len() + 1];
    let (mut sum, mut count) = (0, 0);
    for s in shards {
        for (acc, b) in per_bucket.iter_mut().zip(&s.buckets) {
            *acc += b.load(Ordering::Relaxed);
        }
        sum += s.sum.load(Ordering::Relaxed);
        count += s.count.load(Ordering::Relaxed);
    }
    let mut running = 0;
    let cumulative = per_bucket
        .into_iter()
        .map(|c| {
            running += c;
            running
        })
        .collect();
    HistogramSummary {
        cumulative,
        sum,
        count,
    }
}

impl Store {
    pub fn new() -> Arc<Store> {
        Arc::new(Store::default())
    }

    /// The root scope: stat names without prefix.
    pub fn root(self: &Arc<Self>) -> Scope {
        Scope {
            store: self.clone(),
            prefix: String::new(),
            prom_prefix: String::new(),
            tags: Vec::new(),
        }
    }

    fn metric(&self, scope: &Scope, name: &str, kind: Kind) -> Arc<Metric> {
        let full = format!("{}{name}", scope.prefix);
        let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        metrics
            .entry(full)
            .or_insert_with(|| {
                let mut tags = scope.tags.clone();
                let name = response_code_tag(name, &mut tags);
                Arc::new(Metric {
                    kind,
                    prom_name: prometheus_name(&format!("{}{name}", scope.prom_prefix)),
                    tags,
                    shards: Mutex::new(Vec::new()),
                    histogram_shards: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    fn histogram_shard(&self, scope: &Scope, name: &str) -> Arc<HistogramShard> {
        let metric = self.metric(scope, name, Kind::Histogram);
        let shard = Arc::new(HistogramShard::default());
        metric
            .histogram_shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shard.clone());
        shard
    }

    fn shard(&self, scope: &Scope, name: &str, kind: Kind) -> Arc<AtomicU64> {
        let metric = self.metric(scope, name, kind);
        let shard = Arc::new(AtomicU64::new(0));
        metric
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(shard.clone());
        shard
    }

    /// Every stat, sorted by name.
    pub fn samples(&self) -> Vec<Sample> {
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        metrics
            .iter()
            .map(|(name, m)| {
                let shards = m.shards.lock().unwrap_or_else(|e| e.into_inner());
                let mut used = false;
                let value = shards.iter().fold(0u64, |acc, s| {
                    let v = s.load(Ordering::Relaxed);
                    used |= v != 0;
                    acc.wrapping_add(v)
                }) as i64;
                let histogram = (m.kind == Kind::Histogram).then(|| {
                    let h = merge(&m.histogram_shards.lock().unwrap_or_else(|e| e.into_inner()));
                    used |= h.count > 0;
                    h
                });
                Sample {
                    name: name.clone(),
                    prom_name: m.prom_name.clone(),
                    tags: m.tags.clone(),
                    kind: m.kind,
                    value: histogram.as_ref().map_or(value, |h| h.count as i64),
                    used,
                    histogram,
                }
            })
            .collect()
    }

    /// The summed value of one stat, if it exists.
    pub fn value(&self, name: &str) -> Option<i64> {
        let metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
        let m = metrics.get(name)?;
        let shards = m.shards.lock().unwrap_or_else(|e| e.into_inner());
        Some(
            shards
                .iter()
                .fold(0u64, |acc, s| acc.wrapping_add(s.load(Ordering::Relaxed)))
                as i64,
        )
    }
}

/// Envoy's response code tag extractors: `…_rq_503` is `…_rq` with
/// `envoy_response_code="503"`, `…_rq_5xx` is `…_rq_xx` with
/// `envoy_response_code_class="5"`.
fn response_code_tag<'a>(
    name: &'a str,
    tags: &mut Vec<(String, String)>,
) -> std::borrow::Cow<'a, str> {
    if let Some((stem, code)) = name.rsplit_once("_rq_") {
        let b = code.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
            tags.push(("envoy_response_code".into(), code.into()));
            return format!("{stem}_rq").into();
        }
        if b.len() == 3 && b[0].is_ascii_digit() && &b[1..] == b"xx" {
            tags.push(("envoy_response_code_class".into(), code[..1].into()));
            return format!("{stem}_rq_xx").into();
        }
    }
    name.into()
}

/// `envoy_` + the name with everything outside `[a-zA-Z0-9_]` made `_`.
fn prometheus_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 6);
    // Stats in a custom namespace (wasm filters' `wasmcustom.`) are
    // exported as Envoy does: without the namespace and without `envoy_`.
    let name = match name.strip_prefix("wasmcustom.") {
        Some(rest) => rest,
        None => {
            out.push_str("envoy_");
            name
        }
    };
    out.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// A name prefix with the tags it implies.
#[derive(Clone)]
pub struct Scope {
    store: Arc<Store>,
    prefix: String,
    prom_prefix: String,
    tags: Vec<(String, String)>,
}

impl Scope {
    /// A child whose names gain `segment.` (and whose Prometheus names do too).
    pub fn child(&self, segment: &str) -> Scope {
        Scope {
            store: self.store.clone(),
            prefix: format!("{}{segment}.", self.prefix),
            prom_prefix: format!("{}{segment}.", self.prom_prefix),
            tags: self.tags.clone(),
        }
    }

    /// A child for a named thing: names gain `segment.value.`, Prometheus
    /// names gain only `segment.` and a `tag="value"` label, as Envoy's
    /// default tag extraction does for `cluster.<name>.` and the like.
    pub fn tagged(&self, segment: &str, tag: &str, value: &str) -> Scope {
        self.tagged_as(&format!("{segment}.{value}"), segment, tag, value)
    }

    /// The general form of [`Scope::tagged`]: names gain `name_segment.`,
    /// Prometheus names gain `prom_segment.` (if not empty) and the tag.
    /// Per-worker stats use it: `worker_0.` becomes `worker.` +
    /// `envoy_worker_id="0"`.
    pub fn tagged_as(
        &self,
        name_segment: &str,
        prom_segment: &str,
        tag: &str,
        value: &str,
    ) -> Scope {
        let mut tags = self.tags.clone();
        tags.push((tag.to_string(), value.to_string()));
        let prom_prefix = if prom_segment.is_empty() {
            self.prom_prefix.clone()
        } else {
            format!("{}{prom_segment}.", self.prom_prefix)
        };
        Scope {
            store: self.store.clone(),
            prefix: format!("{}{name_segment}.", self.prefix),
            prom_prefix,
            tags,
        }
    }

    /// The summed value of stat `name` in this scope.
    pub fn value(&self, name: &str) -> Option<i64> {
        self.store.value(&format!("{}{name}", self.prefix))
    }

    /// A new shard of counter `name`: the caller (one worker) owns it.
    pub fn counter(&self, name: &str) -> Counter {
        Counter(self.store.shard(self, name, Kind::Counter))
    }

    /// A new shard of gauge `name`.
    pub fn gauge(&self, name: &str) -> Gauge {
        Gauge(self.store.shard(self, name, Kind::Gauge))
    }

    /// A new shard of histogram `name`.
    pub fn histogram(&self, name: &str) -> Histogram {
        Histogram(self.store.histogram_shard(self, name))
    }
}

/// A monotonically increasing count (one worker's shard; by default one
/// in no store, which nothing reads).
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// A value that goes up and down (one worker's shard).
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Sets this shard; meant for gauges with a single owner (the main thread).
    pub fn set(&self, v: i64) {
        self.0.store(v as u64, Ordering::Relaxed);
    }

    /// Adds a signed delta to this shard.
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta as u64, Ordering::Relaxed);
    }

    /// This shard's value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed) as i64
    }
}

/// A distribution of values (one worker's shard), e.g. latencies in ms.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistogramShard>);

impl Histogram {
    pub fn record(&self, value: u64) {
        let v = value as f64;
        let i = BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum.fetch_add(value, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_tags_follow_envoy() {
        let store = Store::new();
        let cluster = store
            .root()
            .tagged("cluster", "envoy_cluster_name", "web.1");
        let a = cluster.counter("upstream_cx_total");
        let b = cluster.counter("upstream_cx_total");
        a.add(2);
        b.inc();
        let g1 = cluster.gauge("upstream_cx_active");
        let g2 = cluster.gauge("upstream_cx_active");
        g1.inc();
        g2.inc();
        g2.dec();
        g2.dec();
        let samples = store.samples();
        let total = samples
            .iter()
            .find(|s| s.name == "cluster.web.1.upstream_cx_total")
            .unwrap();
        assert_eq!(total.value, 3);
        assert_eq!(total.prom_name, "envoy_cluster_upstream_cx_total");
        assert_eq!(
            total.tags,
            vec![("envoy_cluster_name".into(), "web.1".into())]
        );
        assert_eq!(store.value("cluster.web.1.upstream_cx_active"), Some(0));
        cluster.counter("upstream_rq_503").inc();
        cluster.counter("upstream_rq_5xx").inc();
        let samples = store.samples();
        let prom = |name: &str| {
            let s = samples.iter().find(|s| s.name == name).unwrap();
            (s.prom_name.clone(), s.tags.last().unwrap().clone())
        };
        assert_eq!(
            prom("cluster.web.1.upstream_rq_503"),
            (
                "envoy_cluster_upstream_rq".into(),
                ("envoy_response_code".into(), "503".into())
            )
        );
        assert_eq!(
            prom("cluster.web.1.upstream_rq_5xx"),
            (
                "envoy_cluster_upstream_rq_xx".into(),
                ("envoy_response_code_class".into(), "5".into())
            )
        );
    }

    #[test]
    fn histograms_merge_shards_into_envoy_buckets() {
        let store = Store::new();
        let scope = store.root().child("x");
        let (a, b) = (scope.histogram("latency"), scope.histogram("latency"));
        for v in [0, 1, 3, 7] {
            a.record(v);
        }
        b.record(40);
        b.record(4_000_000);
        let h = store.samples()[0].histogram.clone().unwrap();
        assert_eq!(h.count, 6);
        assert_eq!(h.sum, 4_000_051);
        // <=0.5: 1, <=1: 2, <=5: 3, <=10: 4, <=50: 5, +Inf: 6
        assert_eq!(&h.cumulative[..6], &[1, 2, 3, 4, 4, 5]);
        assert_eq!(*h.cumulative.last().unwrap(), 6);
        assert_eq!(h.quantile(0.5), Some(5.0));
        assert_eq!(h.quantile(1.0), Some(f64::INFINITY));
        assert_eq!(HistogramSummary::default().quantile(0.5), None);
    }
}
