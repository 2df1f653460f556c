#!/usr/bin/env bash
# Set up (first time only), lint, and run the test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FLWR_TELEMETRY_ENABLED=0
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
