"""Run one resolved config on its engine and report it.

:func:`run` is what ``python -m fedsim`` calls after validation; :func:`run_overrides` composes
``conf/`` with Hydra overrides first (the Python API used by tests, experiments and benchmarks).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedsim import status
from fedsim.checkpoint import CHECKPOINT_FILE
from fedsim.errors import ConfigError
from fedsim.metrics import read_metrics, totals
from fedsim.status import (
    SUMMARY_FILE,
    RunStopped,
    Terminated,
    mark,
    read_summary,
    status_of,
    write_json,
)

log = logging.getLogger("fedsim")


def quiet_flower(level: int = logging.WARNING) -> None:
    """Flower's own console handler duplicates lines under Hydra: route its records through the
    root logger instead, at ``level``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    flwr_log = logging.getLogger("flwr")
    flwr_log.handlers.clear()
    flwr_log.filters.clear()
    # fedsim's ray engine is built on run_simulation on purpose (DESIGN §3); its notice is noise.
    flwr_log.addFilter(lambda record: "`run_simulation`" not in record.getMessage())
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's in-memory state, at start
    flwr_log.propagate = True
    flwr_log.setLevel(level)


def run(
    cfg: Mapping,
    outdir: str | Path | None,
    progress: bool = False,
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> list[dict]:
    """Run a resolved config; return the metrics rows (also in ``outdir/metrics.csv``).

    With an ``outdir``, ``summary.json`` says ``status: running`` from the start and holds the
    summary and the final status at the end, whatever ends the run (:mod:`fedsim.status`); the
    error that stopped a run is raised again after that. ``overrides`` are the Hydra overrides
    that composed ``cfg``: the deployment engine sends them to the ServerApp and ClientApps,
    which compose the same config themselves. ``resume``: continue the inline run in
    ``outdir`` from its checkpoint (:mod:`fedsim.checkpoint`).
    """
    outdir = str(Path(outdir).resolve()) if outdir is not None else None
    # every process the run starts (Ray, SuperLink, SuperNodes) inherits it: fedsim.clean finds
    # those a killed run left behind by it
    os.environ.setdefault("FEDSIM_OWNER", str(os.getpid()))
    if outdir is not None:
        Path(outdir).mkdir(parents=True, exist_ok=True)
        if not resume:
            (Path(outdir) / "metrics.csv").unlink(missing_ok=True)  # never a stale file's rows
            (Path(outdir) / CHECKPOINT_FILE).unlink(missing_ok=True)
        mark(outdir, "running", None, **identity(cfg), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    registered = None
    if cfg["engine"]["name"] != "inline":  # python -m fedsim.clean finds what a kill -9 left
        from fedsim.clean import register

        registered = register(os.getpid(), str(outdir))
    status.graceful, status.pending_signal = True, None
    try:
        rows = _run_engine(cfg, outdir, progress, overrides, resume)
        written = read_summary(outdir) if outdir is not None else None
        if written and written.get("status") in ("diverged", "aborted"):  # the ServerApp's word
            raise RunStopped(written["status"], str(written.get("reason")))
    except BaseException as err:
        if cfg["engine"]["name"] == "ray":
            _stop_local_ray()
        if outdir is not None:
            path = Path(outdir) / "metrics.csv"
            rows = read_metrics(path) if path.exists() else []
            summarize(cfg, rows, Path(outdir), status_of(err), stop_reason(cfg, err))
        raise
    finally:
        status.graceful = False
        if registered is not None:
            registered.unlink(missing_ok=True)
    if outdir is not None:
        (Path(outdir) / CHECKPOINT_FILE).unlink(missing_ok=True)  # a completed run needs none
        summarize(cfg, rows, Path(outdir), "completed")
    return rows


def _run_engine(
    cfg: Mapping, outdir: str | None, progress: bool, overrides: Sequence[str], resume: bool
) -> list[dict]:
    engine = cfg["engine"]["name"]
    if resume and engine == "deployment":
        raise ConfigError(
            "deployment runs cannot resume yet: the ServerApp is started by `flwr run` on the "
            "SuperLink, which fedsim cannot hand a checkpoint to; resume inline or ray runs"
        )
    if engine == "inline":
        from fedsim.app import server_fn
        from fedsim.build import client_factory
        from fedsim.engines.inline import make_nodes, run_rounds

        components = server_fn(cfg, outdir, progress, None, resume)
        strategy = components.server.strategy
        nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
        run_rounds(strategy, nodes, components.config.num_rounds)
        return strategy.recorder.rows
    if outdir is None:
        raise ValueError(f"the {engine} engine writes its metrics to a directory: give outdir")
    if engine == "ray":
        from fedsim.engines.ray import run_ray

        run_ray(cfg, outdir, progress, resume)
    elif engine == "deployment":
        from fedsim.engines.deployment import run_deployment

        run_deployment(cfg, outdir, [o for o in overrides if not o.startswith("hydra.")])
    path = Path(outdir) / "metrics.csv"
    if not path.exists():
        where = ""
        if engine == "deployment" and cfg["engine"].get("superlink"):
            where = (
                " — the ServerApp writes it on the SuperLink's machine, so outdir must be "
                "a folder both machines see (a shared file system)"
            )
        raise RuntimeError(f"the {engine} run wrote no metrics ({path} is missing){where}")
    return read_metrics(path)


def _stop_local_ray() -> None:
    """Shut down the Ray this process started, when a run ends by an error or a signal (Flower
    shuts it down only when the run returns); a Ray shared by :func:`shared_ray` is left on."""
    from fedsim.engines import ray as ray_engine

    if getattr(ray_engine, "_shared", False):
        return
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort on the way out
        log.debug("ray.shutdown failed", exc_info=True)


# the method keys that are stepsizes (named in the divergence message)
_STEPSIZE = re.compile(r"(^|_)lr$|^eta$|^gamma|^c[01]$")


def stepsize_knobs(cfg: Mapping) -> str:
    """``method.KEY=VALUE`` for the method's stepsize keys, comma-separated."""
    method = cfg["method"]
    keys = [k for k in method if _STEPSIZE.search(k) and isinstance(method[k], int | float)]
    return ", ".join(f"method.{k}={method[k]:g}" for k in keys)


def stop_reason(cfg: Mapping, err: BaseException) -> str:
    """Why the run stopped, for ``summary.json`` and the console."""
    if isinstance(err, KeyboardInterrupt):
        return f"stopped by {'SIGTERM' if isinstance(err, Terminated) else 'SIGINT'}"
    text = str(err) or type(err).__name__
    if status_of(err) == "diverged":
        knobs = stepsize_knobs(cfg)
        text += f"; lower the stepsize ({knobs})" if knobs else "; lower the stepsize"
    return text


def identity(cfg: Mapping) -> dict:
    """What names a run in its summary: method, task, partition, sampler, engine, seed."""
    names = {k: cfg[k]["name"] for k in ("method", "task", "partition", "sampler", "engine")}
    return {**names, "seed": cfg["seed"]}


def run_overrides(overrides: Sequence[str], outdir: str | Path | None = None) -> list[dict]:
    """Compose ``conf/`` with ``overrides`` (Hydra syntax), validate, run; return the rows."""
    from fedsim.app import compose

    cfg = compose(" ".join(shlex.quote(o) for o in overrides))
    return run(cfg, outdir, overrides=list(overrides))


def summarize(
    cfg: Mapping,
    rows: list[dict],
    outdir: Path,
    status: str = "completed",
    reason: str | None = None,
) -> dict:
    """The one-screen summary of a run, with its status (also written to ``summary.json``)."""
    last = rows[-1] if rows else {}
    tot = totals(rows)
    summary = {
        "status": status,
        "reason": reason,
        **identity(cfg),
        "rounds": int(last.get("round") or 0),
        "wall_s": last.get("wall_s"),
        **{k: last.get(k) for k in ("loss", "gap", "dist_sq", "grad_norm_sq", "accuracy")},
        "up_bits": tot["up_bits"],
        "down_bits": tot["down_bits"],
        "up_floats": tot["up_floats"],
        "down_floats": tot["down_floats"],
        "grad_evals": tot["grad_evals"],
        "failures": tot["failures"],
        "outdir": str(outdir),
    }
    started = (read_summary(outdir) or {}).get("started")
    write_json(outdir / SUMMARY_FILE, {**summary, "started": started})
    return summary


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fedsim run", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        return "—" if v is None else str(v)

    for key in ("status", "method", "task", "partition", "sampler", "engine", "seed", "rounds"):
        table.add_row(key, fmt(summary[key]))
    for key in ("loss", "gap", "dist_sq", "grad_norm_sq", "accuracy"):
        table.add_row(key, fmt(summary[key]))
    mb = (summary["up_bits"] + summary["down_bits"]) / 8e6
    table.add_row(
        "traffic", f"{mb:.3f} MB ({fmt(summary['up_floats'] + summary['down_floats'])} floats)"
    )
    table.add_row("grad_evals", fmt(summary["grad_evals"]))
    table.add_row("failures", fmt(summary["failures"]))
    table.add_row("wall_s", fmt(summary["wall_s"]))
    table.add_row("outdir", summary["outdir"])
    Console(stderr=False).print(table)
