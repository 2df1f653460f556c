"""Tune the clipped methods as the authors did: a Hydra multirun over a log grid per method, then
:mod:`select_best` (lowest mean loss over the last fifth of the run).

    .venv/bin/python experiments/generalized_smoothness/tune.py [--jobs 2] [--out DIR]

Every grid runs ``+experiment=generalized_smoothness`` (the quartic, d = 100, x0 = 10·1,
10 clients, 200 rounds, seed 0) with the inline engine. The printed settings are the methods'
defaults in ``conf/method/`` (``tuned.md`` records them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

GRIDS: dict[str, list[str]] = {
    "clip_local_gdj": [
        "sampler=full",
        "method.client_lr=1e-10,1e-8,1e-6,1e-4",
        "method.c0=1e2,1e3,1e4,1e5,1e6",
        "method.c1=1e-10,1e-6,1e-4,1e-2,1",
    ],
    "clerr": [
        "sampler=full",
        "method.client_lr=1e-10,1e-8,1e-6,1e-4",
        "method.c0=1e2,1e3,1e4,1e5,1e6",
        "method.c1=1e-10,1e-6,1e-4,1e-2,1",
    ],
    "clipped_rr_cli": [
        "sampler=cyclic",
        "sampler.cohort_size=2",
        "method.client_lr=1e-10,1e-8,1e-6",
        "method.server_lr=1e-10,1e-7,1e-5",
        "method.c0=1e3,1e4,1e5,1e6",
        "method.c1=1e-10,1e-6,1e-2",
    ],
    "ce_fedavg": [
        "sampler=full",
        "method.client_lr=1e-7,1e-5,1e-3",
        "method.client_clip=1,10,100,1000",
        "method.server_lr=0.01,0.1,1,10",
    ],
    "celgc": [
        "sampler=full",
        "method.c0=1e3,1e4,1e5,1e6,1e7",
        "method.c1=1e-10,1e-6,1e-2,1",
    ],
    "l0l1_gd": [
        "sampler=full",
        "method.c0=1e2,1e3,1e4,1e5,1e6",
        "method.c1=1e-10,1e-6,1e-4,1e-2,1",
    ],
}


def sweep(method: str, out: Path) -> Path:
    where = out / method
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "-m",
        "+experiment=generalized_smoothness",
        f"method={method}",
        *GRIDS[method],
        "output.plot=false",
        "output.progress=false",
        f"hydra.sweep.dir={where}",
    ]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "tune_generalized_smoothness"
    )
    parser.add_argument("--methods", default=",".join(GRIDS))
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        sweeps = list(pool.map(lambda m: sweep(m, args.out), methods))
    sys.path.insert(0, str(HERE))
    from select_best import report, select

    table = report(select(sweeps))
    print(table)
    (HERE / "tuned.md").write_text(
        "# Tuned defaults (`python experiments/generalized_smoothness/tune.py`)\n\n"
        "Quartic, d = 100, x0 = 10·1, 10 clients, 200 rounds, seed 0; grids in `tune.py`.\n\n"
        + table
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
