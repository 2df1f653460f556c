"""Tune the clipped methods as the authors did: a Hydra multirun over a log grid per method, then
:mod:`select_best` (lowest mean loss over the last fifth of the run).

    .venv/bin/python experiments/generalized_smoothness/tune.py [--problem quartic|digits]

``quartic``: each method's grid on ``+experiment=generalized_smoothness`` (d = 100, x0 = 10·1,
10 clients, 200 rounds, seed 0); the selected settings are that experiment config's ``tuned``
block (the methods' own defaults are ``auto``, from the task's (L0, L1)). ``digits``: CLERR,
shuffle-once SGD and NASTYA on ``+experiment=generalized_smoothness_digits``; ``run.py
clerr_digits`` uses the selected settings (CLERR's from that config's ``tuned`` block). Both
write ``tuned_<problem>.md`` here; diverged grid points rank last. A grid's overrides replace
the ``tuned`` values, so the grids do not depend on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
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


# CLERR against shuffle-once SGD and NASTYA on the digits MLP (generalized_smoothness_digits).
DIGITS_GRIDS: dict[str, list[str]] = {
    "clerr": [
        "method=clerr",
        "method.client_lr=0.1,0.3,1,3",
        "method.c0=0.001,0.005,0.02,0.1",
        "method.c1=0,0.1,1,10",
    ],
    "so": [
        "method=fedavg",
        "method.local_solver=so",
        "method.client_lr=0.03,0.1,0.3,1,3",
    ],
    "nastya": [
        "method=fedavg",
        "method.local_solver=rr",
        "method.client_lr=0.1,0.3,1,3",
        "method.server_lr=0.25,0.5,1,2",
    ],
}
PROBLEMS = {
    "quartic": ("generalized_smoothness", {m: [f"method={m}", *g] for m, g in GRIDS.items()}),
    "digits": ("generalized_smoothness_digits", DIGITS_GRIDS),
}


def sweep(label: str, grid: list[str], experiment: str, out: Path, jobs: int | None) -> Path:
    """One Hydra multirun over ``grid``, its jobs on ``jobs`` cores (``hydra/launcher=joblib``)."""
    where = out / label
    shutil.rmtree(where, ignore_errors=True)  # a grid's results only, never an older grid's
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "-m",
        f"+experiment={experiment}",
        *grid,
        "hydra/launcher=joblib",
        *([f"hydra.launcher.n_jobs={jobs}"] if jobs else []),
        "output.plot=false",
        "output.progress=false",
        f"hydra.sweep.dir={where}",
    ]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=None, help="processes per sweep (default: the cores)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "outputs" / "tune_generalized_smoothness"
    )
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="quartic")
    args = parser.parse_args(argv)
    experiment, grids = PROBLEMS[args.problem]
    out = args.out / args.problem
    sweeps = [sweep(label, grid, experiment, out, args.jobs) for label, grid in grids.items()]
    sys.path.insert(0, str(HERE))
    from select_best import report, select

    table = report(select(sweeps))
    print(table)
    (HERE / f"tuned_{args.problem}.md").write_text(
        f"# Selected settings: `python experiments/generalized_smoothness/tune.py --problem "
        f"{args.problem}`\n\n`+experiment={experiment}`, seed 0; grids in `tune.py`; rule: "
        "lowest mean loss over the last fifth of the run.\n\n" + table + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
