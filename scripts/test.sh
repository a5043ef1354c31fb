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
chmod 1777 "$covdir"
log=$(mktemp /tmp/ftpalg-pytest.XXXXXX)
started=$SECONDS
# Last in the output, also after a failure (a CI log's tail): the slowest tests, the time taken.
summary() {
  sed -n '/slowest 15 durations/,/^$/p' "$log"
  echo "== pytest took $((SECONDS - started))s"
  rm -rf "$covdir" "$log"
}
trap summary EXIT
# The suite's own deadline, well inside CI's 90 minutes: on expiry pytest gets SIGINT and
# prints where it stood (traceback) and the slowest tests so far. No single test runs past
# pytest-timeout's limit (pyproject.toml) either. --foreground: pytest stays in the
# terminal's process group, so a Ctrl-C at a terminal still reaches it.
deadline=${FTPALG_TEST_DEADLINE:-3600}
set +e
COVERAGE_FILE="$covdir/.coverage" timeout --foreground -s INT -k 120 "$deadline" \
  .venv/bin/coverage run -m pytest -q --durations=15 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
[ "$status" -ne 124 ] || echo "pytest: stopped at the suite's deadline of ${deadline}s" >&2
echo "== coverage"
if .venv/bin/coverage combine -q --data-file=.coverage "$covdir"; then  # replaces .coverage
  .venv/bin/coverage report --skip-covered --sort=cover > "$covdir/report"
  head -n 25 "$covdir/report"
else
  echo "coverage: no data to combine" >&2
  [ "$status" -ne 0 ] || status=1
fi
[ "$status" -eq 0 ] || exit "$status"
echo "== coverage floors (core 95 %, proxy 85 %)"
.venv/bin/coverage report --include='ftpalg/core/*' --fail-under=95 --format=total
.venv/bin/coverage report --include='ftpalg/proxy/*' --fail-under=85 --format=total
