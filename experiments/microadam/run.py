"""MicroAdam vs AdamW (and SGD with momentum) as the local optimizer: regenerate the comparison.

Modoranu, Safaryan, Malinovsky, Kurtic, Robert, Richtárik, Alistarh, "MicroAdam: Accurate
Adaptive Optimization with Low Space Overhead and Provable Convergence", arXiv 2405.15593. The
must-show checked here: **at each optimizer's best learning rate, MicroAdam's final training loss
is within 5 % of AdamW's** (``L_microadam ≤ 1.05 · L_adamw``, means over seeds 0, 1, 2), on
``task=finetune_digits`` and on ``task=mlp_digits``, with MicroAdam's state at ≤ 1 byte per
parameter against AdamW's 8.

Protocol (fixed before the runs; README.md says why): FedAvg with **one client holding all the
training rows** (``num_clients=1 sampler=full partition=iid server_lr=1``), so a round is
``local_steps`` optimizer steps and the server's ``x ← x − Δ`` hands the client its own iterate
back: the run is one optimizer trajectory, cut into rounds, whose state crosses the rounds in the
node's ``context.state`` (``reset_optimizer=false``). Minibatches of 32 (``local_solver=sgd``),
10 steps per round, :data:`ROUNDS` rounds, float32 models (``task.dtype=float32``). The learning
rate of each optimizer is picked from :data:`GRIDS` by its mean final loss over the seeds. The
final training loss of a run is the mean of the centralized training loss over the last
:data:`TAIL_FRACTION` of its rounds. MicroAdam runs with the paper's defaults m = 10, k = 1 %
(and q = 64, the Llama-2 script's bucket); ``microadam_k10`` (k = 10 %) is a diagnostic row, not
part of the must-show.

One command (from the project root)::

    .venv/bin/python experiments/microadam/run.py [--jobs J] [--rounds N] [--out DIR]

It prints the tables, writes ``results.md`` and ``loss_curves.png`` next to this file for the
standard run (raw runs under ``outputs/experiments/microadam/standard/``; with ``--rounds`` or
``--out`` everything goes to ``outputs/experiments/microadam/custom/`` or ``DIR``) and exits with
status 1 when the must-show does not hold on some task.
"""

from __future__ import annotations

import argparse
import os
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

RUNS_DIR = ROOT / "outputs" / "experiments" / "microadam"
TASKS = {
    "finetune_digits": "finetune_digits (64→64→64→5, pretrained on digits 0–4, tuned on 5–9)",
    "mlp_digits": "mlp_digits (64→32→10, random init, all ten digits)",
}
SEEDS = (0, 1, 2)
ROUNDS = 30
LOCAL_STEPS = 10
BATCH = 32
TAIL_FRACTION = 0.1
CLAIM_RATIO = 1.05
ADAM_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# name -> (method overrides, learning-rate grid)
OPTIMIZERS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "adamw": (("method.local_optimizer=adamw",), ADAM_GRID),
    "microadam": (("method.local_optimizer=microadam",), ADAM_GRID),
    "sgdm": (("method.local_optimizer=sgdm", "method.momentum=0.9"), (0.01, 0.03, 0.1, 0.3, 1.0)),
    "microadam_k10": (
        ("method.local_optimizer=microadam", "method.microadam_density=0.1"),
        ADAM_GRID,
    ),
}
MICROADAM = ("method.microadam_window=10", "method.microadam_bucket=64")
LABELS = {
    "adamw": "AdamW",
    "microadam": "MicroAdam (m=10, k=1%)",
    "sgdm": "SGD + momentum 0.9",
    "microadam_k10": "MicroAdam (m=10, k=10%), diagnostic",
}


@dataclass(frozen=True)
class Job:
    task: str
    optimizer: str
    lr: float
    seed: int
    overrides: tuple[str, ...]
    outdir: Path


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation over the seeds."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """A seed that diverged (non-finite final loss) makes the mean +inf."""
        v = np.asarray(values, dtype=float)
        if not np.all(np.isfinite(v)):
            return cls(float("inf"), float("nan"))
        return cls(float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0)


def overrides(task: str, optimizer: str, lr: float, seed: int, rounds: int) -> tuple[str, ...]:
    """Every Hydra override of one run (the protocol of the module docstring)."""
    return (
        "method=fedavg",
        f"task={task}",
        "task.dtype=float32",
        "num_clients=1",
        "partition=iid",
        "sampler=full",
        "engine=inline",
        "method.local_solver=sgd",
        f"method.batch_size={BATCH}",
        f"method.local_steps={LOCAL_STEPS}",
        "method.server_lr=1.0",
        *OPTIMIZERS[optimizer][0],
        *MICROADAM,
        f"method.client_lr={lr:g}",
        f"num_rounds={rounds}",
        "eval_every=1",
        f"seed={seed}",
        "output.progress=false",
        "output.plot=false",
    )


def make_jobs(rounds: int, runs_dir: Path) -> list[Job]:
    jobs = []
    for task in TASKS:
        for name, (_, grid) in OPTIMIZERS.items():
            for lr in grid:
                for seed in SEEDS:
                    out = runs_dir / task / name / f"lr{lr:g}" / f"seed{seed}"
                    jobs.append(
                        Job(task, name, lr, seed, overrides(task, name, lr, seed, rounds), out)
                    )
    return jobs


def run_job(job: Job) -> tuple[Job, list[float], float]:
    """Run one job (in a worker process); return its loss after every round and its wall time."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import torch

    from fedsim.runner import quiet_flower, run_overrides

    torch.set_num_threads(1)
    quiet_flower()
    job.outdir.mkdir(parents=True, exist_ok=True)
    (job.outdir / "overrides.txt").write_text("\n".join(job.overrides) + "\n")
    t0 = time.perf_counter()
    try:
        rows = run_overrides(list(job.overrides), job.outdir)
    except Exception as err:  # noqa: BLE001 - only divergence is a result, the rest re-raised
        if getattr(err, "status", None) != "diverged":
            raise RuntimeError(f"{job.outdir}: {err}") from None  # picklable across processes
        rows = list(getattr(err, "rows", []))
    losses = [float(r["loss"]) for r in rows]
    rounds = int(dict(o.split("=", 1) for o in job.overrides)["num_rounds"])
    losses += [float("inf")] * (rounds + 1 - len(losses))  # diverged: +inf from there on
    return job, losses, time.perf_counter() - t0


def final(losses: Sequence[float]) -> float:
    """Mean training loss over the rounds in the last :data:`TAIL_FRACTION` (round 0 excluded;
    a diverged run's non-finite loss stays non-finite)."""
    after = np.asarray(losses[1:], dtype=float)
    if after.size == 0:
        return float("nan")
    k = max(1, int(round(TAIL_FRACTION * after.size)))
    return float(after[-k:].mean())


def state_per_param(task_name: str) -> dict[str, tuple[float, float]]:
    """Per optimizer: (bytes of the state tensors, bytes kept in ``context.state``) per
    parameter, after one step of the rule a run's client builds, on the task's float32 model
    with a real minibatch gradient; ``"dim"``: (parameters, training rows)."""
    import torch

    from fedsim.app import compose
    from fedsim.blocks.local_optimizer import LocalOptimizer, dump_state, state_bytes
    from fedsim.build import task_of

    out = {}
    for name in OPTIMIZERS:
        cfg = compose(" ".join(overrides(task_name, name, 1e-3, 0, 1)))
        task = task_of(cfg)
        rule = LocalOptimizer.from_method(cfg["method"])
        p = torch.nn.Parameter(torch.tensor(task.x0, dtype=torch.float32))
        opt = rule.build([p])
        g = task.clients[0].grad(task.x0, np.arange(BATCH))
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        out[name] = (state_bytes(opt) / task.dim, len(dump_state(opt)) / task.dim)
        out["dim"] = (float(task.dim), float(task.clients[0].num_samples))
    return out


# ----------------------------------------------------------------------------- summarizing


def pick_best(
    finals: dict[tuple[str, str, float], list[float]],
) -> dict[tuple[str, str], tuple[float, Summary]]:
    """Per (task, optimizer): the learning rate of the lowest mean final loss, and its summary
    (non-finite runs make a learning rate lose)."""
    best: dict[tuple[str, str], tuple[float, Summary]] = {}
    for (task, name, lr), values in finals.items():
        s = Summary.of(values)
        held = best.get((task, name))
        if held is None or s.mean < held[1].mean:
            best[task, name] = (lr, s)
    return best


def claim(best: dict[tuple[str, str], tuple[float, Summary]]) -> dict[str, tuple[float, bool]]:
    """Per task: MicroAdam's best mean final loss over AdamW's, and whether it is ≤ 1.05."""
    out = {}
    for task in TASKS:
        ratio = best[task, "microadam"][1].mean / best[task, "adamw"][1].mean
        out[task] = (ratio, bool(ratio <= CLAIM_RATIO))
    return out


def fmt(x: float) -> str:
    return f"{x:.4g}" if np.isfinite(x) else "diverged"


def table(rows: list[tuple[str, ...]], head: tuple[str, ...], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (head, *rows)
    ]


def best_rows(best, memory, grids) -> list[tuple[str, ...]]:
    rows = []
    for task in TASKS:
        ref = best[task, "adamw"][1].mean
        for name in OPTIMIZERS:
            lr, s = best[task, name]
            grid = grids[name]
            edge = " (grid edge)" if lr in (grid[0], grid[-1]) else ""
            state, kept = memory[task][name]
            rows.append(
                (
                    task,
                    LABELS[name],
                    f"{lr:g}{edge}",
                    f"{fmt(s.mean)} ± {fmt(s.std)}" if np.isfinite(s.mean) else "diverged",
                    f"{s.mean / ref:.2f}",
                    f"{state:.3f}",
                    f"{kept:.3f}",
                )
            )
    return rows


BEST_HEAD = (
    "task",
    "optimizer",
    "best lr",
    "final train loss (mean ± std)",
    "/ AdamW",
    "state B/param",
    "kept B/param",
)


def grid_rows(finals) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    lrs = sorted({lr for *_, lr in finals})
    head = ("task", "optimizer", *(f"lr={lr:g}" for lr in lrs))
    rows = []
    for task in TASKS:
        for name in OPTIMIZERS:
            cells = []
            for lr in lrs:
                values = finals.get((task, name, lr))
                cells.append("" if values is None else fmt(Summary.of(values).mean))
            rows.append((task, name, *cells))
    return head, rows


def write_results(path, best, finals, memory, verdict, command, wall_s, rounds, grids) -> None:
    ghead, grows = grid_rows(finals)
    lines = [
        "# MicroAdam vs AdamW as the local optimizer: results",
        "",
        "Written by `experiments/microadam/run.py`; do not edit by hand.",
        "",
        f"Command: `{command}` — wall time {wall_s:.0f} s.",
        "",
        f"One client with all the training rows, `sampler=full`, `server_lr=1` (one optimizer "
        f"trajectory cut into rounds, its state kept in `context.state` across rounds); "
        f"{rounds} rounds × {LOCAL_STEPS} steps, minibatch {BATCH}, float32. Seeds "
        f"{', '.join(map(str, SEEDS))}. Final training loss of a run = mean of the training loss "
        f"over its last {TAIL_FRACTION:.0%} of rounds; ± is the sample standard deviation over "
        "the seeds. Best lr = the grid value of lowest mean final loss. State B/param = bytes of "
        "the optimizer's state tensors per parameter (`numel × element_size`); kept B/param = "
        "the `torch.save` bytes the client keeps in `context.state`.",
        "",
        *(
            f"- {t}: {int(memory[t]['dim'][0]):,} parameters, {int(memory[t]['dim'][1])} "
            f"training rows"
            for t in TASKS
        ),
        "",
        "## At each optimizer's best learning rate",
        "",
        *table(best_rows(best, memory, grids), BEST_HEAD, markdown=True),
        "",
        f"## Must-show: MicroAdam (k = 1 %) within {CLAIM_RATIO - 1:.0%} of AdamW",
        "",
    ]
    for task, (ratio, ok) in verdict.items():
        lines.append(
            f"- {task}: MicroAdam / AdamW = {ratio:.2f} — "
            + ("**holds**" if ok else f"**does NOT hold** (needs ≤ {CLAIM_RATIO})")
        )
    lines += ["", "## Learning-rate grid (mean final training loss over the seeds)", ""]
    lines += [*table(grows, ghead, markdown=True), ""]
    path.write_text("\n".join(lines))


def draw(path, curves, best, rounds) -> None:
    """One panel per task: training loss against local steps, each optimizer at its best lr,
    mean over seeds and a min–max band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.4 * len(TASKS), 4.0), layout="constrained")
    axes = fig.subplots(1, len(TASKS), squeeze=False)[0]
    colors = {
        "adamw": "tab:blue",
        "microadam": "tab:red",
        "sgdm": "tab:green",
        "microadam_k10": "tab:orange",
    }
    steps = np.arange(rounds + 1) * LOCAL_STEPS
    for ax, task in zip(axes, TASKS, strict=True):
        for name in OPTIMIZERS:
            lr, _ = best[task, name]
            values = np.array(curves[task, name, lr], dtype=float)
            style = "--" if name == "microadam_k10" else "-"
            ax.plot(
                steps,
                values.mean(axis=0),
                style,
                color=colors[name],
                lw=1.3,
                label=f"{LABELS[name]}, lr={lr:g}",
            )
            ax.fill_between(
                steps, values.min(axis=0), values.max(axis=0), color=colors[name], alpha=0.15
            )
        ax.set_yscale("log")
        ax.set_xlabel("local optimizer steps (10 per round)")
        ax.set_ylabel("training loss")
        ax.set_title(TASKS[task], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"One client, minibatch {BATCH}, float32: mean over seeds {', '.join(map(str, SEEDS))}, "
        "band = min–max, each optimizer at its best lr",
        fontsize=10,
    )
    fig.savefig(path, dpi=130)


# ----------------------------------------------------------------------------- CLI


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs in parallel (default: the cores; 1: in-process)",
    )
    ap.add_argument("--rounds", type=int, default=None, help=f"rounds per run (default {ROUNDS})")
    ap.add_argument("--out", type=Path, default=None, help="where results and figure go")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from fedsim.sweep import parallel_map

    args = parse(argv)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    rounds = args.rounds or ROUNDS
    standard = args.rounds is None and args.out is None
    out = (args.out or (HERE if standard else RUNS_DIR / "custom")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = RUNS_DIR / "standard" if out == HERE else out / "runs"
    jobs = make_jobs(rounds, runs_dir)
    grids = {name: grid for name, (_, grid) in OPTIMIZERS.items()}

    t0 = time.perf_counter()
    curves: dict[tuple[str, str, float], list[list[float]]] = {}
    finals: dict[tuple[str, str, float], list[float]] = {}
    for job, losses, wall in parallel_map(run_job, jobs, args.jobs):
        key = (job.task, job.optimizer, job.lr)
        curves.setdefault(key, []).append(losses)
        finals.setdefault(key, []).append(final(losses))
        print(
            f"{job.task:15s} {job.optimizer:13s} lr={job.lr:<6g} seed {job.seed}: final "
            f"{fmt(final(losses))} ({wall:.1f} s)",
            flush=True,
        )
    memory = dict(zip(TASKS, parallel_map(state_per_param, TASKS, args.jobs), strict=True))
    wall_s = time.perf_counter() - t0

    best = pick_best(finals)
    verdict = claim(best)
    command = "python experiments/microadam/run.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    print()
    print("\n".join(table(best_rows(best, memory, grids), BEST_HEAD, markdown=False)))
    print()
    for task, (ratio, ok) in verdict.items():
        print(
            f"must-show on {task}: MicroAdam / AdamW final loss = {ratio:.2f} "
            f"({'holds' if ok else 'does NOT hold'}: needs <= {CLAIM_RATIO})"
        )
    write_results(out / "results.md", best, finals, memory, verdict, command, wall_s, rounds, grids)
    draw(out / "loss_curves.png", curves, best, rounds)
    print(f"\nwrote {out / 'results.md'} and {out / 'loss_curves.png'} ({wall_s:.0f} s)")
    return 0 if all(ok for _, ok in verdict.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
