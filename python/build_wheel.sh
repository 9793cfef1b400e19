#!/usr/bin/env bash
# Builds the `squall` wheel (the native module, the Python package, and the `squall`
# binary that `local_cluster` starts) into target/wheels and installs it into the
# virtualenv target/pyenv, creating it with what the Python tests need.
# Usage: python/build_wheel.sh [--release]   (default: the dev profile, as tests use)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dev
dir=debug
if [[ "${1:-}" == "--release" ]]; then
  profile=release
  dir=release
fi
venv=target/pyenv
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.9,<2" "numpy>=1.24" "pytest>=7"

cargo build --profile "$profile" -p squall-adapters --bin squall
mkdir -p python/squall/bin
cp "target/$dir/squall" python/squall/bin/squall
rm -f target/wheels/squall-*.whl
(cd python && "../$venv/bin/maturin" build --quiet --profile "$profile" -o ../target/wheels -i "../$venv/bin/python")
"$venv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/squall-*.whl
echo "squall wheel installed in $venv: $(ls target/wheels/squall-*.whl)"
