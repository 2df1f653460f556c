"""Local training, compression and partial participation: four comparisons, one command each.

Papers: Scaffnew/ProxSkip (arXiv 2202.09357), TAMUNA (arXiv 2302.09832), 5GCS (arXiv 2212.14370),
5GCS-CC and importance sampling (arXiv 2306.03240). Every run uses the inline engine and the
methods' default (``auto``) stepsizes unless a comparison says otherwise::

    .venv/bin/python experiments/local_training/run.py tamuna_vs_scaffnew
    .venv/bin/python experiments/local_training/run.py tamuna_s
    .venv/bin/python experiments/local_training/run.py fivegcs_cc
    .venv/bin/python experiments/local_training/run.py importance
    .venv/bin/python experiments/local_training/run.py gamma_tau     # 5GCS's default γτ

Options: ``--seeds 0,1,2``, ``--rounds N`` (scales every run), ``--a9a PATH``, ``--jobs J``,
``--out DIR``. Each command prints a table, writes ``<name>.png`` and ``<name>.md`` next to this
file (or under ``--out``) and exits with status 1 when the comparison's claim (its ``claim``
line below) fails on the mean over seeds.

The problems (Hydra experiment configs): ``conf/experiment/local_training_a9a.yaml``,
L2-regularized logistic regression on LIBSVM a9a (λ = 1e-3, κ ≈ 1900), sorted by label and cut
into 100 clients (heterogeneous: most clients see one label only), cohorts of 10; and
``conf/experiment/local_training_quadratic.yaml``, 100 quadratic clients with L_m spread
geometrically from 1 to 1000.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `fedsim` importable
    sys.path.insert(0, str(ROOT))

A9A = ("+experiment=local_training_a9a",)  # conf/experiment/local_training_a9a.yaml
QUADRATIC = ("+experiment=local_training_quadratic",)


@dataclass(frozen=True)
class Arm:
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    name: str
    title: str
    problem: tuple[str, ...]
    rounds: int
    arms: tuple[Arm, ...]
    axes: tuple[str, ...]  # x axes of the figure: round, up_floats, up_bits
    claim: str  # "A < B at LEVEL on AXIS": arm A needs less of AXIS than arm B to reach LEVEL
    level: float
    axis: str
    better: str
    worse: tuple[str, ...]
    extra: dict = field(default_factory=dict)


COMPARISONS = {
    c.name: c
    for c in (
        Comparison(
            "tamuna_vs_scaffnew",
            "(i) TAMUNA (c = 10, s = 5) vs Scaffnew (all 100 clients) vs FedAvg (c = 10)",
            A9A,
            3000,
            (
                Arm("TAMUNA", ("method=tamuna",)),
                # 100 clients x ~43 local steps per round: it converges in fewer rounds
                Arm("Scaffnew", ("method=scaffnew", "sampler=full", "num_rounds=1200")),
                Arm("FedAvg", ("method=fedavg", "method.local_steps=13")),
            ),
            ("round", "up_floats"),
            "TAMUNA reaches 1e-8·dist_sq(x0) with fewer uplink floats than Scaffnew; FedAvg "
            "(13 local steps ≈ TAMUNA's 1/p) never does",
            1e-8,
            "up_floats",
            "TAMUNA",
            ("Scaffnew", "FedAvg"),
        ),
        Comparison(
            "tamuna_s",
            "(ii) TAMUNA with s < c vs s = c (c = 10, p = 0.1 for all)",
            (*A9A, "method=tamuna", "method.p=0.1"),
            3000,
            (
                Arm("s = 10 (= c)", ("method.s=10",)),
                Arm("s = 5", ("method.s=5",)),
                Arm("s = 2", ("method.s=2",)),
            ),
            ("round", "up_floats"),
            "s = 5 reaches 1e-8·dist_sq(x0) with fewer uplink floats than s = c",
            1e-8,
            "up_floats",
            "s = 5",
            ("s = 10 (= c)",),
        ),
        Comparison(
            "fivegcs_cc",
            "(iii) 5GCS vs 5GCS-CC (compressed dual increments), in uplink bits",
            A9A,
            2500,
            (
                Arm("5GCS", ("method=fivegcs",)),
                Arm("5GCS-CC qsgd(4)", ("method=fivegcs_cc", "compressor=qsgd")),
                Arm("5GCS-CC natural", ("method=fivegcs_cc", "compressor=natural")),
                Arm(
                    "5GCS-CC rand_k(25%)",
                    ("method=fivegcs_cc", "compressor=rand_k", "compressor.ratio=0.25"),
                ),
            ),
            ("round", "up_bits"),
            "5GCS-CC with natural compression reaches 1e-8·dist_sq(x0) with fewer uplink bits "
            "than 5GCS",
            1e-8,
            "up_bits",
            "5GCS-CC natural",
            ("5GCS",),
        ),
        Comparison(
            "gamma_tau",
            "5GCS's default γτ: rounds to 1e-8 for γτ from 0.25 to 3 (the condition is γτ < 1)",
            (*A9A, "method=fivegcs"),
            2500,
            tuple(Arm(f"γτ = {v}", (f"method.gamma_tau={v}",)) for v in (0.25, 0.5, 0.9, 1.5, 3.0)),
            ("round",),
            "γτ = 0.9 reaches 1e-8·dist_sq(x0) in fewer rounds than γτ = 0.25 and 0.5",
            1e-8,
            "round",
            "γτ = 0.9",
            ("γτ = 0.25", "γτ = 0.5"),
        ),
        Comparison(
            "importance",
            "(iv) 5GCS: importance vs uniform cohorts, quadratic with L_max/L_min = 1000",
            QUADRATIC,
            1500,
            (
                Arm("uniform", ("sampler=uniform",)),
                Arm("importance ∝ √L_m", ("sampler=importance", "sampler.by=sqrt_smoothness")),
                Arm("importance ∝ L_m", ("sampler=importance", "sampler.by=smoothness")),
            ),
            ("round",),
            "importance ∝ √L_m reaches 1e-6·dist_sq(x0) in fewer rounds than uniform",
            1e-6,
            "round",
            "importance ∝ √L_m",
            ("uniform",),
        ),
    )
}


def run_one(overrides: Sequence[str]) -> dict[str, np.ndarray]:
    from fedsim.runner import quiet_flower, run_overrides

    quiet_flower()
    rows = run_overrides(["engine=inline", "output.progress=false", *overrides])
    out = {"round": np.array([r["round"] for r in rows], dtype=float)}
    out["rel"] = np.array([r["dist_sq"] for r in rows]) / rows[0]["dist_sq"]
    for key in ("up_floats", "up_bits"):
        out[key] = np.cumsum([r[key] or 0 for r in rows]).astype(float)
    return out


def needed(curve: dict[str, np.ndarray], level: float, axis: str) -> float:
    """How much of ``axis`` the run needed to reach ``rel <= level`` (inf if never)."""
    hit = np.flatnonzero(curve["rel"] <= level)
    return float(curve[axis][hit[0]]) if hit.size else float("inf")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(COMPARISONS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--a9a", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    comp = COMPARISONS[args.name]
    seeds = [int(s) for s in args.seeds.split(",")]
    rounds = args.rounds or comp.rounds
    every = max(1, rounds // 300)
    base = [*comp.problem, f"num_rounds={rounds}", f"eval_every={every}"]
    if args.a9a is not None:
        base.append(f"task.path={args.a9a.resolve()}")
    jobs = [(arm, seed) for arm in comp.arms for seed in seeds]

    from fedsim.errors import ConfigError

    try:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            curves = list(
                pool.map(run_one, [[*base, *arm.overrides, f"seed={s}"] for arm, s in jobs])
            )
    except ConfigError as err:
        print(f"cannot run {comp.name}: {err}", file=sys.stderr)
        return 2
    by_arm: dict[str, list[dict]] = {arm.label: [] for arm in comp.arms}
    for (arm, _), curve in zip(jobs, curves, strict=True):
        by_arm[arm.label].append(curve)

    lines = [
        f"# {comp.title}",
        "",
        f"`python experiments/local_training/run.py {comp.name}` — seeds {args.seeds}, "
        f"{rounds} rounds; `{' '.join(comp.problem)}`.",
        "",
        f"| arm | overrides | final dist_sq/dist_sq(x0) | {comp.axis} to {comp.level:g} |",
        "|---|---|---|---|",
    ]
    need = {}
    for arm in comp.arms:
        finals = [c["rel"][-1] for c in by_arm[arm.label]]
        reach = [needed(c, comp.level, comp.axis) for c in by_arm[arm.label]]
        need[arm.label] = float(np.mean(reach))
        shown = "never" if not np.isfinite(need[arm.label]) else f"{need[arm.label]:.4g}"
        if np.isfinite(need[arm.label]) and len(reach) > 1:
            shown += f" ± {np.std(reach):.2g}"
        lines.append(
            f"| {arm.label} | `{' '.join(arm.overrides)}` | {np.mean(finals):.2e} | {shown} |"
        )
    ok = all(need[comp.better] < need[w] for w in comp.worse)
    lines += ["", f"Claim: {comp.claim}. **{'holds' if ok else 'FAILS'}**."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{comp.name}.md").write_text(text)
    figure(comp, by_arm, args.out / f"{comp.name}.png")
    return 0 if ok else 1


def figure(comp: Comparison, by_arm: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"round": "rounds", "up_floats": "cumulative uplink floats", "up_bits": "uplink bits"}
    fig, axes = plt.subplots(1, len(comp.axes), figsize=(5.2 * len(comp.axes), 3.8), squeeze=False)
    for ax, axis in zip(axes[0], comp.axes, strict=True):
        for label, curves in by_arm.items():
            x = curves[0][axis]
            rel = np.array([c["rel"] for c in curves])
            line = ax.semilogy(x, np.exp(np.log(rel).mean(axis=0)), label=label)[0]
            if len(curves) > 1:
                ax.fill_between(
                    x, rel.min(axis=0), rel.max(axis=0), alpha=0.2, lw=0, color=line.get_color()
                )
        ax.axhline(comp.level, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(labels[axis])
        ax.set_ylabel("dist_sq / dist_sq(x0)")
        ax.set_ylim(bottom=max(1e-16, ax.get_ylim()[0]))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(comp.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
