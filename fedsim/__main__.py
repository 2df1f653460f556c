"""``python -m fedsim``: compose the Hydra config, validate it, run it on its engine, report.

Examples::

    python -m fedsim                                   # FedAvg, heterogeneous logreg, Ray
    python -m fedsim engine=inline sampler=cyclic num_rounds=500
    python -m fedsim -m sampler=cyclic,with_replacement seed=0,1,2 engine=inline
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError

log = logging.getLogger("fedsim")


def _on_signal(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM: an inline run stops after the current round with a checkpoint; any other
    run (or a second signal) stops at once. Status interrupted, exit code 130 or 143."""
    from fedsim import status

    if status.graceful and status.pending_signal is None:
        status.pending_signal = signum
        log.warning("signal %d: stopping after this round (again to stop at once)", signum)
        return
    status.raise_for(signum)


def _resumable(outdir: Path) -> tuple[Path, dict]:
    """The run directory and resolved config of ``resume=DIR``: the config the run saved when
    it started (already resolved: ``auto`` values are the numbers it ran with)."""
    path = outdir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"resume={outdir}: no config.yaml there (not a fedsim run directory)")
    saved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(saved, dict):
        raise ConfigError(f"resume={outdir}: {path} is not a fedsim config")
    saved["resume"] = None
    return outdir.resolve(), saved


def _plot(outdir: Path) -> None:
    from fedsim.plot import plot_runs

    try:
        log.info("figure: %s", plot_runs([outdir], outdir / "curves.png"))
    except Exception as err:  # noqa: BLE001 - a figure never costs the run its results
        log.warning("no figure: %s", err)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedsim.build import resolve
    from fedsim.runner import print_summary, quiet_flower, run
    from fedsim.status import exit_code, read_summary, status_of
    from fedsim.sweep import check_launcher, job_threads, limit_threads, parallel_job

    quiet_flower()
    parallel = parallel_job()
    resume = cfg.get("resume")
    try:
        if resume:
            outdir, resolved = _resumable(Path(str(resume)))
        else:
            resolved = resolve(cfg, solve=True)
            check_launcher(resolved["engine"]["name"])
            outdir = Path(HydraConfig.get().runtime.output_dir)
    except ConfigError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)
    outdir.mkdir(parents=True, exist_ok=True)
    if not resume:
        OmegaConf.save(OmegaConf.create(resolved), outdir / "config.yaml")
    log.info(
        "%s on %s (%s engine) → %s",
        resolved["method"]["name"],
        resolved["task"]["name"],
        resolved["engine"]["name"],
        outdir,
    )
    threads = job_threads(resolved.get("threads", "auto"), parallel)
    limit_threads(threads)
    if threads is not None:
        why = " (a job of a parallel sweep)" if parallel else ""
        log.info("BLAS, OpenMP and torch threads: %d%s", threads, why)
    if threading.current_thread() is threading.main_thread():  # a threaded launcher's jobs: not
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    try:
        progress = bool(resolved["output"].get("progress", True)) and not parallel
        overrides = list(HydraConfig.get().overrides.task)
        rows = run(resolved, outdir, progress, overrides, resume=bool(resume))
    except ConfigError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - report the cause, not Ray's stack
        status = status_of(err)
        summary = read_summary(outdir) or {}
        print(f"fedsim: run {status}: {summary.get('reason') or err}", file=sys.stderr)
        log.debug("run %s", status, exc_info=True)
        if resolved["output"].get("plot", True) and (outdir / "metrics.csv").exists():
            _plot(outdir)  # the rows so far, marked with the status
        if status != "interrupted" and HydraConfig.get().mode == RunMode.MULTIRUN:
            (outdir / "FAILED").write_text(f"{status}: {summary.get('reason') or err}\n")
            return None  # one diverged or failed grid point: the sweep goes on
        sys.exit(exit_code(err))
    summary = read_summary(outdir) or {}
    if resolved["output"].get("plot", True) and rows:
        _plot(outdir)
    print_summary(summary)
    value = summary.get("gap") if summary.get("gap") is not None else summary.get("loss")
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
