"""Optimizer state memory and step time of the local optimizers on a 1.1M-parameter model.

Workload: fedsim's ``task=mlp_large`` (a ``64 → 1024 → 1024 → 10`` MLP on digits, float32,
1,126,410 parameters), its flat model wrapped as one float32 parameter exactly as a FedAvg client
with ``method.local_optimizer=...`` wraps it (the same :class:`LocalOptimizer` rule builds every
optimizer), fed the flat gradient of minibatches of 64 samples of the one client's data.

Per optimizer (``sgdm``, ``adamw``, ``microadam`` with m = 10, k = 1 %, q = 64; the plain step
``sgd`` keeps nothing):

* **state bytes per parameter**, measured from the state tensors after the timed steps:
  Σ numel × element size over every tensor in ``optimizer.state`` (MicroAdam: ring buffer of
  indices and values, packed 4-bit error, bucket min/max; AdamW: both moments and the step
  counter), divided by the number of parameters. MicroAdam's own ``state_bytes()`` is checked to
  give the same number. The bytes a client keeps in ``context.state`` (the ``torch.save`` of
  ``state_dict()``) are printed beside it.
* **step time**: the median over ``--steps`` timed ``optimizer.step()`` calls (after 2 warm-up
  steps), the gradient already in ``p.grad``; printed in milliseconds and as a ratio to AdamW's
  (the reference) and to the time of one minibatch gradient of the task.

The must-show (exit status 1 when it fails): MicroAdam ≤ 1.0 byte per parameter, AdamW 8 (its two
float32 moments; the step counter adds 4 bytes in all).

Threads: torch, BLAS and OpenMP run 1 thread (``--threads``), set before torch is imported.

Run ``.venv/bin/python benchmarks/memory.py [--steps N] [--threads T] [--json PATH]``; about 20 s
on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys


def _threads(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return 1


_T = str(_threads(sys.argv[1:]))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _T
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import json  # noqa: E402 - the thread limits must precede numpy's and torch's imports
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `fedsim` importable
    sys.path.insert(0, str(ROOT))

from fedsim.blocks.local_optimizer import LocalOptimizer, dump_state, state_bytes  # noqa: E402

BATCH = 64
TARGET_MICROADAM = 1.0  # bytes per parameter, at most
TARGET_ADAMW = 8.0  # bytes per parameter of the two float32 moments
RULES = {
    "sgdm": LocalOptimizer("sgdm", lr=1e-2, momentum=0.9),
    "adamw": LocalOptimizer("adamw", lr=1e-3),
    "microadam": LocalOptimizer("microadam", lr=1e-3, window=10, density=0.01, bucket=64),
}


def mlp_large():
    """fedsim's mlp_large task (defaults: 1024 × 2, float32) with one client."""
    from fedsim.app import compose
    from fedsim.build import task_of

    cfg = compose(
        "task=mlp_large num_clients=1 partition=iid sampler=full engine=inline method=fedavg "
        "output.progress=false output.plot=false"
    )
    return task_of(cfg)


def gradients(task, count: int) -> tuple[list[torch.Tensor], float]:
    """``count`` float32 minibatch gradients at x0 (seeded batches) and the median time of one."""
    obj, rng = task.clients[0], np.random.default_rng(0)
    grads, times = [], []
    for _ in range(count):
        idx = np.sort(rng.choice(obj.num_samples, size=BATCH, replace=False))
        t0 = time.perf_counter()
        g = obj.grad(task.x0, idx)
        times.append(time.perf_counter() - t0)
        grads.append(torch.as_tensor(g, dtype=torch.float32))
    return grads, statistics.median(times)


def measure(rule: LocalOptimizer, x0: np.ndarray, grads: list[torch.Tensor]) -> dict:
    """Time ``rule``'s steps on one float32 parameter; measure its state."""
    p = torch.nn.Parameter(torch.tensor(x0, dtype=torch.float32))
    opt = rule.build([p])
    times = []
    for i, g in enumerate(grads):
        p.grad = g
        t0 = time.perf_counter()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    d = p.numel()
    measured = state_bytes(opt)
    if hasattr(opt, "state_bytes"):  # MicroAdam counts its own tensors: the same sum
        assert opt.state_bytes() == measured, (opt.state_bytes(), measured)
    return {
        "state_bytes": measured,
        "bytes_per_param": measured / d,
        "kept_bytes_per_param": len(dump_state(opt)) / d,
        "step_ms": 1e3 * statistics.median(times),
        "tensors": {  # name -> [dtype, shape, bytes]
            k: [str(v.dtype), list(v.shape), v.numel() * v.element_size()]
            for st in opt.state.values()
            for k, v in st.items()
            if torch.is_tensor(v)
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per optimizer")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads")
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    task = mlp_large()
    d = task.dim
    grads, grad_s = gradients(task, args.steps + 2)
    results = {name: measure(rule, task.x0, grads) for name, rule in RULES.items()}
    ref = results["adamw"]["step_ms"]

    print(f"task=mlp_large: {d:,} parameters, float32; minibatch gradient {1e3 * grad_s:.1f} ms")
    print(f"{args.threads} thread(s), median of {args.steps} steps after 2 warm-up steps\n")
    head = (
        f"{'optimizer':<11} {'state B/param':>13} {'kept B/param':>12} {'step ms':>8} "
        f"{'/ adamw':>8} {'/ grad':>7}"
    )
    print(head)
    print("-" * len(head))
    print(f"{'sgd':<11} {0.0:>13.3f} {0.0:>12.3f} {'-':>8} {'-':>8} {'-':>7}")
    for name, r in results.items():
        print(
            f"{name:<11} {r['bytes_per_param']:>13.3f} {r['kept_bytes_per_param']:>12.3f} "
            f"{r['step_ms']:>8.2f} {r['step_ms'] / ref:>8.2f} "
            f"{r['step_ms'] / (1e3 * grad_s):>7.2f}"
        )
    micro, adamw = results["microadam"]["bytes_per_param"], results["adamw"]["bytes_per_param"]
    moments = sum(b for k, (_, _, b) in results["adamw"]["tensors"].items() if k != "step")
    ok_micro = micro <= TARGET_MICROADAM
    ok_adamw = moments / d == TARGET_ADAMW
    print(
        f"\nmust-show: MicroAdam {micro:.3f} B/param <= {TARGET_MICROADAM} "
        f"({'met' if ok_micro else 'NOT MET'}); AdamW moments {moments / d:.3f} B/param "
        f"= {TARGET_ADAMW} ({'met' if ok_adamw else 'NOT MET'}; {adamw:.6f} with its step "
        f"counter); ratio AdamW / MicroAdam = {adamw / micro:.1f}"
    )
    print(f"wall {time.perf_counter() - t_start:.1f} s")
    if args.json:
        payload = {
            "dim": d,
            "grad_ms": 1e3 * grad_s,
            "threads": args.threads,
            "steps": args.steps,
            "results": results,
            "met": {"microadam": ok_micro, "adamw": ok_adamw},
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if ok_micro and ok_adamw else 1


if __name__ == "__main__":
    sys.exit(main())
