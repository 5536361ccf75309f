#!/usr/bin/env bash
# Runs the whole test suite: engine tests without QGIS, then QGIS and end-to-end tests in
# real QGIS 3.22 (offscreen). Prints one combined summary line at the end.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" || exit 1
cd "$root"
export QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
reports="$(mktemp -d)"
status=0
run() {  # pytest exit 5 ("no tests collected" in one half) is not a failure of the suite
  "$@"; local rc=$?
  if [ "$rc" != 0 ] && [ "$rc" != 5 ]; then status=$rc; fi
}
run .venv/bin/python -m pytest -p no:pytest_qgis -p no:cacheprovider tests/engine \
  --junitxml="$reports/engine.xml" "$@"
run .venv/bin/python -m pytest -p no:cacheprovider tests/qgis tests/e2e \
  --junitxml="$reports/qgis.xml" "$@"
.venv/bin/python scripts/junit_total.py "$reports"/*.xml
exit "$status"
