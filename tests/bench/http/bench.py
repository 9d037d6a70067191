#!/usr/bin/env python3
"""wrk through wasp, Envoy, nginx and HAProxy to one nginx backend, and to
the backend directly: requests/s, p99 and proxy CPU per request, medians of
interleaved rounds."""

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchlib import (ROOT, children, cpu_ticks, free_port, http_proxy_config, nginx_conf,  # noqa: E402
                      prepare, rss_kib, stop, wait_port, wrk)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--idle-connections", type=int, default=0, metavar="N",
                    help="also measure the memory each of N idle keep-alive connections costs")
    ap.add_argument("--compared-only", action="store_true",
                    help="run only wasp, nginx and HAProxy in the rounds, so that the runs each ratio "
                         "pairs are seconds apart (Envoy and the backend are still started and measured idle)")
    args = ap.parse_args()
    envoy = prepare({"wrk": "wrk", "nginx-light": "nginx", "haproxy": "haproxy"})
    tmp = tempfile.mkdtemp(prefix="wasp-bench-http-")
    procs = []
    try:
        backend = free_port()
        procs.append(subprocess.Popen(["nginx", "-c", nginx_conf(tmp, "backend", backend)],
                                      stderr=subprocess.DEVNULL))
        wait_port(backend)
        targets, pids = {}, {}
        port = free_port()
        path = os.path.join(tmp, "wasp.yaml")
        with open(path, "w") as f:
            f.write(http_proxy_config(port, backend))
        procs.append(subprocess.Popen([os.path.join(ROOT, "target/release/wasp"), "-c", path, "--concurrency", "1",
                                       "-l", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        targets["wasp"], pids["wasp"] = port, [procs[-1].pid]
        port = free_port()
        path = os.path.join(tmp, "envoy.yaml")
        with open(path, "w") as f:
            f.write(http_proxy_config(port, backend))
        procs.append(subprocess.Popen([envoy, "-c", path, "--concurrency", "1", "-l", "error",
                                       "--disable-hot-restart"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        targets["envoy"], pids["envoy"] = port, [procs[-1].pid]
        port = free_port()
        procs.append(subprocess.Popen(["nginx", "-c", nginx_conf(tmp, "proxy", port, backend)],
                                      stderr=subprocess.DEVNULL))
        targets["nginx"] = port
        port = free_port()
        path = os.path.join(tmp, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(f"global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n"
                    f"  timeout server 30s\n  option http-keep-alive\nfrontend fe\n  bind 127.0.0.1:{port}\n"
                    f"  default_backend be\nbackend be\n  server s1 127.0.0.1:{backend}\n")
        procs.append(subprocess.Popen(["haproxy", "-f", path], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        targets["haproxy"], pids["haproxy"] = port, [procs[-1].pid]
        targets["backend (direct)"] = backend
        for name, port in targets.items():
            wait_port(port)
        time.sleep(0.5)
        pids["nginx"] = children(procs[3].pid)
        pids["backend (direct)"] = children(procs[0].pid)
        idle_rss = {name: rss_kib(p) for name, p in pids.items()}
        idle_anon = {name: rss_kib(p, "RssAnon") for name, p in pids.items()}
        held = {}
        if args.idle_connections:
            for name, port in targets.items():
                held[name] = held_connection_bytes(port, pids[name], args.idle_connections)
        hz = os.sysconf("SC_CLK_TCK")
        results = {}
        # Each -c runs every target back to back, so that the figures a
        # ratio compares are seconds apart: this VM's speed drifts by up to
        # ~20% over tens of seconds, for every process at once. The order is
        # shuffled for each -c of each round (seeded, so runs repeat): a
        # fixed rotation would always run a target right after the same
        # other one, and any after-effect of that one would count against it.
        shuffle = random.Random(1).shuffle
        for r in range(args.rounds):
            for c in (1, 50, 200):
                order = [(n, p) for n, p in targets.items()
                         if not args.compared_only or n in ("wasp", "nginx", "haproxy")]
                shuffle(order)
                for name, port in order:
                    before = cpu_ticks(pids[name])
                    rps, _, p99, total = wrk(port, c, args.seconds)
                    cpu_us = (cpu_ticks(pids[name]) - before) / hz * 1e6 / max(total, 1)
                    results.setdefault((name, c), []).append((rps, p99, cpu_us))
                    print(f"round {r + 1} -c {c} {name}: {rps:,.0f} requests/s, p99 {p99:.2f} ms, "
                          f"{cpu_us:.1f} µs/request", file=sys.stderr)
        print(f"\nwrk -t1 -d{args.seconds}s, medians of {args.rounds} interleaved rounds, proxies with 1 worker, "
              f"nginx backend returning a 23-byte body\n")
        print("| target | -c | requests/s | p99 ms | CPU µs/request | idle RSS KiB (anonymous) |")
        print("|---|---|---|---|---|---|")
        med = {}
        for (name, c), vs in sorted(results.items()):
            med[(name, c)] = [statistics.median(v[i] for v in vs) for i in range(3)]
            rps, p99, cpu = med[(name, c)]
            print(f"| {name} | {c} | {rps:,.0f} | {p99:.3f} | {cpu:.1f} | "
                  f"{idle_rss[name]} ({idle_anon[name]}) |")
        rss = idle_rss["wasp"] / idle_rss["nginx"]
        # Against each of the two separately: a ratio to the better of two
        # noisy figures would be biased against wasp whenever they are close.
        print("\nwasp against nginx and against HAProxy (idle RSS: against nginx's), each cell the ratio")
        print("of the medians (the median of the ratios within each round):\n")
        print("| -c | against | requests/s ratio | CPU/request ratio | p99 ratio | idle RSS ratio |")
        print("|---|---|---|---|---|---|")
        for c in (1, 50, 200):
            for other in ("nginx", "haproxy"):
                of_medians = ratios(med[("wasp", c)], med[(other, c)])
                per_round = [ratios(results[("wasp", c)][r], results[(other, c)][r]) for r in range(args.rounds)]
                paired = [statistics.median(x[i] for x in per_round) for i in range(3)]
                cells = " | ".join(f"{a:.2f} ({b:.2f})" for a, b in zip(of_medians, paired))
                print(f"| {c} | {other} | {cells} | {rss:.2f} |")
        if held:
            print(f"\nRSS growth per idle keep-alive connection, {args.idle_connections} held after one "
                  f"request each (bytes; anonymous in brackets):\n")
            print("| target | bytes/connection |")
            print("|---|---|")
            for name, (total, anon) in held.items():
                print(f"| {name} | {total:,.0f} ({anon:,.0f}) |")
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def held_connection_bytes(port, pids, n):
    """What `n` keep-alive connections cost the server at `port` while they
    wait for their next request: its RSS growth (and the anonymous part's)
    per connection, in bytes, each connection having made one request
    (so that its buffers are what a served connection keeps)."""
    request = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n"
    before = rss_kib(pids), rss_kib(pids, "RssAnon")
    held = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            s.sendall(request)
            if not s.recv(4096).startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"port {port} did not answer 200")
        time.sleep(0.5)
        return tuple((a - b) * 1024 / n for a, b in zip((rss_kib(pids), rss_kib(pids, "RssAnon")), before))
    finally:
        for s in held:
            s.close()
        time.sleep(0.5)


def ratios(wasp, other):
    """wasp's requests/s, CPU/request and p99 (in the table's order) over
    `other`'s; each figure is (requests/s, p99, CPU/request)."""
    return (wasp[0] / other[0], wasp[2] / other[2], wasp[1] / other[1])


if __name__ == "__main__":
    main()
