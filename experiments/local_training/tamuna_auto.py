"""TAMUNA: ``s = auto`` (with its ``p`` and ``η``) against a sweep of ``s`` over ``[2, c]``.

    .venv/bin/python experiments/local_training/tamuna_auto.py          # ~1.5 h on 2 cores
    .venv/bin/python experiments/local_training/tamuna_auto.py --quick  # one cell, a smoke test

Cells: two data sets of two dimensions (``task=quadratic``, d = 20, 40 clients, one
eigenbasis, L_m from κ/10 to κ and μ = 1; LIBSVM a9a, d = 123, 2500 rows over 50 clients iid,
λ set so that the uniform form's κ is the cell's), cohorts c ∈ {5, 10, 20} and
κ ∈ {1e2, 1e3, 1e4}. Every arm runs the shipped TAMUNA with ``p`` and ``η`` at ``auto`` for its
``s`` (:mod:`fedsim.blocks.tamuna_rate`); ``s = auto`` resolves to one ``s`` of the sweep (or
one more arm) and shares that arm's run. The table gives the uplink floats until
dist_sq ≤ 1e-8·dist_sq(x0), mean over the seeds. Claims (issue 9): on every cell, s = auto
needs fewer uplink floats than s = c, and at most 1.2× what the best swept s needs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LEVEL = 1e-8
COHORTS = (5, 10, 20)
KAPPAS = (1e2, 1e3, 1e4)
SWEEP = {5: (2, 3, 4, 5), 10: (2, 3, 5, 7, 10), 20: (2, 3, 4, 6, 10, 20)}
DATA = ("quadratic", "a9a")
# Seeds per data set. The quadratic is redrawn per seed (its minimizers and spectra), so its
# uplink floats vary ~10 % per seed (22 % at worst, measured over 3 seeds) against ~3 % on a9a;
# with 3 seeds the best of a sweep of noisy means is biased low, so the quadratic gets 10.
SEEDS = {"quadratic": 10, "a9a": 3}


def base(data: str, c: int, kappa: float, seed: int) -> list[str]:
    common = ["engine=inline", "method=tamuna", "sampler=uniform", f"sampler.cohort_size={c}"]
    common += [f"seed={seed}", "eval_every=1", "output.progress=false", "output.plot=false"]
    if data == "quadratic":
        task = ["task=quadratic", "task.dim=20", "task.mu=1", "task.rotation=shared"]
        task += [f"task.L_min={kappa / 10}"]
        return [*common, *task, f"task.L_max={kappa}", "num_clients=40"]
    a9a = ["task=logreg_libsvm", "task.max_samples=2500", "partition=iid", "num_clients=50"]
    return [*common, *a9a, f"task.l2={a9a_l2(kappa)}"]


def a9a_l2(kappa: float) -> float:
    """λ with ``(L₀ + λ)/λ = κ``: ``L₀`` is the uniform form's smoothness without the ridge."""
    from fedsim.app import compose
    from fedsim.build import task_of
    from strategies.local_training import uniform_form

    probe = ["task=logreg_libsvm", "task.max_samples=2500", "partition=iid", "num_clients=50"]
    task = task_of(compose(" ".join([*probe, "task.l2=0"])))
    big_l, _ = uniform_form(task)
    return big_l / (kappa - 1)


def arm(
    data: str, c: int, kappa: float, s: int | str, seed: int
) -> tuple[float, float, tuple[int, float]]:
    """(uplink floats to the level, predicted floats, the run's (s, p)) of one run."""
    from fedsim.app import compose
    from fedsim.blocks.tamuna_rate import uplink_floats
    from fedsim.build import task_of
    from fedsim.runner import quiet_flower
    from strategies.local_training import uniform_form

    quiet_flower()
    overrides = [*base(data, c, kappa, seed), f"method.s={s}"]
    cfg = compose(" ".join(overrides))
    task, method = task_of(cfg), cfg["method"]
    big_l, mu = uniform_form(task)
    mu = max(mu, float(getattr(task.full, "strong_convexity", 0.0)))
    k, p, eta = int(method["s"]), float(method["p"]), float(method["eta"])
    gamma = float(method["client_lr"])
    pred = uplink_floats(k, p, eta, gamma, mu, big_l, task.num_clients, task.dim)
    pred *= math.log(1 / LEVEL)
    rounds = int(4 * pred / (k * task.dim)) + 100
    rows = rows_until_level(compose(" ".join([*overrides, f"num_rounds={rounds}"])))
    d = np.array([r["dist_sq"] for r in rows], dtype=float)
    up = np.cumsum([r["up_floats"] or 0 for r in rows])
    hit = np.flatnonzero(d / d[0] <= LEVEL)
    return (float(up[hit[0]]) if hit.size else math.inf), pred, (k, p)


class _Reached(Exception):
    """Raised after the round whose row first meets the level: the rest cannot change it."""


def rows_until_level(cfg: dict) -> list[dict]:
    """The inline run of ``cfg`` (as :func:`fedsim.runner.run` drives it), stopped after the
    first row with dist_sq ≤ LEVEL·dist_sq(x0): the same rows as the full run up to there."""
    from fedsim.app import server_fn
    from fedsim.build import client_factory
    from fedsim.engines.inline import make_nodes, run_rounds

    strategy = server_fn(cfg, None, False, None).server.strategy
    nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
    rows = strategy.recorder.rows

    def check(rnd: int) -> None:
        if rows[-1]["dist_sq"] <= LEVEL * rows[0]["dist_sq"]:
            raise _Reached

    try:
        run_rounds(strategy, nodes, cfg["num_rounds"], after_round=check)
    except _Reached:
        pass
    return rows


def resolved_s(data: str, c: int, kappa: float) -> int:
    """The ``s`` that ``method.s=auto`` resolves to on the cell (its p and η are then those of
    the swept arm with that ``s``: the same deterministic run)."""
    from fedsim.app import compose

    return int(compose(" ".join(base(data, c, kappa, 0)))["method"]["s"])


def cell_name(data: str, c: int, kappa: float) -> str:
    return f"{data} c={c} κ={kappa:.0e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/local_training/tamuna_auto.py")
    parser.add_argument("--quick", action="store_true", help="one small cell, one seed")
    parser.add_argument("--seeds", type=int, default=None, help="the same for every data set")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: the cores)")
    args = parser.parse_args(argv)
    cells = [(d, c, k) for d in DATA for c in COHORTS for k in KAPPAS]
    if args.quick:
        cells = [("quadratic", 5, 1e2)]

    def seeds_of(data: str) -> range:
        return range(1 if args.quick else args.seeds or SEEDS[data])

    auto_s = {cell: resolved_s(*cell) for cell in cells}  # s = auto resolves to one of these
    jobs = [
        (d, c, k, s, seed)
        for d, c, k in cells
        for s in sorted({*SWEEP[c], auto_s[(d, c, k)]})
        for seed in seeds_of(d)
    ]
    cache = HERE / "tamuna_auto.jsonl"
    done = {}
    if cache.exists() and not args.quick:
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[tuple(row["job"])] = tuple(row["result"])
    todo = [job for job in jobs if job not in done]
    from fedsim.sweep import parallel_map

    for job, result in zip(todo, parallel_map(_arm, todo, args.workers), strict=True):
        done[job] = result
        if not args.quick:
            with cache.open("a") as f:
                f.write(json.dumps({"job": list(job), "result": list(result)}) + "\n")
    results = {job: done[job] for job in jobs}
    lines = [
        "# TAMUNA: s = auto against a sweep of s (uplink floats to 1e-8·dist_sq(x0))",
        "",
        "`python experiments/local_training/tamuna_auto.py` — seeds "
        + ", ".join(f"{d}: 0–{len(seeds_of(d)) - 1}" for d in DATA)
        + ", p and η at "
        "auto for every s; numbers are means over the seeds. s = auto resolves to an s whose "
        "run (same s, p, η, hence the same iterates) the sweep holds.",
        "",
        "| cell | s = 2 | s = auto (s, p) | s = c | best swept s | auto / c | auto / best |",
        "|---|---|---|---|---|---|---|",
    ]
    worst_c = worst_best = 0.0
    for d, c, k in cells:
        a = auto_s[(d, c, k)]
        mean = {
            s: float(np.mean([results[(d, c, k, s, seed)][0] for seed in seeds_of(d)]))
            for s in {*SWEEP[c], a}
        }
        mean["auto"] = mean[a]
        chosen = results[(d, c, k, a, 0)][2]
        best_s = min(SWEEP[c], key=lambda s: mean[s])
        best = min(mean[best_s], mean["auto"])
        r_c, r_best = mean["auto"] / mean[c], mean["auto"] / best
        worst_c, worst_best = max(worst_c, r_c), max(worst_best, r_best)
        lines.append(
            f"| {cell_name(d, c, k)} | {mean[2]:.3g} | {mean['auto']:.3g} ({chosen[0]}, "
            f"{chosen[1]:.3g}) | {mean[c]:.3g} | {mean[best_s]:.3g} (s={best_s}) | {r_c:.2f} | "
            f"{r_best:.2f} |"
        )
    ok_c, ok_best = worst_c < 1, worst_best <= 1.2
    lines += [
        "",
        f"Largest auto / (s = c): {worst_c:.2f} (claim: below 1 on every cell, "
        f"**{'holds' if ok_c else 'fails'}**). Largest auto / best: {worst_best:.2f} (claim: at "
        f"most 1.2, **{'holds' if ok_best else 'fails'}**).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.quick:
        (HERE / "tamuna_auto.md").write_text(text)
    return 0


def _arm(job: tuple) -> tuple[float, float, tuple[int, float]]:
    return arm(*job)


if __name__ == "__main__":
    sys.exit(main())
