"""The ray engine: Flower's Simulation Engine (``flwr.simulation.run_simulation``) on Ray.

One virtual SuperNode per partition id; Ray runs one actor per ``client_resources.num_cpus``
CPUs. Flower 1.42 starts Ray for every run and shuts it down at the end (8–11 s here). Inside
:func:`shared_ray` the runs share one Ray instead: it is started once, Flower finds it running
(its backend only starts Ray when none is), and its shutdown at the end of a run is skipped. The
``engine=ray`` jobs of a Hydra multirun do the same (``engine.shared``, on by default): the first
job starts the Ray, the later ones join it, and :class:`fedsim.sweep.SweepCallback` shuts it down
when the sweep ends, so a job pays a connection instead of Ray's start-up.
Flower rewrites ``PYTHONPATH`` on every start; it is restored afterwards.

The run uses :class:`fedsim.engines.ray_backend.FedsimRayBackend`, Flower's Ray backend with one
change: a client that does not answer within ``engine.round_timeout`` is a logged timeout in its
own round, and the Ray actor it kept busy is killed and replaced, so it cannot starve the healthy
clients of later rounds (in Flower's backend it would hold its actor until it returns); a client
that raises is one WARNING line, its traceback at DEBUG.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping

log = logging.getLogger("fedsim")
_shared = False  # inside shared_ray(), or joined a sweep's Ray: Flower's ray.shutdown() is skipped
_sweep = False  # the main process of a Hydra multirun (fedsim.sweep.SweepCallback)
_sweep_started = False  # the sweep's Ray was started by one of its jobs, here


def _ray_env() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@contextlib.contextmanager
def shared_ray(num_cpus: int | None = None) -> Iterator[None]:
    """One Ray for every :func:`run_ray` inside the block (started here unless one is running,
    and then shut down at its end). Its workers see this process's ``sys.path``, as the ones
    Flower starts do."""
    global _shared
    _ray_env()
    import ray

    started = not ray.is_initialized()
    if started:
        _start_local(num_cpus)
    _shared = True
    try:
        yield
    finally:
        _shared = False
        from fedsim.engines.ray_backend import forget_warm_actors

        forget_warm_actors()
        if started:
            ray.shutdown()


def _start_local(num_cpus: int | None) -> None:
    """``ray.init`` of a local Ray of our own whose workers see this process's ``sys.path``."""
    import ray

    path = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    args = {} if num_cpus is None else {"num_cpus": int(num_cpus)}
    ray.init(
        address="local",  # our own Ray, never a cluster `ray start` left (see backend_config)
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
        **args,
    )


def sweep_started() -> None:
    """A multirun begins in this process: its ``engine=ray`` jobs may share one Ray."""
    global _sweep
    _sweep = True


def _join_sweep_ray(engine: Mapping) -> None:
    """The first ``engine=ray`` job of a sweep starts its Ray (with that job's
    ``engine.num_cpus``); every later one finds it running and leaves it on."""
    global _shared, _sweep_started
    import ray

    if not ray.is_initialized():
        _start_local(engine.get("num_cpus"))
        _sweep_started = True
        log.info("one Ray for the whole sweep: started by this job, kept for the next ones")
    _shared = True


def sweep_ended() -> None:
    """The multirun is over: shut down the Ray its jobs shared (if one of them started it)."""
    global _sweep, _shared, _sweep_started
    from fedsim.engines.ray_backend import forget_warm_actors

    forget_warm_actors()
    if _sweep_started:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    _sweep = _shared = _sweep_started = False


@contextlib.contextmanager
def _kept_alive() -> Iterator[None]:
    """Skip the ``ray.shutdown()`` Flower's backend calls when a run ends (inside shared_ray)."""
    import ray

    shutdown = ray.shutdown
    ray.shutdown = lambda *args, **kwargs: None
    try:
        yield
    finally:
        ray.shutdown = shutdown


def backend_config(engine: Mapping, device: str) -> dict:
    """Flower backend config from ``cfg.engine``: client resources and ``ray.init`` arguments."""
    res = dict(engine.get("client_resources") or {})
    resources = {
        "num_cpus": float(res.get("num_cpus", 1)),
        "num_gpus": float(res.get("num_gpus", 0.0)),
    }
    if device == "cuda" and resources["num_gpus"] == 0:
        resources["num_gpus"] = 1.0
    # Without engine.address the run starts its own Ray: ray.init() with no address would join
    # any cluster that `ray start` left on this machine (/tmp/ray/ray_current_cluster), sharing
    # its CPUs with, and dying with, whatever else uses it.
    init: dict = {"include_dashboard": False, "log_to_driver": True, "address": "local"}
    if engine.get("address"):
        init["address"] = str(engine["address"])
    elif engine.get("num_cpus"):
        init["num_cpus"] = int(engine["num_cpus"])
    return {"client_resources": resources, "init_args": init}


@contextlib.contextmanager
def restored_pythonpath() -> Iterator[None]:
    """Put ``PYTHONPATH`` back as it was: Flower's Ray backend extends it on every start."""
    saved = os.environ.get("PYTHONPATH")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def run_ray(cfg: Mapping, outdir: str | None, progress: bool, resume: bool = False) -> None:
    """Run one resolved config on Flower's Simulation Engine (``resume``: from ``outdir``'s
    checkpoint)."""
    _ray_env()
    from flwr.simulation import run_simulation

    from fedsim.app import bound_apps
    from fedsim.engines.ray_backend import installed

    server_app, client_app = bound_apps(cfg, outdir, progress, resume)
    engine = cfg["engine"]
    if _sweep and not _shared and engine.get("shared", True) and not engine.get("address"):
        _join_sweep_ray(engine)
    keep = _kept_alive() if _shared else contextlib.nullcontext()
    with restored_pythonpath(), keep, installed():  # timeouts free their actor: ray_backend.py
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg["num_clients"],
            backend_config=backend_config(cfg["engine"], cfg.get("device", "cpu")),
        )
