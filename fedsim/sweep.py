"""Sweeps: what a Hydra multirun (``python -m fedsim -m ...``) needs beyond one run.

* **Launchers.** Jobs run one after another in this process (Hydra's basic launcher), side by
  side on this machine's cores (``hydra/launcher=joblib``, hydra-joblib-launcher: one process per
  core, ``hydra.launcher.n_jobs=N`` for fewer), or as Ray tasks on a Ray cluster
  (``hydra/launcher=ray_cluster hydra.launcher.ray.init.address=HOST:PORT``,
  hydra-ray-launcher).
* **Threads.** A job of a parallel launcher runs its BLAS, OpenMP and torch on one thread
  (``threads: auto``), so that N jobs on N cores do not fight over them; ``threads=K`` sets K
  for every run, parallel or not. A parallel job also draws no progress bar (N bars on one
  terminal are noise); its log lines remain.
* **One Ray per sweep.** :class:`SweepCallback` (registered in ``conf/config.yaml``) tells
  :mod:`fedsim.engines.ray` that a multirun is under way in this process: with the basic
  launcher its ``engine=ray`` jobs then share one Ray (``engine.shared``), which the callback
  shuts down when the sweep ends, and draws the sweep's figure, ``<sweep dir>/sweep.png``.
* **Scripts.** The experiment scripts (:mod:`fedsim.compare` and ``experiments/*/run.py``) run
  their arms × seeds through :func:`parallel_map`: the joblib launcher's own backend (loky), one
  single-threaded process per core.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from hydra.experimental.callback import Callback

from fedsim.errors import ConfigError

log = logging.getLogger("fedsim")

_RAY_IN_RAY = (
    "engine=ray cannot run inside hydra/launcher=ray_cluster (its jobs are Ray tasks already); "
    "use engine=inline there, or the basic launcher with engine=ray"
)
T = TypeVar("T")
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class SweepCallback(Callback):
    """Hydra callback: a multirun's ``engine=ray`` jobs share one Ray, shut down at its end."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from fedsim.engines import ray as ray_engine

        launcher = str(config.hydra.launcher.get("_target_", ""))
        engine = str(config.get("engine", {}).get("name", ""))
        if launcher.endswith(".RayLauncher") and engine == "ray":
            print(f"fedsim: error: {_RAY_IN_RAY}", file=sys.stderr)
            sys.exit(2)
        ray_engine.sweep_started()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from fedsim.engines import ray as ray_engine

        ray_engine.sweep_ended()
        if config.get("output", {}).get("plot", True):
            sweep_figure(Path(str(config.hydra.sweep.dir)))


def sweep_figure(sweep_dir: Path) -> Path | None:
    """``<sweep dir>/sweep.png``: every job's curves in one grid (:func:`fedsim.plot.plot_runs`,
    the figure ``python -m fedsim.plot <sweep dir>`` draws); ``None`` if no job wrote metrics."""
    from fedsim.plot import plot_runs

    if not any(sweep_dir.glob("*/metrics.csv")):
        return None
    try:
        path = plot_runs([sweep_dir], sweep_dir / "sweep.png")
    except Exception as err:  # noqa: BLE001 - a figure never costs the sweep its results
        log.warning("no sweep figure: %s", err)
        return None
    log.info("sweep figure: %s", path)
    return path


def parallel_job() -> bool:
    """Whether this run is a job of a multirun whose launcher runs jobs side by side (any
    launcher but Hydra's basic one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return False
    target = str(hc.launcher.get("_target_", ""))
    return not target.endswith(".BasicLauncher")


def check_launcher(engine: str) -> None:
    """A job of the Ray launcher runs inside a Ray worker, already connected to the cluster:
    Flower's Simulation Engine would take that connection for its own and shut it down when the
    run ends, so ``engine=ray`` is refused there."""
    from hydra.core.hydra_config import HydraConfig

    if engine != "ray" or not HydraConfig.initialized():
        return
    if str(HydraConfig.get().launcher.get("_target_", "")).endswith(".RayLauncher"):
        raise ConfigError(_RAY_IN_RAY)


def job_threads(setting: object, parallel: bool) -> int | None:
    """The thread count of ``threads``: ``auto`` is 1 in a parallel job, else the libraries'
    own default (``None``); an integer ≥ 1 is used as given."""
    if setting == "auto" or setting is None:
        return 1 if parallel else None
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"threads must be auto or an integer >= 1, got {setting!r}")
    return setting


def limit_threads(count: int | None) -> None:
    """Run BLAS, OpenMP and torch on ``count`` threads from here on (``None``: leave them).

    The environment variables cover libraries loaded later (torch reads ``OMP_NUM_THREADS`` when
    it is imported); threadpoolctl resizes the BLAS and OpenMP pools already loaded."""
    if count is None:
        return
    for var in _THREAD_VARS:
        os.environ[var] = str(count)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)


def default_jobs() -> int:
    """Processes for :func:`parallel_map` when none are asked for: the cores."""
    return os.cpu_count() or 1


def parallel_map(
    fn: Callable[..., T], items: Iterable[Any], jobs: int | None = None
) -> Iterator[T]:
    """``fn(item)`` for every item, on ``jobs`` processes (default: the cores), in order.

    The processes are joblib's loky workers, the backend of ``hydra/launcher=joblib``, started
    once and reused across items, each with BLAS, OpenMP and torch on one thread
    (``inner_max_num_threads=1``, the rule of ``threads: auto``) so ``jobs`` runs on ``jobs``
    cores do not fight. ``jobs=1`` runs the items in this process. Results come back in the items'
    order, each as soon as it and those before it are done, so a caller can print progress or
    save each one."""
    jobs = default_jobs() if jobs is None else int(jobs)
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        yield from map(fn, items)
        return
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="loky", inner_max_num_threads=1):
        yield from Parallel(n_jobs=jobs, return_as="generator")(delayed(fn)(i) for i in items)
