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
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError

log = logging.getLogger("fedsim")


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: stop the run as Ctrl-C would (status interrupted, exit code 143)."""
    from fedsim.status import Terminated

    raise Terminated


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

    quiet_flower()
    try:
        resolved = resolve(cfg, solve=True)
    except ConfigError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)
    outdir = Path(HydraConfig.get().runtime.output_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(resolved), outdir / "config.yaml")
    log.info(
        "%s on %s (%s engine) → %s",
        resolved["method"]["name"],
        resolved["task"]["name"],
        resolved["engine"]["name"],
        outdir,
    )
    signal.signal(signal.SIGTERM, _terminate)
    try:
        progress = bool(resolved["output"].get("progress", True))
        rows = run(resolved, outdir, progress, list(HydraConfig.get().overrides.task))
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
