#!/usr/bin/env python3
"""The cost of a proxy-wasm filter, wasp (wasmtime) against Envoy (V8), on
the same config and the same .wasm (filters/add_header):

- CPU µs per request with and without the filter (wrk -c 50), p50 at -c 1,
  requests/s at -c 50, medians of interleaved rounds;
- added RSS of the filter at 1 and at 4 workers (one VM per worker);
- start-up time with 10 plugins (each its own VM) until the first request
  has passed all of them; wasp with an empty and with a warm module cache.
"""

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import (ROOT, children, cpu_ticks, free_port, http_proxy_config, nginx_conf,  # noqa: E402
                      prepare, rss_kib, stop, wait_port, wrk)


def wasm_filter(code, name, value):
    return f"""          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: {name}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {value}
                vm_config:
                  vm_id: {name}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {code} }} }}
"""


class Proxies:
    """Starts wasp and Envoy processes and stops them all at the end."""

    def __init__(self, tmp, envoy):
        self.tmp, self.envoy, self.procs = tmp, envoy, []

    def start(self, kind, config, workers, env=None):
        path = os.path.join(self.tmp, f"{kind}-{len(self.procs)}.yaml")
        with open(path, "w") as f:
            f.write(config)
        if kind == "wasp":
            cmd = [os.path.join(ROOT, "target/release/wasp"), "-c", path]
        else:
            cmd = [self.envoy, "-c", path, "--disable-hot-restart"]
        cmd += ["--concurrency", str(workers), "-l", "error"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})})
        self.procs.append(p)
        return p

    def stop(self, p):
        stop(p)

    def close(self):
        for p in self.procs:
            stop(p)


def first_answer(port, deadline):
    """Polls until a GET through `port` is answered 200 and returns when."""
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return time.time()
        except OSError:
            pass
        time.sleep(0.002)
    raise SystemExit(f"no answer on {port}")


def warm(port, connections=8, requests=200):
    """Requests on several connections, so every worker has served (and
    built its VMs) before memory is read."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(connections)]
    for i in range(requests):
        c = conns[i % connections]
        c.request("GET", "/")
        c.getresponse().read()
    for c in conns:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    args = ap.parse_args()
    envoy = prepare({"wrk": "wrk", "nginx-light": "nginx"})
    subprocess.check_call(["rustup", "target", "add", "wasm32-wasip1"], stderr=subprocess.DEVNULL)
    subprocess.check_call(["cargo", "build", "--release", "-q", "--target", "wasm32-wasip1",
                           "--manifest-path", os.path.join(ROOT, "filters/Cargo.toml")])
    code = os.path.join(ROOT, "filters/target/wasm32-wasip1/release/add_header.wasm")
    tmp = tempfile.mkdtemp(prefix="wasp-bench-wasm-")
    cache = os.path.join(tmp, "wasm-cache")
    proxies = Proxies(tmp, envoy)
    hz = os.sysconf("SC_CLK_TCK")
    try:
        backend = free_port()
        nginx = subprocess.Popen(["nginx", "-c", nginx_conf(tmp, "backend", backend)], stderr=subprocess.DEVNULL)
        proxies.procs.append(nginx)
        wait_port(backend)
        one = wasm_filter(code, "add_header", "bench")

        # Compile the module once, so that what follows measures the
        # steady state (the start-up section measures the cold compile).
        port = free_port()
        p = proxies.start("wasp", http_proxy_config(port, backend, one), 1, {"WASP_WASM_CACHE_DIR": cache})
        first_answer(port, time.time() + 60)
        proxies.stop(p)

        # Per request: four proxies with one worker, interleaved rounds.
        targets = {}
        for kind in ("wasp", "envoy"):
            for label, filters in (("", ""), (" + wasm", one)):
                port = free_port()
                p = proxies.start(kind, http_proxy_config(port, backend, filters), 1, {"WASP_WASM_CACHE_DIR": cache})
                targets[kind + label] = (port, p.pid)
        for port, _ in targets.values():
            first_answer(port, time.time() + 30)
        results = {}
        for r in range(args.rounds):
            order = list(targets.items())
            order = order[r % len(order):] + order[:r % len(order)]
            for name, (port, pid) in order:
                for c in (1, 50):
                    before = cpu_ticks([pid])
                    rps, p50, p99, total = wrk(port, c, args.seconds)
                    cpu_us = (cpu_ticks([pid]) - before) / hz * 1e6 / max(total, 1)
                    results.setdefault((name, c), []).append((rps, p50, p99, cpu_us))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        rss_after = {name: rss_kib([pid]) for name, (_, pid) in targets.items()}
        med = {k: [statistics.median(v[i] for v in vs) for i in range(4)] for k, vs in results.items()}
        for name in targets:
            proxies.stop(next(p for p in proxies.procs if p.pid == targets[name][1]))

        # Memory: the filter's added RSS at 1 and 4 workers, after every
        # worker has served.
        added = {}
        for workers in (1, 4):
            for kind in ("wasp", "envoy"):
                rss = {}
                for label, filters in (("plain", ""), ("wasm", one)):
                    port = free_port()
                    p = proxies.start(kind, http_proxy_config(port, backend, filters), workers,
                                      {"WASP_WASM_CACHE_DIR": cache})
                    first_answer(port, time.time() + 30)
                    warm(port)
                    time.sleep(1)
                    rss[label] = rss_kib([p.pid])
                    proxies.stop(p)
                added[(kind, workers)] = (rss["plain"], rss["wasm"])

        # Start-up with 10 plugins, each its own VM.
        ten = "".join(wasm_filter(code, f"plugin{i}", f"v{i}") for i in range(10))
        startup = {}
        for r in range(args.rounds):
            for name, kind, env in (("wasp (empty module cache)", "wasp", "cold"),
                                    ("wasp (warm module cache)", "wasp", "warm"),
                                    ("envoy", "envoy", None)):
                if env == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                port = free_port()
                started = time.time()
                p = proxies.start(kind, http_proxy_config(port, backend, ten), 1, {"WASP_WASM_CACHE_DIR": cache})
                took = first_answer(port, started + 60) - started
                startup.setdefault(name, []).append((took, rss_kib([p.pid])))
                proxies.stop(p)

        print(f"\nwrk -t1 -d{args.seconds}s, medians of {args.rounds} interleaved rounds, one worker each, "
              "nginx backend answering 23 bytes, filter filters/add_header (one request and one response "
              "header)\n")
        print("| target | p50 ms at -c 1 | requests/s at -c 50 | p99 ms at -c 50 | CPU µs/request at -c 50 |")
        print("|---|---|---|---|---|")
        for name in targets:
            print(f"| {name} | {med[(name, 1)][1]:.3f} | {med[(name, 50)][0]:,.0f} | {med[(name, 50)][2]:.3f} "
                  f"| {med[(name, 50)][3]:.2f} |")
        print("\n| proxy | CPU µs/request added by the filter | p50 ms added at -c 1 | RSS KiB added (after the wrk runs) |")
        print("|---|---|---|---|")
        for kind in ("wasp", "envoy"):
            print(f"| {kind} | {med[(kind + ' + wasm', 50)][3] - med[(kind, 50)][3]:.2f} "
                  f"| {med[(kind + ' + wasm', 1)][1] - med[(kind, 1)][1]:.3f} "
                  f"| {rss_after[kind + ' + wasm'] - rss_after[kind]:,} |")
        print("\n| proxy | workers | RSS KiB without filter | with filter | added | added per worker VM (4 vs 1) |")
        print("|---|---|---|---|---|---|")
        for kind in ("wasp", "envoy"):
            a1 = added[(kind, 1)][1] - added[(kind, 1)][0]
            a4 = added[(kind, 4)][1] - added[(kind, 4)][0]
            for workers in (1, 4):
                plain, wasm = added[(kind, workers)]
                per_vm = f"{(a4 - a1) / 3:,.0f}" if workers == 4 else ""
                print(f"| {kind} | {workers} | {plain:,} | {wasm:,} | {wasm - plain:,} | {per_vm} |")
        print(f"\nStart-up to the first answer through 10 wasm plugins (one worker), median of {args.rounds}:\n")
        print("| proxy | seconds | RSS KiB then |")
        print("|---|---|---|")
        for name, ts in startup.items():
            print(f"| {name} | {statistics.median(t for t, _ in ts):.3f} | "
                  f"{statistics.median(r for _, r in ts):,.0f} |")
    finally:
        proxies.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
