#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests and the root-only lab tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check ftpalg tests bench; .venv/bin/ruff format --check ftpalg tests bench
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q --cov=ftpalg --cov-report=term:skip-covered "$@"
.venv/bin/coverage report --include='ftpalg/core/*' --fail-under=95
