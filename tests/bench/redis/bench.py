#!/usr/bin/env python3
"""redis-benchmark through wasp, Envoy, twemproxy and directly; medians."""

import argparse
import csv
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import ROOT, cpu_ticks, free_port, prepare, stop, wait_port  # noqa: E402


def proxy_config(port, redis_port):
    return f"""static_resources:
  listeners:
  - name: redis
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.redis_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy
          stat_prefix: bench
          settings: {{ op_timeout: 5s }}
          prefix_routes: {{ catch_all_route: {{ cluster: redis }} }}
  clusters:
  - name: redis
    type: STATIC
    connect_timeout: 1s
    lb_policy: MAGLEV
    load_assignment:
      cluster_name: redis
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {redis_port} }} }} }}
"""


# redis-benchmark has no MGET test (`-t mget` runs nothing), so MGET runs as
# a custom command: 10 keys out of the 10,000 the SET test writes (`-r`).
MGET = ["MGET", *["key:__rand_int__"] * 10]


def client_cpu():
    """CPU seconds used by the bench's finished children (redis-benchmark)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench(port, pipeline):
    """{test: (rps, p99 ms)} for SET, GET and MGET (10 keys)."""
    base = ["redis-benchmark", "-p", str(port), "-c", "50", "-n", "200000", "-r", "10000",
            "-P", str(pipeline), "--csv"]
    results = {}
    for args, label in ((["-t", "set,get"], None), (MGET, "MGET (10 keys)")):
        out = subprocess.run(base + args, capture_output=True, text=True, timeout=600, check=True).stdout
        for r in csv.DictReader(io.StringIO(out)):
            results[label or r["test"]] = (float(r["rps"]), float(r["p99_latency_ms"]))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    envoy = prepare({"redis-server": "redis-server", "redis-tools": "redis-benchmark", "nutcracker": "nutcracker"})
    tmp = tempfile.mkdtemp(prefix="wasp-bench-redis-")
    procs = []
    try:
        redis_port = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL))
        wait_port(redis_port)
        targets = {"redis (direct)": redis_port}
        pids = {"redis (direct)": [procs[0].pid]}
        for name, binary, extra in (("wasp", os.path.join(ROOT, "target/release/wasp"), []),
                                    ("envoy", envoy, ["--disable-hot-restart", "-l", "error"])):
            port = free_port()
            path = os.path.join(tmp, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(proxy_config(port, redis_port))
            procs.append(subprocess.Popen([binary, "-c", path, "--concurrency", "1", *extra],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            targets[name] = port
            pids[name] = [procs[-1].pid]
        port = free_port()
        path = os.path.join(tmp, "nutcracker.yml")
        with open(path, "w") as f:
            f.write(f"bench:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n"
                    f"  redis: true\n  servers:\n   - 127.0.0.1:{redis_port}:1\n")
        procs.append(subprocess.Popen(["nutcracker", "-c", path, "-s", str(free_port())],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(port)
        targets["twemproxy"] = port
        pids["twemproxy"] = [procs[-1].pid]
        hz = os.sysconf("SC_CLK_TCK")
        cpu = {}  # (target, pipeline) -> [µs of CPU per request]
        client = {}  # (target, pipeline) -> [% of a core redis-benchmark used]

        results = {}  # (target, pipeline, test) -> [(rps, p99)]
        for r in range(args.rounds):
            order = list(targets.items())
            order = order[r % len(order):] + order[:r % len(order)]
            for name, port in order:
                for pipeline in (1, 16):
                    before = cpu_ticks(pids[name])
                    client_before, wall_before = client_cpu(), time.monotonic()
                    measured = bench(port, pipeline)
                    used = (cpu_ticks(pids[name]) - before) / hz
                    cpu.setdefault((name, pipeline), []).append(used * 1e6 / (200000 * len(measured)))
                    busy = (client_cpu() - client_before) / (time.monotonic() - wall_before)
                    client.setdefault((name, pipeline), []).append(busy * 100)
                    for test, v in measured.items():
                        results.setdefault((name, pipeline, test), []).append(v)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

        print(f"\nredis-benchmark -c 50 -n 200000, medians of {args.rounds} interleaved rounds, "
              f"proxies with 1 worker, one redis-server backend\n")
        print(f"| target | test | -P | requests/s | p99 ms |")
        print(f"|---|---|---|---|---|")
        med = {}
        for (name, pipeline, test), vs in sorted(results.items()):
            rps = statistics.median(v[0] for v in vs)
            p99 = statistics.median(v[1] for v in vs)
            med[(name, pipeline, test)] = (rps, p99)
            print(f"| {name} | {test} | {pipeline} | {rps:,.0f} | {p99:.3f} |")
        print("\nCPU time of the process under test per request (utime+stime from /proc, "
              "SET, GET and MGET together; for 'redis (direct)' the server itself):\n")
        print("| target | -P | CPU µs / request | redis-benchmark's CPU, % of a core |")
        print("|---|---|---|---|")
        for (name, pipeline), vs in sorted(cpu.items()):
            print(f"| {name} | {pipeline} | {statistics.median(vs):.2f} | "
                  f"{statistics.median(client[(name, pipeline)]):.0f} |")
        print("\nwasp against the better of Envoy and twemproxy:\n")
        print("| test | -P | rps ratio | p99 wasp / best p99 |")
        print("|---|---|---|---|")
        for (name, pipeline, test), (rps, p99) in sorted(med.items()):
            if name != "wasp":
                continue
            others = [med[(o, pipeline, test)] for o in ("envoy", "twemproxy")]
            best_rps = max(o[0] for o in others)
            best_p99 = min(o[1] for o in others)
            print(f"| {test} | {pipeline} | {rps / best_rps:.2f}x | {p99 / best_p99:.2f} |")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
