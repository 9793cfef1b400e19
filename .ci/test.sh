#!/usr/bin/env bash
# The test command (README, Quick start): installs what the tests need, then runs every
# check CI runs: formatting, lints, the whole Rust test suite (which runs 1,000 simulator
# seeds under every checker, liveness after heal included) and the Python package's
# tests. Longer soaks are README command 1 with a larger --seeds range.
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

run cargo fmt --all -- --check
run cargo clippy --workspace --all-targets -- -D warnings
run cargo test --workspace

# Python: the wheel (maturin, in the virtualenv target/pyenv) and its tests against real
# node processes.
run python/build_wheel.sh
run target/pyenv/bin/python -m pytest -q python/tests
