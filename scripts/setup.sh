#!/usr/bin/env bash
# Installs everything Hyperion Node and its tests need into .venv, idempotently.
# Sourced by scripts/start and scripts/test; safe to run again (a stamp skips work already done).
#
# On a fresh Debian machine this adds, only when missing: a C toolchain and headers (llama-cpp-python and
# fastecdsa compile from source), GMP (fastecdsa), python3-venv (Debian splits ensurepip out), and Blender
# for the render-blender runtime and its tests (Debian's package: Blender 3.4, Cycles on the CPU headless), and
# Chromium with chromedriver for the web dashboard's browser test, and promtool (Debian's prometheus package)
# for the tests that check /metrics and the alerting rules.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HYPERION_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

say() { printf '[setup] %s\n' "$*" >&2; }

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      say "missing system packages: $* -- install them as root: apt-get install -y $*"; exit 1
    fi
  fi
  say "installing system packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

system_packages() {
  local need=()
  command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || need+=(build-essential)
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  { [ -e /usr/include/gmp.h ] || ls /usr/include/*/gmp.h >/dev/null 2>&1; } || need+=(libgmp-dev)
  "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
  "$PYTHON" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need+=(python3-dev)
  command -v blender >/dev/null 2>&1 || need+=(blender)
  # Headless Chromium and its WebDriver: the web dashboard test loads / in a real browser.
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
  # promtool (Debian's prometheus package): the tests check /metrics and configs/alerts.yml with it.
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
}

llama_cmake_args() {
  # llama.cpp's CPU backend, for this CPU's instruction sets as /proc/cpuinfo lists them, never AMX. A native
  # build (-march=native, llama-cpp-python's default) turns on AMX where the CPU lists it, and on a virtual
  # machine whose hypervisor does not enable AMX state the first matrix product faults (seen: a segfault in
  # ggml_backend_amx_mul_mat on a Sapphire Rapids guest, in every inference test).
  # HYPERION_LLAMA_CUDA=1 adds the CUDA backend (it needs the CUDA toolkit), so that a GPU owner's models are
  # offloaded to the GPU. Opt-in: a CUDA build takes far longer, and an nvcc on PATH does not mean a GPU.
  # (Not yet built on the project's own machines: see docs/install.md.)
  local gpu=""
  if [ "${HYPERION_LLAMA_CUDA:-0}" = "1" ]; then gpu=" -DGGML_CUDA=ON"; fi
  if [ "$(uname -m)" != "x86_64" ]; then echo "-DGGML_NATIVE=ON$gpu"; return; fi
  local flags args="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF$gpu"
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  local pair
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 avx512vbmi:AVX512_VBMI \
              avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    case "$flags" in *" ${pair%%:*} "*) args="$args -DGGML_${pair##*:}=ON" ;; esac
  done
  echo "$args"
}

llama_wheel() {
  # Built once per (version, build flags) into our own wheel cache, then installed before the project, so that
  # pip never reuses a wheel of other flags from its cache (its cache key ignores CMAKE_ARGS).
  local version args key dir
  version="$(grep -i '^llama[-_]cpp[-_]python==' "$ROOT/constraints.txt" | cut -d= -f3)"
  args="$(llama_cmake_args)"
  key="$(printf '%s %s' "$version" "$args" | sha256sum | cut -c1-16)"
  dir="${XDG_CACHE_HOME:-$HOME/.cache}/hyperion-node/wheels/llama-$key"
  if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python $version for this CPU (about 8 minutes on 2 cores, once per machine)"
    CMAKE_ARGS="$args" "$VENV/bin/python" -m pip wheel -q --no-cache-dir --no-deps -w "$dir.tmp" \
      "llama-cpp-python==$version"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  "$VENV/bin/python" -m pip install -q --no-deps --force-reinstall "$dir"/llama_cpp_python-*.whl
}

python_packages() {
  local stamp="$VENV/.hyperion-install-stamp"
  local want
  want="$( (cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt"; llama_cmake_args) | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  say "installing Python packages"
  "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
  llama_wheel
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[test,bench]"
  echo "$want" > "$stamp"
}

node_packages() {
  # snarkjs and circom2 (pinned in package-lock.json) for the ZK tests and scripts/bench_zk.py.
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  local stamp="$ROOT/node_modules/.hyperion-npm-stamp"
  local want
  want="$(sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1)"
  if [ -x "$ROOT/node_modules/.bin/snarkjs" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  say "installing snarkjs and circom2 from npm"
  (cd "$ROOT" && npm ci --no-audit --no-fund >/dev/null)
  echo "$want" > "$stamp"
}

"$PYTHON" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' || {
  say "Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 1; }
system_packages
python_packages
node_packages
# The ZK runtime's C MSM kernel (runtimes/zk/native): built now, once per source, rather than in the first proof.
"$VENV/bin/python" -m runtimes.zk.native
