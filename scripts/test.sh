#!/usr/bin/env bash
# Run every test: lint, fast unit tests, then integration tests with real clients.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
echo "== lint (ruff, mypy)"
ruff check engine bench plugins tests
ruff format --check engine bench plugins tests
mypy engine/src/cairn
echo "== unit tests"
python -m pytest engine/tests -m "not integration" -q -p no:cacheprovider
echo "== collection unit tests (modules against an in-memory agent)"
python -m pytest tests/unit -q -p no:cacheprovider
echo "== collection gates (ansible-test sanity and units, ansible-lint, build, install, ansible-doc)"
bash scripts/check-collection.sh
echo "== integration tests (real clients: libiscsi, QEMU, ext4)"
python -m pytest engine/tests -m integration -q -p no:cacheprovider -rs
echo "== molecule scenarios (isolated container hosts: cluster, failure, default; docs/molecule.md)"
bash molecule/run.sh
