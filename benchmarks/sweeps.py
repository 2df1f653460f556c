"""Wall time of Hydra sweeps: parallel launchers against the serial sweep, one shared Ray
against a Ray per job; both sides of each ratio in one run, metrics compared to the last bit.

* **inline, joblib** (``hydra/launcher=joblib``, one process per core, each job single-threaded)
  against Hydra's basic launcher (the jobs one after another in one process), on ``--inline-jobs``
  jobs (12) and on 2 jobs: FedAvg on the default task, ``--rounds`` rounds (5000) each, seeds
  0, 1, ....
* **engine=ray, one shared Ray** (``engine.shared=true``, the default: the first job starts a
  Ray, the others join it and reuse its warm actors) against ``engine.shared=false`` (every job
  starts and stops its own Ray, Flower's behaviour), on ``--ray-jobs`` jobs (6) of 3 rounds with
  4 clients.

Each sweep is one ``python -m fedsim -m ...`` subprocess, timed from its start to its exit (the
interpreter's and Hydra's start-up are in both sides). The must-shows (exit status 1 when one
fails): 12 joblib jobs take ≤ 0.6× the serial sweep's wall time; 6 ``engine=ray`` jobs on one
Ray take ≤ 0.5× the per-job-Ray sweep's; every job's metrics (all columns but ``wall_s``) are
the same on both sides.

Run ``.venv/bin/python benchmarks/sweeps.py [--json PATH]``; about 4 min on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sweep(outdir: Path, args: list[str]) -> float:
    """Run one multirun; its wall time in seconds."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim", "-m", *args, "output.progress=false"]
    cmd += ["output.plot=false", f"hydra.sweep.dir={outdir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"sweep failed ({' '.join(args)}):\n{proc.stderr[-3000:]}")
    return seconds


def rows(job: Path) -> list[dict[str, str]]:
    with open(job / "metrics.csv") as fh:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in csv.DictReader(fh)]


def same_metrics(a: Path, b: Path, count: int) -> bool:
    return all(rows(a / str(i)) == rows(b / str(i)) and rows(a / str(i)) for i in range(count))


def compare(work: Path, name: str, base: list[str], left: list[str], right: list[str], jobs: int):
    """Time the ``left`` and ``right`` variants of one sweep of ``jobs`` seeds."""
    seeds = "seed=" + ",".join(str(s) for s in range(jobs))
    t_left = sweep(work / f"{name}-a", [*base, seeds, *left])
    t_right = sweep(work / f"{name}-b", [*base, seeds, *right])
    same = same_metrics(work / f"{name}-a", work / f"{name}-b", jobs)
    return {
        "sweep": name,
        "jobs": jobs,
        "left": " ".join(left),
        "right": " ".join(right),
        "left_s": round(t_left, 2),
        "right_s": round(t_right, 2),
        "ratio": round(t_right / t_left, 3),
        "same_metrics": same,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inline-jobs", type=int, default=12)
    parser.add_argument("--ray-jobs", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    inline = ["engine=inline", f"num_rounds={args.rounds}", "eval_every=10"]
    serial = ["hydra/launcher=basic"]
    joblib = ["hydra/launcher=joblib"]
    ray = ["engine=ray", "num_rounds=3", "num_clients=4", "sampler=full"]
    results = []
    with tempfile.TemporaryDirectory(prefix="fedsim-sweeps-") as tmp:
        work = Path(tmp)
        for jobs in (2, args.inline_jobs):
            results.append(compare(work, f"inline-{jobs}", inline, serial, joblib, jobs))
            print(json.dumps(results[-1]), flush=True)
        shared = ["engine.shared=false"], ["engine.shared=true"]
        results.append(compare(work, f"ray-{args.ray_jobs}", ray, *shared, args.ray_jobs))
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{cores} cores")
    print("| sweep | jobs | reference | variant | reference s | variant s | ratio | same metrics |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['sweep']} | {r['jobs']} | {r['left']} | {r['right']} | {r['left_s']} | "
            f"{r['right_s']} | {r['ratio']} | {r['same_metrics']} |"
        )
    failed = [r["sweep"] for r in results if not r["same_metrics"]]
    big = next(r for r in results if r["sweep"] == f"inline-{args.inline_jobs}")
    if big["ratio"] > 0.6:
        failed.append(f"joblib ratio {big['ratio']} > 0.6")
    if results[-1]["ratio"] > 0.5:
        failed.append(f"shared-Ray ratio {results[-1]['ratio']} > 0.5")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "results": results}, indent=1))
    if failed:
        print("FAILED:", "; ".join(failed))
        return 1
    print("all must-shows hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
