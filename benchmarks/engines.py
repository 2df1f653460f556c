"""Per-round time of fedsim's engines against the physical limit and against Flower's FedAvg.

Workload (DESIGN §9): FedAvg on binary logistic regression, 100 clients × 300 samples × 123
features (fedsim's ``logreg_synthetic`` task, ``partition=natural``), 5 local full-gradient steps
per round, cohorts drawn uniformly without replacement (cohort 100 = everyone, a_m = 1).

Four measurements, all per round:

1. ``loop``: the same arithmetic as a plain numpy loop written here (the physical limit): the
   same cohorts (fedsim's own sampler), the clients' dense ``A`` and labels taken from fedsim's
   task objects, 5 steps ``y ← y − γ(Aᵀ(−b ⊙ σ(−b ⊙ Ay))/n + λy)``, displacements, and
   ``x ← x − η Σ a_m w_m Δ_m`` in partition-id order. Its final model is checked against the
   inline engine's (loss, ‖∇f‖², ‖x − x*‖² agree to ~1e-12 relative).
2. ``inline``: ``engine=inline`` through :func:`fedsim.runner.run`.
3. ``ray``: ``engine=ray`` through :func:`fedsim.runner.run` (Flower's Simulation Engine).
4. ``flower``: Flower's built-in ``FedAvg`` with a minimal ``NumPyClient`` doing the same 5 local
   steps on the same data, through ``flwr.simulation.run_simulation`` with the same backend config
   (1 CPU per client, hence 2 actors on 2 cores), Flower's default legacy ``Server``.

Timing window: every run does ``R = 2W`` rounds and is stamped after rounds ``W`` and ``2W``
(fedsim: ``eval_every = W``, the ``wall_s`` of the metrics rows; Flower: an ``evaluate_fn`` that
only records the time; the loop: a clock read at the same two points). The per-round time is
``(t[2W] − t[W]) / W``. The first ``W`` rounds are warm-up, so Ray's start, actor creation,
fedsim's node discovery and first-call imports are excluded. The window contains one centralized
evaluation (fedsim engines and loop alike, at round 2W; a few ms, printed as ``eval``).

Threads: BLAS and OpenMP are limited to 1 thread for every measurement (environment variables set
before numpy is imported, inherited by the Ray workers, plus ``threadpoolctl`` in this process),
since every Ray actor holds 1 CPU.

Run ``.venv/bin/python benchmarks/engines.py [--rounds N] [--ray-rounds N] [--skip-ray]
[--cohorts 10,100] [--json PATH] [--profile]``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import argparse  # noqa: E402 - the thread limits must precede numpy's import
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from flwr.client import NumPyClient  # noqa: E402
from scipy.special import expit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NUM_CLIENTS = 100
TARGET_INLINE = 1.2  # inline / loop at cohort 100
TARGET_RAY = 1.0  # ray / flower
SAME_MODEL_RTOL = 1e-12  # loop vs inline (and ray vs inline) final models


def overrides(cohort: int, engine: str, rounds: int) -> list[str]:
    """The Hydra overrides of one measured run (``rounds = 2W``, evaluated at W and 2W)."""
    return [
        "task=logreg_synthetic",
        "task.dim=123",
        "task.samples_per_client=300",
        f"num_clients={NUM_CLIENTS}",
        "partition=natural",
        "method=fedavg",
        "method.local_solver=gd",
        "method.local_steps=5",
        "sampler=uniform",
        f"sampler.cohort_size={cohort}",
        f"engine={engine}",
        f"num_rounds={rounds}",
        f"eval_every={rounds // 2}",
        "output.progress=false",
        "output.plot=false",
        "seed=0",
    ]


def compose(cohort: int, engine: str, rounds: int) -> dict:
    from fedsim.app import compose as fedsim_compose

    return fedsim_compose(" ".join(overrides(cohort, engine, rounds)))


def logistic_grad(a: np.ndarray, b: np.ndarray, x: np.ndarray, l2: float) -> np.ndarray:
    """``∇f(x) = Aᵀ(−b ⊙ σ(−b ⊙ Ax))/n + λx`` for labels ``b ∈ {−1, +1}``."""
    r = -b * expit(-b * (a @ x))
    return (a.T @ r) / b.shape[0] + l2 * x


def local_gd(a: np.ndarray, b: np.ndarray, x: np.ndarray, lr: float, l2: float, steps: int):
    """``steps`` full-gradient steps from ``x``; returns the last iterate."""
    y = x.copy()
    for _ in range(steps):
        y -= lr * logistic_grad(a, b, y, l2)
    return y


# ----------------------------------------------------------------------------- 1. numpy loop
def numpy_loop(cfg: Mapping) -> dict:
    """The same rounds as plain numpy; returns the timing and the final model's metrics."""
    from fedsim.build import sampler_of, task_of
    from fedsim.metrics import evaluate

    task = task_of(cfg)
    sampler = sampler_of(cfg, task)
    data = [(c.a, c.y) for c in task.clients]
    if not all(isinstance(a, np.ndarray) for a, _ in data):
        raise RuntimeError("expected dense client matrices")
    weights = task.weights
    lr, l2 = float(cfg["method"]["client_lr"]), float(cfg["task"]["l2"])
    eta, steps = float(cfg["method"]["server_lr"]), int(cfg["method"]["local_steps"])
    rounds = int(cfg["num_rounds"])
    stamps: dict[int, float] = {}
    x = np.array(task.x0, dtype=float, copy=True)
    t0 = time.perf_counter()
    for rnd in range(1, rounds + 1):
        cohort = sampler.sample(rnd)
        deltas = np.empty((len(cohort.ids), x.size))
        for i, pid in enumerate(cohort.ids.tolist()):
            a, b = data[pid]
            deltas[i] = x - local_gd(a, b, x, lr, l2, steps)
        x = x - eta * ((cohort.scale * weights[cohort.ids]) @ deltas)
        if rnd % cfg["eval_every"] == 0:
            row = evaluate(task, x)
            stamps[rnd] = time.perf_counter() - t0
    return {"per_round_s": window(stamps, rounds), "row": row, "x": x}


def window(stamps: Mapping[int, float], rounds: int) -> float:
    """``(t[2W] − t[W]) / W`` from the times stamped after rounds W and 2W."""
    w = rounds // 2
    return (stamps[rounds] - stamps[w]) / (rounds - w)


# ----------------------------------------------------------------------------- 2, 3. fedsim engines
def fedsim_engine(cohort: int, engine: str, rounds: int, outdir: Path) -> dict:
    from fedsim.runner import run

    cfg = compose(cohort, engine, rounds)
    rows = run(cfg, outdir / f"{engine}-{cohort}")
    stamps = {int(r["round"]): float(r["wall_s"]) for r in rows}
    return {"per_round_s": window(stamps, rounds), "row": rows[-1]}


# ----------------------------------------------------------------------------- 4. Flower FedAvg
def _flower_client_fn(cfg: Mapping, context):
    """Flower ``client_fn``: a :class:`GDClient` on partition ``partition-id`` of the task."""
    from fedsim.build import task_of  # built once per process (the registry caches it)

    obj = task_of(cfg).clients[int(context.node_config["partition-id"])]
    method = cfg["method"]
    return GDClient(
        obj.a, obj.y, float(method["client_lr"]), obj.l2, int(method["local_steps"])
    ).to_client()


class GDClient(NumPyClient):
    """Minimal Flower client: ``steps`` local GD steps from the server model, returns ``y``."""

    def __init__(self, a: np.ndarray, b: np.ndarray, lr: float, l2: float, steps: int) -> None:
        self.a, self.b, self.lr, self.l2, self.steps = a, b, lr, l2, steps

    def fit(self, parameters, config):
        y = local_gd(self.a, self.b, parameters[0], self.lr, self.l2, self.steps)
        return [y], int(self.b.shape[0]), {"blas_threads": blas_threads()}


@functools.cache
def blas_threads() -> int:
    """BLAS threads of this process (asked once per process)."""
    from threadpoolctl import threadpool_info

    return max((int(i["num_threads"]) for i in threadpool_info()), default=0)


def flower_fedavg(cfg: Mapping, cohort: int, rounds: int, max_workers: int | None = None) -> dict:
    """Flower's ``FedAvg`` on the same data through ``run_simulation``; ``max_workers`` raises
    the legacy ``Server``'s dispatch thread pool (as fedsim does), ``None`` keeps Flower's default.
    """
    from flwr.client import ClientApp
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import Server, ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedsim.build import task_of
    from fedsim.engines.ray import backend_config, restored_pythonpath
    from fedsim.metrics import evaluate

    task = task_of(cfg)
    stamps: dict[int, float] = {}
    final: list[tuple[int, dict]] = []
    threads: set[int] = set()
    t0 = time.perf_counter()

    def evaluate_fn(rnd: int, arrays: list[np.ndarray], config: dict):
        if rnd % (rounds // 2) == 0:  # the centralized evaluation fedsim does at W and 2W
            final.append((rnd, evaluate(task, arrays[0])))
        stamps[rnd] = time.perf_counter() - t0

    def fit_metrics(results: list[tuple[int, dict]]) -> dict:
        threads.update(int(m["blas_threads"]) for _, m in results)
        return {}

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = FedAvg(
            fraction_fit=cohort / NUM_CLIENTS,
            fraction_evaluate=0.0,
            min_fit_clients=cohort,
            min_available_clients=NUM_CLIENTS,
            initial_parameters=ndarrays_to_parameters([np.array(task.x0, dtype=float)]),
            evaluate_fn=evaluate_fn,
            fit_metrics_aggregation_fn=fit_metrics,
        )
        config = ServerConfig(num_rounds=rounds)
        if max_workers is None:  # Flower's default legacy Server
            return ServerAppComponents(strategy=strategy, config=config)
        server = Server(client_manager=SimpleClientManager(), strategy=strategy)
        server.set_max_workers(max_workers)
        return ServerAppComponents(server=server, config=config)

    # The client function must reach the Ray workers by reference, not by value.
    module = sys.modules[__name__] if __name__ != "__main__" else _importable_self()
    client_app = ClientApp(client_fn=functools.partial(module._flower_client_fn, dict(cfg)))
    with restored_pythonpath():
        run_simulation(
            server_app=ServerApp(server_fn=server_fn),
            client_app=client_app,
            num_supernodes=NUM_CLIENTS,
            backend_config=backend_config(cfg["engine"], "cpu"),
        )
    if len(stamps) < rounds + 1 or final[-1][0] != rounds:
        raise RuntimeError(f"the Flower run stopped early (rounds stamped: {sorted(stamps)})")
    return {
        "per_round_s": window(stamps, rounds),
        "row": final[-1][1],
        "blas_threads": sorted(threads),
    }


def _importable_self():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import importlib

    return importlib.import_module("benchmarks.engines")


# ----------------------------------------------------------------------------- checks and report
def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def check_same_model(loop_row: Mapping, inline_row: Mapping) -> float:
    """Largest relative difference of loss, ‖∇f‖² and ‖x − x*‖² between two final models."""
    keys = ("loss", "grad_norm_sq", "dist_sq")
    return max(rel(float(loop_row[k]), float(inline_row[k])) for k in keys)


def eval_cost(cfg: Mapping, repeat: int = 20) -> float:
    """Seconds of one centralized evaluation (included once in every timing window)."""
    from fedsim.build import task_of
    from fedsim.metrics import evaluate

    task = task_of(cfg)
    x = np.full(task.dim, 0.01)
    evaluate(task, x)
    t = time.perf_counter()
    for _ in range(repeat):
        evaluate(task, x)
    return (time.perf_counter() - t) / repeat


def loop_rounds(cohort: int, rounds_at_full: int) -> int:
    """Loop/inline rounds for ``cohort``: as many client fits as ``rounds_at_full`` rounds of the
    full cohort (an even number), so small cohorts get a timing window as long as large ones."""
    return max(2, 2 * round(rounds_at_full * NUM_CLIENTS / cohort / 2))


def bench_cohort(cohort: int, args: argparse.Namespace, outdir: Path) -> dict:
    from threadpoolctl import threadpool_limits

    rounds = loop_rounds(cohort, args.rounds)
    out: dict = {"cohort": cohort, "rounds": rounds, "ray_rounds": args.ray_rounds}
    cfg = compose(cohort, "inline", rounds)
    loops, inlines = [], []
    with threadpool_limits(limits=1):
        out["eval_ms"] = 1e3 * eval_cost(cfg)
        for rep in range(args.repeat):  # interleaved; the minimum is the least disturbed run
            loop = numpy_loop(cfg)
            inline = fedsim_engine(cohort, "inline", rounds, outdir / f"rep{rep}")
            loops.append(1e3 * loop["per_round_s"])
            inlines.append(1e3 * inline["per_round_s"])
    out["loop_ms"], out["inline_ms"] = min(loops), min(inlines)
    out["loop_ms_all"], out["inline_ms_all"] = loops, inlines
    out["max_rel_diff_loop_inline"] = check_same_model(loop["row"], inline["row"])
    out["loss"] = float(loop["row"]["loss"])
    if args.skip_ray:
        return out
    ray_cfg = compose(cohort, "ray", args.ray_rounds)
    ray = fedsim_engine(cohort, "ray", args.ray_rounds, outdir)
    out["ray_ms"] = 1e3 * ray["per_round_s"]
    flower = flower_fedavg(ray_cfg, cohort, args.ray_rounds)
    out["flower_ms"] = 1e3 * flower["per_round_s"]
    out["flower_blas_threads"] = flower["blas_threads"]
    if not args.skip_flower_workers:
        tuned = flower_fedavg(ray_cfg, cohort, args.ray_rounds, max_workers=cohort)
        out["flower_mw_ms"] = 1e3 * tuned["per_round_s"]
    # fedsim-ray must reproduce the inline run of the same length (engine parity).
    ray_inline = fedsim_engine(cohort, "inline", args.ray_rounds, outdir / "parity")
    out["max_rel_diff_ray_inline"] = check_same_model(ray["row"], ray_inline["row"])
    out["ray_loss"] = float(ray["row"]["loss"])
    out["flower_loss"] = float(flower["row"]["loss"])
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def report(res: dict) -> str:
    c = res["cohort"]
    lines = [
        f"cohort {c} of {NUM_CLIENTS} (loop/inline: {res['rounds']} rounds, "
        f"ray/flower: {res['ray_rounds']} rounds; per-round time over the last half)",
        f"  {'':30}{'ms/round':>10}",
    ]
    for key, name in (
        ("loop_ms", "numpy loop"),
        ("inline_ms", "fedsim inline"),
        ("ray_ms", "fedsim ray"),
        ("flower_ms", "Flower FedAvg"),
        ("flower_mw_ms", "Flower FedAvg, max_workers=C"),
    ):
        if key in res:
            lines.append(f"  {name:30}{res[key]:10.2f}")
    lines.append(f"  (one centralized evaluation, inside each window: {res['eval_ms']:.2f} ms)")
    res["inline_over_loop"] = ratio(res["inline_ms"], res["loop_ms"])
    res["ray_over_loop"] = ratio(res.get("ray_ms"), res["loop_ms"])
    res["ray_over_flower"] = ratio(res.get("ray_ms"), res.get("flower_ms"))
    res["ray_over_flower_mw"] = ratio(res.get("ray_ms"), res.get("flower_mw_ms"))
    for key, name in (
        ("inline_over_loop", "inline / loop"),
        ("ray_over_loop", "ray / loop"),
        ("ray_over_flower", "ray / Flower FedAvg"),
        ("ray_over_flower_mw", "ray / Flower, max_workers=C"),
    ):
        if res[key] is not None:
            lines.append(f"  {name:30}{res[key]:10.2f}x")
    d = res["max_rel_diff_loop_inline"]
    lines.append(
        f"  loop vs inline final model: max rel. diff {d:.1e} (loss, |grad|², |x-x*|²) "
        + ("OK" if d <= SAME_MODEL_RTOL else "MISMATCH")
    )
    if "max_rel_diff_ray_inline" in res:
        d = res["max_rel_diff_ray_inline"]
        ok = "OK" if d <= SAME_MODEL_RTOL else "MISMATCH"
        lines.append(f"  ray vs inline final model:  max rel. diff {d:.1e} {ok}")
        lines.append(f"  BLAS threads in Flower's Ray actors: {res['flower_blas_threads']}")
    return "\n".join(lines)


def targets(results: list[dict]) -> tuple[list[str], dict]:
    lines, met = [], {}
    for res in results:
        c = res["cohort"]
        if c == NUM_CLIENTS:
            ok = res["inline_over_loop"] <= TARGET_INLINE
            met[f"inline_le_{TARGET_INLINE}x_loop_cohort{c}"] = ok
            lines.append(
                f"target inline <= {TARGET_INLINE}x loop at cohort {c}: "
                f"{res['inline_over_loop']:.2f}x -> {'MET' if ok else 'NOT MET'}"
            )
        if res.get("ray_over_flower") is not None:
            ok = res["ray_over_flower"] <= TARGET_RAY
            met[f"ray_le_{TARGET_RAY}x_flower_cohort{c}"] = ok
            lines.append(
                f"target ray <= {TARGET_RAY}x Flower FedAvg at cohort {c}: "
                f"{res['ray_over_flower']:.2f}x -> {'MET' if ok else 'NOT MET'}"
            )
    return lines, met


def profile_inline(cohort: int, rounds: int, top: int) -> None:
    """cProfile of an inline run (``--profile``): where the time beyond the arithmetic goes."""
    import cProfile
    import pstats

    from threadpoolctl import threadpool_limits

    from fedsim.runner import run

    cfg = compose(cohort, "inline", rounds)
    run(cfg, None)  # warm: task, optimum and imports
    prof = cProfile.Profile()
    with threadpool_limits(limits=1):
        prof.enable()
        run(cfg, None)
        prof.disable()
    stats = pstats.Stats(prof)
    calls = rounds * cohort
    print(f"cProfile, inline, cohort {cohort}, {rounds} rounds ({calls} client fits)")
    print(f"{'tottime us/fit':>15} {'cumtime us/fit':>15} {'ncalls/fit':>11}  function")
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (path, line, name), (_, nc, tt, ct, _) in entries:
        where = f"{Path(path).name}:{line}({name})" if line else name
        print(f"{1e6 * tt / calls:15.1f} {1e6 * ct / calls:15.1f} {nc / calls:11.2f}  {where}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rounds",
        type=int,
        default=200,
        help="loop and inline rounds at cohort 100 (even); cohort C runs 100/C times as many",
    )
    p.add_argument("--ray-rounds", type=int, default=20, help="ray and Flower rounds (even)")
    p.add_argument("--cohorts", default="10,100", help="comma-separated cohort sizes")
    p.add_argument("--skip-ray", action="store_true", help="only the loop and the inline engine")
    p.add_argument("--repeat", type=int, default=5, help="loop/inline repetitions (min)")
    p.add_argument(
        "--skip-flower-workers",
        action="store_true",
        help="skip Flower FedAvg with the Server's max_workers raised to the cohort",
    )
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    p.add_argument("--profile", action="store_true", help="cProfile the inline engine instead")
    p.add_argument("--profile-rounds", type=int, default=40)
    args = p.parse_args(argv)
    for name in ("rounds", "ray_rounds"):
        if getattr(args, name) < 2 or getattr(args, name) % 2:
            p.error(f"--{name.replace('_', '-')} must be an even number >= 2")
    cohorts = [int(c) for c in args.cohorts.split(",") if c.strip()]
    if any(not 1 <= c <= NUM_CLIENTS for c in cohorts):
        p.error(f"cohorts must lie in [1, {NUM_CLIENTS}]")

    from fedsim.runner import quiet_flower

    quiet_flower()
    if args.profile:
        for c in cohorts:
            profile_inline(c, args.profile_rounds, 30)
        return 0
    print(f"BLAS/OpenMP threads: 1 (OMP/OPENBLAS/MKL_NUM_THREADS=1); cores: {os.cpu_count()}")
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-") as tmp:
        for c in cohorts:
            res = bench_cohort(c, args, Path(tmp))
            print(report(res), flush=True)
            results.append(res)
    lines, met = targets(results)
    print("\n".join(lines))
    total = time.perf_counter() - start
    print(f"benchmark wall time: {total:.0f} s")
    if args.json:
        payload = {"results": results, "targets_met": met, "wall_s": total, "cpus": os.cpu_count()}
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    same = all(
        r.get(k, 0.0) <= SAME_MODEL_RTOL
        for r in results
        for k in ("max_rel_diff_loop_inline", "max_rel_diff_ray_inline")
    )
    if not same:
        print("ERROR: the engines did not reproduce the loop's arithmetic")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
