"""BiasedSGD on the non-convex logistic regression of arXiv 2305.16296, on a9a and w8a.

    python experiments/biased_sgd/run.py            # run everything (about 25 min on one core)
    python experiments/biased_sgd/run.py --plot     # redraw figures and tables from results.json

The authors' set-up (their ``sgd-ind.py``): one node holding the whole data set (here
``num_clients=1``), ``f(x) = (1/m) Σ_i log(1 + exp(−y_i a_iᵀx)) + λ Σ_j x_j²/(1 + x_j²)``,
``λ = 1`` (``task.nonconvex=1 task.l2=0``), ``x⁰ ~ N(0, I)`` drawn once per data set
(``task.x0_scale=1``, seed 0), ``K = 5000`` iterations, ‖∇f‖² every 10 iterations.

Runs (every one ``method=biased_sgd``):

1. the theory stepsize (``lr=auto``, factor 1), uniform ``p ∈ {0.01, 0.1, 0.5}``, biased and
   unbiased;
2. the factor grid ``2^0 … 2^20`` at ``p = 0.01`` (the authors' ``biased_unbiased_comparison``
   preset), biased and unbiased; the same with importance sampling (``batch_prop = 0.01``) on
   the even powers ``2^0, 2^2, …, 2^20``;
3. for each (data set, sampling, estimator, target): the grid's best factor, the one that reaches
   ``‖∇f‖² ≤ target·‖∇f(x⁰)‖²`` and stays below it to the end in the fewest iterations (then the
   lowest final value), for the targets ``1e-4`` and ``1e-6``.

Writes ``results.json`` (every curve), ``theory.png``, ``tuned.png``, ``importance.png`` and the
tables between the markers of ``README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

DATA = Path(os.environ.get("FEDSIM_DATA") or ROOT.parent / "shared" / "data")
DATASETS = ("a9a", "w8a")
PROBS = (0.01, 0.1, 0.5)
FACTORS = tuple(2**k for k in range(21))
TUNE_P = 0.01
ITERS = 5000
EVERY = 10
TARGETS = (1e-4, 1e-6)  # relative to ‖∇f(x⁰)‖²
RESULTS = HERE / "results.json"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def overrides(dataset: str, estimator: str, sampling: str, p: float, factor: float) -> list[str]:
    """The Hydra overrides of one run."""
    prob = [f"method.p={p}"] if sampling == "uniform" else [f"method.batch_prop={p}"]
    return [
        "engine=inline",
        "method=biased_sgd",
        f"method.estimator={estimator}",
        f"method.sampling={sampling}",
        *prob,
        f"method.lr_factor={factor}",
        f"method.horizon={ITERS}",
        "task=logreg_libsvm",
        f"task.path={DATA / dataset}",
        "task.nonconvex=1",
        "task.l2=0",
        "task.x0_scale=1",
        "num_clients=1",
        "partition=iid",
        "sampler=full",
        f"num_rounds={ITERS}",
        f"eval_every={EVERY}",
        "seed=0",
        "max_loss_ratio=null",
        "output.progress=false",
        "output.plot=false",
    ]


def one_run(dataset: str, estimator: str, sampling: str, p: float, factor: float) -> dict:
    """Run one configuration; its curve ‖∇f(x^t)‖² (NaN from a blow-up on) and stepsize."""
    from fedsim.app import compose
    from fedsim.runner import run

    cfg = compose(" ".join(overrides(dataset, estimator, sampling, p, factor)))
    start = time.time()
    status = "completed"
    try:
        rows = run(cfg, None)
    except Exception as err:  # noqa: BLE001 - a diverged run is a result, not a crash
        rows, status = list(getattr(err, "rows", [])), f"stopped: {err}"
    curve = [float(r["grad_norm_sq"]) for r in rows]
    curve += [math.nan] * (ITERS // EVERY + 1 - len(curve))
    return {
        "dataset": dataset,
        "estimator": estimator,
        "sampling": sampling,
        "p": p,
        "factor": factor,
        "lr": float(cfg["method"]["lr"]),
        "status": status,
        "seconds": round(time.time() - start, 1),
        "grad_norm_sq": [float(f"{v:.6g}") for v in curve],
    }


def plan() -> list[tuple[str, str, str, float, float]]:
    """Every (dataset, estimator, sampling, p, factor) of the experiment, the most needed first
    (the theory stepsizes, then the even powers of the grid, then the odd ones), so that a run
    cut short still gives every table, on a coarser grid."""
    ests = ("ind_biased", "ind_unbiased")
    runs = [(ds, est, "uniform", p, 1) for ds in DATASETS for est in ests for p in PROBS]
    for sampling, factors in (("uniform", FACTORS[2::2]), ("importance", FACTORS[::2])):
        runs += [(ds, e, sampling, TUNE_P, f) for ds in DATASETS for f in factors for e in ests]
    runs += [(ds, e, "uniform", TUNE_P, f) for ds in DATASETS for f in FACTORS[1::2] for e in ests]
    return runs


def key(r: dict) -> tuple:
    return (r["dataset"], r["estimator"], r["sampling"], r["p"], r["factor"])


def run_all() -> list[dict]:
    done = {key(r): r for r in json.loads(RESULTS.read_text())} if RESULTS.exists() else {}
    todo = [c for c in plan() if c not in done]
    for i, c in enumerate(todo):
        r = one_run(*c)
        done[key(r)] = r
        print(f"[{i + 1}/{len(todo)}] {c} lr={r['lr']:.3g} {r['seconds']} s "
              f"final={r['grad_norm_sq'][-1]:.3g}", flush=True)  # fmt: skip
        RESULTS.write_text(json.dumps(list(done.values())))
    return list(done.values())


# --------------------------------------------------------------------------- analysis


def hits(curve: list[float], level: float) -> int | None:
    """The first logged iteration from which ‖∇f‖² stays ≤ level to the end of the run, or
    None: a run that only dips below the level (the chaotic runs of very large stepsizes) has
    not reached it."""
    above = [j for j, v in enumerate(curve) if not v <= level]
    if not above:
        return 0
    j = above[-1] + 1
    return j * EVERY if j < len(curve) else None


def final(curve: list[float]) -> float:
    v = curve[-1]
    return math.inf if not math.isfinite(v) else v


def grid_of(results: list[dict], ds: str, sampling: str) -> list[dict]:
    """The runs at p = TUNE_P of both estimators on the factors that both have (the same grid
    for the two)."""
    runs = [
        r
        for r in results
        if (r["dataset"], r["sampling"], r["p"]) == (ds, sampling, TUNE_P)
        and (sampling == "importance" or r["factor"] in FACTORS)
    ]
    both = set.intersection(
        *(
            {r["factor"] for r in runs if r["estimator"] == e}
            for e in ("ind_biased", "ind_unbiased")
        )
    )
    return [r for r in runs if r["factor"] in both]


def best(results: list[dict], ds: str, est: str, sampling: str, target: float) -> dict | None:
    """The grid's best factor at p = TUNE_P: fewest iterations until ‖∇f‖² stays below
    ``target``·‖∇f(x⁰)‖² (:func:`hits`), then the lowest final ‖∇f‖²."""
    grid = [r for r in grid_of(results, ds, sampling) if r["estimator"] == est]
    if not grid:
        return None
    level = target * grid[0]["grad_norm_sq"][0]

    def score(r: dict) -> tuple:
        t = hits(r["grad_norm_sq"], level)
        return (t if t is not None else math.inf, final(r["grad_norm_sq"]))

    return min(grid, key=score)


def grid_text(results: list[dict], ds: str, sampling: str) -> str:
    powers = sorted({int(math.log2(r["factor"])) for r in grid_of(results, ds, sampling)})
    step = {b - a for a, b in zip(powers, powers[1:], strict=False)}
    if len(step) == 1:
        return f"2^{powers[0]}…2^{powers[-1]} step 2^{step.pop()}"
    return ", ".join(f"2^{k}" for k in powers)


def pick(results: list[dict], **want) -> dict:
    return next(r for r in results if all(r[k] == v for k, v in want.items()))


def power(r: dict) -> str:
    return f"2^{int(math.log2(r['factor']))}"


def tables(results: list[dict]) -> str:
    out = ["### Theory stepsize (factor 1), uniform p", ""]
    out += [
        "| data set | estimator | p | γ | ‖∇f(x⁰)‖² | ‖∇f(x⁵⁰⁰⁰)‖² | drop |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in DATASETS:
        for est in ("ind_biased", "ind_unbiased"):
            for p in PROBS:
                r = pick(results, dataset=ds, estimator=est, sampling="uniform", p=p, factor=1)
                g = r["grad_norm_sq"]
                out.append(
                    f"| {ds} | {est} | {p} | {r['lr']:.3g} | {g[0]:.3g} | {final(g):.3g} | "
                    f"{g[0] / final(g):.3g} |"
                )
    out += ["", f"### Best factor of the grid at p = {TUNE_P}, per target", ""]
    out += [
        "| data set | sampling | factor grid | target ‖∇f‖²/‖∇f(x⁰)‖² | ind_biased: factor, γ, "
        "iterations | ind_unbiased: factor, γ, iterations | biased first? |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in DATASETS:
        for sampling in ("uniform", "importance"):
            if not grid_of(results, ds, sampling):
                continue
            for target in TARGETS:
                cells, its = [], {}
                for est in ("ind_biased", "ind_unbiased"):
                    r = best(results, ds, est, sampling, target)
                    assert r is not None
                    t = hits(r["grad_norm_sq"], target * r["grad_norm_sq"][0])
                    its[est] = math.inf if t is None else t
                    shown = "not reached" if t is None else str(t)
                    cells.append(f"{power(r)}, {r['lr']:.3g}, {shown}")
                b, u = its["ind_biased"], its["ind_unbiased"]
                verdict = "yes" if b < u else ("tie" if b == u else "no")
                grid = grid_text(results, ds, sampling)
                row = f"| {ds} | {sampling} | {grid} | {target:g} | {cells[0]} | {cells[1]} | "
                out.append(row + f"{verdict} |")
    return "\n".join(out) + "\n"


def figures(results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [j * EVERY for j in range(ITERS // EVERY + 1)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for ax, ds in zip(axes, DATASETS, strict=True):
        for p in PROBS:
            for est, style in (("ind_biased", "-"), ("ind_unbiased", ":")):
                r = pick(results, dataset=ds, estimator=est, sampling="uniform", p=p, factor=1)
                ax.semilogy(its, r["grad_norm_sq"], style, label=f"{est} p={p}")
        ax.set(title=f"{ds}: theory stepsize", xlabel="iteration", ylabel="‖∇f(x)‖²")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "theory.png", dpi=110)
    for sampling, name in (("uniform", "tuned.png"), ("importance", "importance.png")):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, ds in zip(axes, DATASETS, strict=True):
            if not grid_of(results, ds, sampling):
                ax.set_title(f"{ds}: {sampling} (not run)")
                continue
            for est, color in (("ind_biased", "C0"), ("ind_unbiased", "C3")):
                theory = pick(results, dataset=ds, estimator=est, sampling=sampling, p=TUNE_P,
                              factor=1)  # fmt: skip
                tuned = best(results, ds, est, sampling, TARGETS[-1])
                ax.semilogy(its, theory["grad_norm_sq"], ":", color=color, label=f"{est} theory")
                f = int(math.log2(tuned["factor"]))
                ax.semilogy(its, tuned["grad_norm_sq"], "-", color=color, label=f"{est} 2^{f}")
            if sampling == "importance":
                for est, color in (("ind_biased", "C2"), ("ind_unbiased", "C1")):
                    r = best(results, ds, est, "uniform", TARGETS[-1])
                    f = int(math.log2(r["factor"]))
                    ax.semilogy(its, r["grad_norm_sq"], "--", color=color,
                                label=f"{est} uniform 2^{f}")  # fmt: skip
            for target in TARGETS:
                ax.axhline(target * theory["grad_norm_sq"][0], color="grey", lw=0.5)
            what = f"p={TUNE_P}" if sampling == "uniform" else f"importance b={TUNE_P}·m"
            ax.set(title=f"{ds}: {what}", xlabel="iteration", ylabel="‖∇f(x)‖²")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(HERE / name, dpi=110)


def write_readme(results: list[dict]) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(f"{head}{BEGIN}\n{tables(results)}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plot", action="store_true", help="only redraw from results.json")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if args.plot else run_all()
    figures(results)
    write_readme(results)
    print(tables(results))


if __name__ == "__main__":
    main()
