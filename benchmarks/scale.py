"""Per-round time, start-up time and peak memory against the number of clients M, at a fixed
cohort.

Workload: FedAvg on fedsim's ``logreg_synthetic`` with ``--dim`` (20) features and
``--samples`` (10) samples per client, M clients, ``sampler=uniform`` with a cohort of
``--cohort`` (100), 5 local GD steps, seed 0; M ∈ ``--clients`` (100, 1000, 10000, 100000).
Every M runs in a fresh subprocess (its peak RSS is its own), one BLAS thread.

Per M and engine:

* **per round** (inline): ``(t[2W] − t[W] − e) / W`` from the ``wall_s`` of the rows written
  after rounds W and 2W (``eval_every = W``, W = ``--window``, 500), less ``e``, one centralized
  evaluation over all M clients' data (timed separately and printed: it is the one part of a
  window that must grow with M);
* **start-up**: the wall time of ``fedsim.runner.run`` less the rounds after round 0
  (``total − (t[last] − t[0])``): composing, building the task and the M clients' data, the
  partition, the M nodes and the discovery round 0;
* **peak RSS** of the subprocess and the bytes of the clients' data (``A`` and labels), so the
  memory beyond the data is visible.

The engine=ray rows (``--ray-clients``, 100 and 1000) run ``--ray-rounds`` (2) rounds; their
start-up includes Ray's start, and their whole run (``run s``, also printed for inline) includes
the Ray actors' start, which happens in round 1 (fedsim's ClientApp is imported by each actor on
its first message). ``run s`` of an inline row is its 2W rounds and start-up.

The must-shows (exit status 1 when one fails): inline per-round time at M = 100000 at most
1.5× that at M = 1000, and inline start-up at M = 100000 under 60 s.

Run ``.venv/bin/python benchmarks/scale.py [--json PATH]``; about 2 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]


def overrides(clients: int, engine: str, args: argparse.Namespace, rounds: int) -> list[str]:
    return [
        "task=logreg_synthetic",
        f"task.dim={args.dim}",
        f"task.samples_per_client={args.samples}",
        f"num_clients={clients}",
        "partition=natural",
        "method=fedavg",
        "method.local_solver=gd",
        "method.local_steps=5",
        "sampler=uniform",
        f"sampler.cohort_size={min(args.cohort, clients)}",
        f"engine={engine}",
        f"num_rounds={rounds}",
        f"eval_every={max(1, rounds // 2)}",
        "output.progress=false",
        "output.plot=false",
        "seed=0",
    ]


def child(clients: int, engine: str, args: argparse.Namespace) -> dict:
    """One measured run in this process (called in a subprocess)."""
    import tempfile

    import numpy as np

    from fedsim.app import compose
    from fedsim.build import task_of
    from fedsim.metrics import evaluate
    from fedsim.runner import run

    rounds = 2 * args.window if engine == "inline" else args.ray_rounds
    start = time.perf_counter()
    cfg = compose(" ".join(overrides(clients, engine, args, rounds)))
    with tempfile.TemporaryDirectory(prefix="fedsim-scale-") as tmp:
        rows = run(cfg, Path(tmp) / "run")
    total = time.perf_counter() - start
    wall = {int(r["round"]): float(r["wall_s"]) for r in rows}
    out = {
        "clients": clients,
        "engine": engine,
        "rounds": rounds,
        "startup_s": total - (wall[rounds] - wall[0]),
        "total_s": total,
    }
    task = task_of(cfg)
    out["data_mb"] = sum(c.a.nbytes + c.y.nbytes for c in task.clients) / 2**20
    if engine == "inline":
        x = np.full(task.dim, 0.01)
        evaluate(task, x)
        t = time.perf_counter()
        for _ in range(5):
            evaluate(task, x)
        eval_s = (time.perf_counter() - t) / 5
        w = args.window
        out["eval_ms"] = 1e3 * eval_s
        out["per_round_ms"] = 1e3 * (wall[2 * w] - wall[w] - eval_s) / w
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure(clients: int, engine: str, argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", str(clients), engine, *argv]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"M={clients} {engine} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    parser.add_argument("--clients", type=ints, default=[100, 1000, 10000, 100000])
    parser.add_argument("--ray-clients", type=ints, default=[100, 1000])
    parser.add_argument("--cohort", type=int, default=100)
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--ray-rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("M", "ENGINE"), default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    shared = [
        f"--cohort={args.cohort}",
        f"--dim={args.dim}",
        f"--samples={args.samples}",
        f"--window={args.window}",
        f"--ray-rounds={args.ray_rounds}",
    ]
    if args.child:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            print(json.dumps(child(int(args.child[0]), args.child[1], args)))
        return 0
    results = []
    for engine, sizes in (("inline", args.clients), ("ray", args.ray_clients)):
        for m in sizes:
            results.append(measure(m, engine, shared))
            print(json.dumps(results[-1]), flush=True)
    print(f"\ncohort {args.cohort}, {args.samples} samples x {args.dim} features per client")
    print("| engine | M | per round ms | eval ms | start-up s | run s | peak RSS MB | data MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        per_round = f"{r['per_round_ms']:.2f}" if "per_round_ms" in r else "–"
        ev = f"{r['eval_ms']:.2f}" if "eval_ms" in r else "–"
        print(
            f"| {r['engine']} | {r['clients']} | {per_round} | {ev} | {r['startup_s']:.2f} | "
            f"{r['total_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['data_mb']:.1f} |"
        )
    failed = []
    inline = {r["clients"]: r for r in results if r["engine"] == "inline"}
    if 1000 in inline and 100000 in inline:
        growth = inline[100000]["per_round_ms"] / inline[1000]["per_round_ms"]
        print(f"per-round time, M = 100000 / M = 1000: {growth:.2f}x (must be <= 1.5x)")
        if growth > 1.5:
            failed.append(f"per-round growth {growth:.2f}x > 1.5x")
        if inline[100000]["startup_s"] >= 60:
            failed.append(f"start-up at M = 100000 {inline[100000]['startup_s']:.1f} s >= 60 s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if failed:
        print("FAILED:", "; ".join(failed))
        return 1
    print("all must-shows hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
