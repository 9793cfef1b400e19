#!/usr/bin/env bash
# The test command (README, Quick start): installs what the tests need (Debian
# chromium and prometheus, a Python virtualenv, playwright-core from npm), then runs
# every check CI runs: formatting, lints, the whole Rust test suite (which runs 1,000
# simulator seeds under every checker, liveness after heal included; process tests of
# the node, its HTTP API against promtool and schemathesis, the dashboard in Chromium),
# the UDL SDK's `torch` feature against PyPI's libtorch 2.11 (CPU tests), the Python
# package's tests and the deployment files' checks. Longer soaks are README
# command 1 with a larger --seeds range.
set -euo pipefail
cd "$(dirname "$0")/.."

# rustfmt and clippy come with most toolchains; add them only where they are missing.
missing=()
cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
if ((${#missing[@]} > 0)); then
  echo "+ rustup component add ${missing[*]}"
  rustup component add "${missing[@]}"
fi

run() {
  echo "+ $*"
  "$@"
}

# Debian packages: headless Chromium for the dashboard's browser test, promtool (from
# prometheus) to check /metrics.
debs=()
command -v chromium >/dev/null 2>&1 || debs+=(chromium)
command -v promtool >/dev/null 2>&1 || debs+=(prometheus)
if ((${#debs[@]} > 0)); then
  run apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debs[@]}"
fi

# Python: a virtualenv with maturin (the wheel), numpy and pytest (the package's tests),
# schemathesis (the REST API against its OpenAPI document), and pyyaml with
# kubernetes-validate (the Kubernetes manifests against the API schemas it bundles).
if [[ ! -x target/pyenv/bin/python ]]; then
  run python3 -m venv target/pyenv
fi
run target/pyenv/bin/pip install -q --disable-pip-version-check \
  "maturin>=1.9,<2" "numpy>=1.24" "pytest>=7" "schemathesis>=4,<5" \
  "pyyaml>=6" "kubernetes-validate>=1.37,<2"

# Node: playwright-core for the browser test, at the version package-lock.json pins.
if [[ -f adapters/tests/browser/package-lock.json ]]; then
  (cd adapters/tests/browser && run npm ci --silent --no-audit --no-fund)
fi

# With everything installed, a test that needs a tool fails instead of skipping.
export SQUALL_REQUIRE_TOOLS=1

run cargo fmt --all -- --check
run cargo clippy --workspace --all-targets -- -D warnings
run cargo test --workspace

# The UDL SDK's `torch` feature (tch tensors over inputs and outputs) against libtorch
# 2.11 from PyPI, the version tch 0.24 wraps and the GPU machines run: the CPU build of
# libtorch is enough to build it and run its CPU tests (the CUDA test says it skips).
# No Python import: a directory of symlinks is what torch-sys reads (`LIBTORCH`).
if [[ ! -f target/torchenv/lib/libtorch/build-version ]]; then
  run python3 -m venv target/torchenv
  run target/torchenv/bin/pip install -q --disable-pip-version-check --no-deps \
    "torch==2.11.0" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cupti==13.0.*"
  sp=$(target/torchenv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  mkdir -p target/torchenv/lib/libtorch/lib
  ln -sfn "$sp/torch/include" target/torchenv/lib/libtorch/include
  for l in libc10.so libtorch_cpu.so libtorch.so; do
    ln -sfn "$sp/torch/lib/$l" "target/torchenv/lib/libtorch/lib/$l"
  done
  echo 2.11.0 >target/torchenv/lib/libtorch/build-version
fi
torch_lib=$(readlink -f target/torchenv/lib/libtorch/lib/libtorch_cpu.so)
torch_env=(env LIBTORCH="$PWD/target/torchenv/lib/libtorch" LD_LIBRARY_PATH="$(dirname "$torch_lib")")
run "${torch_env[@]}" cargo clippy -p squall-udl --features torch --all-targets -- -D warnings
run "${torch_env[@]}" cargo test -p squall-udl --features torch --test torch

# Python: the wheel (maturin, in the virtualenv target/pyenv) and its tests against real
# node processes.
run python/build_wheel.sh
run target/pyenv/bin/python -m pytest -q python/tests

# deploy/: the Kubernetes manifests (schemas and cross-checks), the systemd unit and every
# sample config, checked by the built node.
run target/pyenv/bin/python -m pytest -q deploy/tests/check_manifests.py
