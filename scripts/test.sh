#!/usr/bin/env bash
# The whole test suite: lint, types, unit tests and the root-only lab tests, with coverage of
# every Python process the tests start (ftpalg itself runs as a subprocess: on loopback, and
# inside the lab's network namespaces, also after dropping root to `nobody`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
echo "== ruff"; .venv/bin/ruff check ftpalg tests bench; .venv/bin/ruff format --check ftpalg tests bench
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"
# One data file per process ([tool.coverage.run] in pyproject.toml: patch = subprocess,
# parallel), all in one directory that any user may write to (sticky, like /tmp): ftpalg
# --user nobody and the setpriv-started ftpalg save theirs there at exit too.
covdir=$(mktemp -d /tmp/ftpalg-coverage.XXXXXX)
trap 'rm -rf "$covdir"' EXIT
chmod 1777 "$covdir"
status=0
COVERAGE_FILE="$covdir/.coverage" .venv/bin/coverage run -m pytest -q "$@" || status=$?
echo "== coverage"
if .venv/bin/coverage combine -q --data-file=.coverage "$covdir"; then  # replaces .coverage
  .venv/bin/coverage report --skip-covered
else
  echo "coverage: no data to combine" >&2
  [ "$status" -ne 0 ] || status=1
fi
[ "$status" -eq 0 ] || exit "$status"
echo "== coverage floors"
.venv/bin/coverage report --include='ftpalg/core/*' --fail-under=95
.venv/bin/coverage report --include='ftpalg/proxy/*' --fail-under=85
