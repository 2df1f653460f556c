"""The ray engine: Flower's Simulation Engine (``flwr.simulation.run_simulation``) on Ray.

One virtual SuperNode per partition id; Ray runs one actor per ``client_resources.num_cpus``
CPUs. Flower 1.42 starts Ray for every run and shuts it down at the end (so each job of a Hydra
sweep pays Ray's start-up, 8–11 s here: sweep many cheap runs with ``engine=inline``). Flower
rewrites ``PYTHONPATH`` on every start; it is restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

log = logging.getLogger("fedsim")


def backend_config(engine: Mapping, device: str) -> dict:
    """Flower backend config from ``cfg.engine``: client resources and ``ray.init`` arguments."""
    res = dict(engine.get("client_resources") or {})
    resources = {
        "num_cpus": float(res.get("num_cpus", 1)),
        "num_gpus": float(res.get("num_gpus", 0.0)),
    }
    if device == "cuda" and resources["num_gpus"] == 0:
        resources["num_gpus"] = 1.0
    init: dict = {"include_dashboard": False, "log_to_driver": True}
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


def run_ray(cfg: Mapping, outdir: str | None, progress: bool) -> None:
    """Run one resolved config on Flower's Simulation Engine."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from flwr.simulation import run_simulation

    from fedsim.app import bound_apps

    server_app, client_app = bound_apps(cfg, outdir, progress)
    with restored_pythonpath():
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg["num_clients"],
            backend_config=backend_config(cfg["engine"], cfg.get("device", "cpu")),
        )
