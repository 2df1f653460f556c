#!/usr/bin/env bash
# Create .venv with Python 3.11 and install fedsim with its pinned dependencies (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fedsim-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch==2.13.0 is pinned in pyproject.toml: the CPU wheel, never a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  # hydra/launcher=ray (sweep jobs as Ray tasks on a cluster). --no-deps: the plugin declares
  # ray[default], boto3 and cloudpickle<3 for its AWS launcher; the local-cluster launcher used
  # here needs only the ray and hydra-core above, and ray[default] would add the dashboard
  # processes to every Ray that fedsim starts.
  .venv/bin/python -m pip install --quiet --no-deps hydra-ray-launcher==1.2.2
  echo "$want" > "$stamp"
fi
