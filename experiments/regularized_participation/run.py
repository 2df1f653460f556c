"""Regularized client participation vs sampling with replacement: regenerate the claim.

Malinovsky, Horváth, Burlachenko, Richtárik, "Federated Learning with Regularized Client
Participation", arXiv 2302.03662. The claim checked here: at the same cohort size and the same
local and server stepsizes, FedAvg whose cohorts follow cyclic meta-epochs (every client exactly
once per meta-epoch, order reshuffled every meta-epoch; ``sampler=cyclic``) ends at a lower
optimality gap f(x) − f* than FedAvg whose cohorts are i.i.d. uniform draws with replacement
(``sampler=with_replacement``), as a mean over the seeds 0, 1, 2.

One command (from the project root)::

    .venv/bin/python experiments/regularized_participation/run.py [--a9a PATH] [--rounds N]
        [--quick] [--problems synthetic,a9a] [--set KEY=VALUE ...] [--jobs J] [--out DIR]

It runs every (problem, sampler, seed) with the inline engine from the Hydra experiment configs
``conf/experiment/regularized_participation_{synthetic,a9a}.yaml``, prints a table, writes
``results.md`` and ``figure.png`` (next to this file for the standard run; under
``outputs/experiments/regularized_participation/{quick,custom}/`` or ``--out`` when options change
the runs) and exits with status 1 when cyclic's mean final gap is not below
with_replacement's on some problem (2 when a run cannot start, e.g. a9a is missing).

The final gap of a run is fixed in advance as the mean of ``gap`` over the evaluations in the last
:data:`TAIL_FRACTION` of its rounds (the experiment configs evaluate at the end of every
meta-epoch, so that is the last 10 % of the meta-epochs); ``dist_sq`` is summarized the same way.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `fedsim` importable
    sys.path.insert(0, str(ROOT))

RUNS_DIR = ROOT / "outputs" / "experiments" / "regularized_participation"
SAMPLERS = ("cyclic", "with_replacement")
SEEDS = (0, 1, 2)
TAIL_FRACTION = 0.1
QUICK_META_EPOCHS = 50  # --quick: rounds = 50 meta-epochs


@dataclass(frozen=True)
class Problem:
    """One problem of the reproduction: its experiment config and how to show it."""

    key: str
    experiment: str
    title: str


PROBLEMS = {
    "synthetic": Problem(
        "synthetic",
        "regularized_participation_synthetic",
        "Synthetic(1,1) logistic regression, natural clients",
    ),
    "a9a": Problem(
        "a9a", "regularized_participation_a9a", "a9a logistic regression, sorted by label"
    ),
}


@dataclass(frozen=True)
class Job:
    """One run: problem, sampler, seed and every Hydra override that describes it."""

    problem: str
    sampler: str
    seed: int
    overrides: tuple[str, ...]
    outdir: Path


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation, min and max over seeds of one (problem, sampler)."""

    mean: float
    std: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        v = np.asarray(values, dtype=float)
        std = float(v.std(ddof=1)) if v.size > 1 else 0.0
        return cls(float(v.mean()), std, float(v.min()), float(v.max()))


# ----------------------------------------------------------------------------- running


def default_a9a() -> Path:
    """``$FEDSIM_DATA/a9a`` when set, else ``../shared/data/a9a`` next to the project root."""
    base = os.environ.get("FEDSIM_DATA")
    return Path(base) / "a9a" if base else ROOT.parent / "shared" / "data" / "a9a"


def base_overrides(
    problem: Problem, a9a: Path, rounds: int | None, extra: Sequence[str]
) -> list[str]:
    """The overrides every run of ``problem`` shares (the sampler and seed come on top)."""
    out = [f"+experiment={problem.experiment}", "engine=inline", "output.progress=false"]
    if problem.key == "a9a":
        out.append(f"task.path={a9a}")
    if rounds is not None:
        out.append(f"num_rounds={rounds}")
    return [*out, *extra]


def make_jobs(
    problems: Sequence[Problem],
    a9a: Path,
    rounds: dict[str, int | None],
    extra: Sequence[str],
    runs_dir: Path,
) -> list[Job]:
    jobs = []
    for p in problems:
        base = base_overrides(p, a9a, rounds[p.key], extra)
        for s in SAMPLERS:
            for seed in SEEDS:
                overrides = (*base, f"sampler={s}", f"seed={seed}")
                jobs.append(Job(p.key, s, seed, overrides, runs_dir / p.key / s / f"seed{seed}"))
    return jobs


def run_job(job: Job) -> tuple[Job, list[dict], float]:
    """Run one job (also in a worker process); return its metrics rows and wall time."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from fedsim.runner import quiet_flower, run_overrides

    quiet_flower()
    job.outdir.mkdir(parents=True, exist_ok=True)
    (job.outdir / "overrides.txt").write_text("\n".join(job.overrides) + "\n")
    t0 = time.perf_counter()
    rows = run_overrides(list(job.overrides), job.outdir)
    return job, rows, time.perf_counter() - t0


def config_of(overrides: Sequence[str]) -> dict:
    from fedsim.app import compose

    return compose(" ".join(shlex.quote(o) for o in overrides))


# ----------------------------------------------------------------------------- summarizing


def tail(rows: list[dict], key: str, fraction: float = TAIL_FRACTION) -> float:
    """Mean of ``key`` over the evaluated rounds in the last ``fraction`` of the run.

    Round 0 (the start point) never counts; at least the last evaluation always does.
    """
    evaluated = [r for r in rows if r["round"] and r["round"] > 0 and r.get(key) is not None]
    if not evaluated:
        raise ValueError(f"no evaluated rounds with {key!r}")
    last = evaluated[-1]["round"]
    start = last - fraction * last
    window = [r[key] for r in evaluated if r["round"] > start] or [evaluated[-1][key]]
    return float(np.mean(window))


def curves(runs: list[list[dict]], key: str = "gap") -> tuple[np.ndarray, np.ndarray]:
    """Rounds and a (seeds × evaluations) array of ``key`` for runs evaluated at the same rounds."""
    rounds = np.array([r["round"] for r in runs[0]], dtype=float)
    values = np.array([[r[key] for r in rows] for rows in runs], dtype=float)
    return rounds, values


def claim_failures(stats: dict[tuple[str, str], dict[str, Summary]]) -> list[str]:
    """The problems where cyclic's mean final gap is not below with_replacement's."""
    failed = []
    for p in dict.fromkeys(k for k, _ in stats):
        cyc, wr = stats[p, "cyclic"]["gap"].mean, stats[p, "with_replacement"]["gap"].mean
        if not cyc < wr:
            failed.append(f"{p}: cyclic {cyc:.3e} is not below with_replacement {wr:.3e}")
    return failed


def fmt(x: float) -> str:
    return f"{x:.3e}"


def settings_line(cfg: dict) -> str:
    m, c = cfg["num_clients"], cfg["sampler"]["cohort_size"]
    me = cfg["method"]
    return (
        f"M={m}, C={c}, R=M/C={m // c} rounds per meta-epoch, {cfg['num_rounds']} rounds "
        f"({cfg['num_rounds'] / (m // c):g} meta-epochs), eval every {cfg['eval_every']} rounds; "
        f"local solver {me['local_solver']} × {me['local_epochs']} epoch, "
        f"batch {me['batch_size']}, "
        f"γ={me['client_lr']:g}, η={me['server_lr']:g}; task {cfg['task']['name']} "
        f"(λ={cfg['task']['l2']:g}), partition {cfg['partition']['name']}"
    )


def results_table(stats: dict[tuple[str, str], dict[str, Summary]], markdown: bool) -> list[str]:
    head = (
        "problem",
        "sampler",
        "final gap mean ± std",
        "gap [min, max]",
        "final dist_sq mean ± std",
        "dist_sq [min, max]",
        "gap ratio wr/cyclic",
    )
    lines = []
    for (p, s), st in stats.items():
        g, d = st["gap"], st["dist_sq"]
        ratio = stats[p, "with_replacement"]["gap"].mean / stats[p, "cyclic"]["gap"].mean
        lines.append(
            (
                p,
                s,
                f"{fmt(g.mean)} ± {fmt(g.std)}",
                f"[{fmt(g.low)}, {fmt(g.high)}]",
                f"{fmt(d.mean)} ± {fmt(d.std)}",
                f"[{fmt(d.low)}, {fmt(d.high)}]",
                f"{ratio:.2f}",
            )
        )
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return out + ["| " + " | ".join(row) + " |" for row in lines]
    widths = [max(len(r[i]) for r in (head, *lines)) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (head, *lines)
    ]


def write_results(
    path: Path,
    stats: dict[tuple[str, str], dict[str, Summary]],
    configs: dict[str, dict],
    command: str,
    wall_s: float,
    failures: list[str],
) -> None:
    lines = [
        "# Regularized participation vs sampling with replacement: results",
        "",
        "Written by `experiments/regularized_participation/run.py`; do not edit by hand.",
        "",
        f"Command: `{command}` — wall time {wall_s:.0f} s.",
        "",
        f"Seeds {', '.join(map(str, SEEDS))}. Final value of a run = mean over its evaluations "
        f"(every `eval_every` rounds, see the settings) in the last {TAIL_FRACTION:.0%} of its "
        "rounds. "
        "± is the sample standard deviation over the seeds, [min, max] their range; the ratio is "
        "with_replacement's mean final gap over cyclic's.",
        "",
        *results_table(stats, markdown=True),
        "",
        "Settings (identical for both samplers):",
        "",
        *(f"- {p}: {settings_line(cfg)}" for p, cfg in configs.items()),
        "",
    ]
    if failures:
        lines += ["**Claim NOT reproduced** on:", "", *(f"- {f}" for f in failures), ""]
    else:
        lines += [
            "Claim reproduced on every problem: cyclic's mean final gap is below "
            "with_replacement's.",
            "",
        ]
    path.write_text("\n".join(lines))


def draw(
    path: Path,
    runs: dict[tuple[str, str], list[list[dict]]],
    configs: dict[str, dict],
) -> None:
    """One panel per problem: gap against rounds, mean over seeds with a min–max band."""
    from matplotlib.figure import Figure

    problems = list(dict.fromkeys(p for p, _ in runs))
    fig = Figure(figsize=(5.2 * len(problems), 4.0), layout="constrained")
    axes = fig.subplots(1, len(problems), squeeze=False)[0]
    colors = {"cyclic": "tab:blue", "with_replacement": "tab:red"}
    labels = {
        "cyclic": "cyclic meta-epochs (regularized)",
        "with_replacement": "i.i.d. with replacement",
    }
    for ax, p in zip(axes, problems, strict=True):
        for s in SAMPLERS:
            rounds, gaps = curves(runs[p, s])
            keep = rounds > 0
            rounds, gaps = rounds[keep], np.maximum(gaps[:, keep], 1e-16)
            ax.plot(rounds, gaps.mean(axis=0), color=colors[s], lw=1.3, label=labels[s])
            ax.fill_between(rounds, gaps.min(axis=0), gaps.max(axis=0), color=colors[s], alpha=0.2)
        cfg = configs[p]
        ax.set_yscale("log")
        ax.set_xlabel("server round")
        ax.set_ylabel("f(x) − f*")
        m, c = cfg["num_clients"], cfg["sampler"]["cohort_size"]
        ax.set_title(
            f"{PROBLEMS[p].title}\nM={m}, C={c}, γ={cfg['method']['client_lr']:g}",
            fontsize=9,
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"FedAvg, one local RR epoch: mean over seeds {', '.join(map(str, SEEDS))}, band = min–max",
        fontsize=10,
    )
    fig.savefig(path, dpi=130)


# ----------------------------------------------------------------------------- CLI


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a9a", type=Path, default=None, help="LIBSVM a9a file (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds for every problem")
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_META_EPOCHS} meta-epochs per problem (a smoke run, not the claim)",
    )
    ap.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated subset")
    ap.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for every run, e.g. --set method.client_lr=0.05",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs in parallel (default: the cores; 1: in-process)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where results.md, figure.png and runs/ go (default: results and figure in this "
        "folder for the standard run, raw runs in outputs/experiments/regularized_participation/"
        "standard; outputs/.../quick or outputs/.../custom when --quick, --rounds or --set)",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from fedsim.sweep import parallel_map

    args = parse(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    names = [n.strip() for n in args.problems.split(",") if n.strip()]
    bad = [n for n in names if n not in PROBLEMS]
    if bad or not names:
        print(f"unknown problem(s) {bad}; valid: {', '.join(PROBLEMS)}", file=sys.stderr)
        return 2
    problems = [PROBLEMS[n] for n in names]
    a9a = (args.a9a or default_a9a()).resolve()
    if "a9a" in names and not a9a.is_file():
        print(f"a9a not found at {a9a}; pass --a9a PATH", file=sys.stderr)
        return 2

    # Resolve each problem's config once (validates it and gives R for --quick).
    configs: dict[str, dict] = {}
    rounds: dict[str, int | None] = {}
    for p in problems:
        cfg = config_of(base_overrides(p, a9a, args.rounds, args.extra) + ["sampler=cyclic"])
        r = cfg["num_clients"] // cfg["sampler"]["cohort_size"]
        rounds[p.key] = QUICK_META_EPOCHS * r if args.quick else args.rounds
        if rounds[p.key] is not None:
            cfg = {**cfg, "num_rounds": rounds[p.key]}
        configs[p.key] = cfg

    standard = not (args.quick or args.rounds or args.extra)
    out = args.out or (HERE if standard else RUNS_DIR / ("quick" if args.quick else "custom"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # raw runs: never inside the repository's tracked folders, never mixed across variants
    runs_dir = RUNS_DIR / "standard" if out == HERE else out / "runs"
    jobs = make_jobs(problems, a9a, rounds, args.extra, runs_dir)

    t0 = time.perf_counter()
    runs: dict[tuple[str, str], list[list[dict]]] = {}
    for job, rows, wall in parallel_map(run_job, jobs, args.jobs):
        runs.setdefault((job.problem, job.sampler), []).append(rows)
        print(
            f"{job.problem:9s} {job.sampler:16s} seed {job.seed}: final gap "
            f"{fmt(tail(rows, 'gap'))}  dist_sq {fmt(tail(rows, 'dist_sq'))}  ({wall:.1f} s)",
            flush=True,
        )
    wall_s = time.perf_counter() - t0

    stats = {
        key: {k: Summary.of([tail(rows, k) for rows in seeds]) for k in ("gap", "dist_sq")}
        for key, seeds in runs.items()
    }
    failures = claim_failures(stats)
    command = "python experiments/regularized_participation/run.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print()
    print("\n".join(results_table(stats, markdown=False)))
    write_results(out / "results.md", stats, configs, command, wall_s, failures)
    draw(out / "figure.png", runs, configs)
    print(f"\nwrote {out / 'results.md'} and {out / 'figure.png'} ({wall_s:.0f} s of runs)")
    if failures:
        print("CLAIM NOT REPRODUCED on " + "; ".join(failures), file=sys.stderr)
        return 1
    print("claim reproduced: cyclic's mean final gap is below with_replacement's on every problem")
    return 0


if __name__ == "__main__":
    sys.exit(main())
