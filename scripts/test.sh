#!/usr/bin/env bash
# Set up (first time only), lint, and run the test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_TELEMETRY_ENABLED=0
.venv/bin/ruff check .
# One pytest worker per core (at most 4: every worker may start a Ray of ~1 GB); the tests that
# share a Ray or a federation stay on one worker (xdist_group marks, --dist loadgroup).
# FEDSIM_TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -n "${FEDSIM_TEST_WORKERS:-auto}" --maxprocesses=4 \
  --dist loadgroup "$@"
