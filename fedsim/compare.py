"""Compare methods side by side: arms × seeds, a table, a claim check and a figure.

The experiment scripts (``experiments/*/run.py``) describe each comparison as a
:class:`Comparison` of :class:`Arm` (Hydra overrides on a common problem) and call :func:`main`.
Every run uses the inline engine, the runs side by side on the cores
(:func:`fedsim.sweep.parallel_map`, ``--jobs``); curves are the metric relative to round 0
(``dist_sq``) or absolute (``gap``), against rounds, cumulative uplink floats or bits.

A claim is either ``reach`` (arm ``better`` needs less of ``axis`` to reach ``level`` than each of
``worse``) or ``final`` (its mean final value is lower).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np


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
    metric: str = "dist_sq"  # dist_sq (relative to round 0) | gap (f − f*) | loss
    seeds: tuple[int, ...] = (0, 1, 2)
    kind: str = "reach"  # reach | final
    rounds_per_point: int = 300  # evaluate about this many times per run


def run_one(overrides: Sequence[str], metric: str = "dist_sq") -> dict[str, np.ndarray]:
    """One inline run: its curves (``rel``: the metric, relative to round 0 for dist_sq)."""
    from fedsim.runner import quiet_flower, run_overrides

    quiet_flower()
    rows = run_overrides(["engine=inline", "output.progress=false", *overrides])
    out = {"round": np.array([r["round"] for r in rows], dtype=float)}
    values = np.array([np.nan if r[metric] is None else r[metric] for r in rows], dtype=float)
    out["rel"] = values / values[0] if metric == "dist_sq" else values
    for key in ("up_floats", "up_bits"):
        out[key] = np.cumsum([r[key] or 0 for r in rows]).astype(float)
    return out


def needed(curve: dict[str, np.ndarray], level: float, axis: str) -> float:
    """How much of ``axis`` the run needed to reach ``rel <= level`` (inf if never)."""
    hit = np.flatnonzero(curve["rel"] <= level)
    return float(curve[axis][hit[0]]) if hit.size else float("inf")


def main(
    comparisons: dict[str, Comparison], script: str, out: Path, argv: Sequence[str] | None = None
) -> int:
    """The command line of an experiment script: ``NAME [--seeds] [--rounds] [--set K=V]...``.

    Prints the table, writes ``NAME.md`` and ``NAME.png`` under ``--out`` (default ``out``) and
    returns 0 when the claim holds, 1 when it fails, 2 when a run cannot start.
    """
    parser = argparse.ArgumentParser(prog=script)
    parser.add_argument("name", choices=sorted(comparisons))
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the comparison's)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra Hydra override for every run, e.g. task.path=/data/a9a",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="processes (default: the cores; 1: this one)"
    )
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    comp = comparisons[args.name]
    seeds = [int(s) for s in (args.seeds or ",".join(map(str, comp.seeds))).split(",")]
    rounds = args.rounds or comp.rounds
    every = max(1, rounds // comp.rounds_per_point)
    base = [*comp.problem, f"num_rounds={rounds}", f"eval_every={every}", *args.set]
    jobs = [(arm, seed) for arm in comp.arms for seed in seeds]

    from fedsim.errors import ConfigError
    from fedsim.sweep import parallel_map

    try:
        runs = [[*base, *arm.overrides, f"seed={s}"] for arm, s in jobs]
        curves = list(parallel_map(partial(run_one, metric=comp.metric), runs, args.jobs))
    except ConfigError as err:
        print(f"cannot run {comp.name}: {err}", file=sys.stderr)
        return 2
    by_arm: dict[str, list[dict]] = {arm.label: [] for arm in comp.arms}
    for (arm, _), curve in zip(jobs, curves, strict=True):
        by_arm[arm.label].append(curve)

    shown_metric = {
        "dist_sq": "final dist_sq/dist_sq(x0)",
        "gap": "final f − f*",
        "loss": "final loss",
    }.get(comp.metric, f"final {comp.metric}")
    last = "" if comp.kind == "final" else f" | {comp.axis} to {comp.level:g}"
    lines = [
        f"# {comp.title}",
        "",
        f"`python {script} {comp.name}` — seeds {','.join(map(str, seeds))}, {rounds} rounds; "
        f"`{' '.join(comp.problem)}`.",
        "",
        f"| arm | overrides | {shown_metric}{last} |",
        "|---|---|---|" + ("" if comp.kind == "final" else "---|"),
    ]
    score = {}
    for arm in comp.arms:
        finals = np.array([c["rel"][-1] for c in by_arm[arm.label]])
        final = f"{np.mean(finals):.3e}" + (f" ± {np.std(finals):.2e}" if len(finals) > 1 else "")
        if comp.kind == "final":
            score[arm.label] = float(np.mean(finals)) if np.all(np.isfinite(finals)) else np.inf
            lines.append(f"| {arm.label} | `{' '.join(arm.overrides)}` | {final} |")
            continue
        reach = [needed(c, comp.level, comp.axis) for c in by_arm[arm.label]]
        score[arm.label] = float(np.mean(reach))
        shown = "never" if not np.isfinite(score[arm.label]) else f"{score[arm.label]:.4g}"
        if np.isfinite(score[arm.label]) and len(reach) > 1:
            shown += f" ± {np.std(reach):.2g}"
        lines.append(f"| {arm.label} | `{' '.join(arm.overrides)}` | {final} | {shown} |")
    ok = all(score[comp.better] < score[w] for w in comp.worse)
    lines += ["", f"Claim: {comp.claim}. **{'holds' if ok else 'FAILS'}**."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{comp.name}.md").write_text(text)
    figure(comp, by_arm, args.out / f"{comp.name}.png")
    return 0 if ok else 1


def figure(comp: Comparison, by_arm: dict[str, list[dict]], path: Path) -> None:
    """Curves against each of ``comp.axes``: dist_sq as the geometric mean with a min–max band
    over seeds, gap as the mean with a ± std band; log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"round": "rounds", "up_floats": "cumulative uplink floats", "up_bits": "uplink bits"}
    fig, axes = plt.subplots(1, len(comp.axes), figsize=(5.2 * len(comp.axes), 3.8), squeeze=False)
    for ax, axis in zip(axes[0], comp.axes, strict=True):
        for label, curves in by_arm.items():
            x = curves[0][axis]
            values = np.array([c["rel"] for c in curves])
            if comp.metric == "dist_sq":
                mid = np.exp(np.log(values).mean(axis=0))
                low, high = values.min(axis=0), values.max(axis=0)
            else:
                mid, std = values.mean(axis=0), values.std(axis=0)
                low, high = np.maximum(mid - std, mid * 1e-3), mid + std
            line = ax.semilogy(x, mid, label=label)[0]
            if len(curves) > 1:
                ax.fill_between(x, low, high, alpha=0.2, lw=0, color=line.get_color())
        if comp.kind == "reach":
            ax.axhline(comp.level, color="gray", lw=0.8, ls=":")
        ax.set_xlabel(labels[axis])
        ylabels = {"dist_sq": "dist_sq / dist_sq(x0)", "gap": "f(x) − f*", "loss": "f(x)"}
        ax.set_ylabel(ylabels.get(comp.metric, comp.metric))
        ax.set_ylim(bottom=max(1e-16, ax.get_ylim()[0]))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(comp.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
