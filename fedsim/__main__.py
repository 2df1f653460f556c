"""``python -m fedsim``: compose the Hydra config, validate it, run it on its engine, report.

Examples::

    python -m fedsim                                   # FedAvg, heterogeneous logreg, Ray
    python -m fedsim engine=inline sampler=cyclic num_rounds=500
    python -m fedsim -m sampler=cyclic,with_replacement seed=0,1,2 engine=inline
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError

log = logging.getLogger("fedsim")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedsim.build import resolve
    from fedsim.runner import print_summary, quiet_flower, run, summarize

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
    try:
        progress = bool(resolved["output"].get("progress", True))
        rows = run(resolved, outdir, progress, list(HydraConfig.get().overrides.task))
    except ConfigError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - report the cause, not Ray's stack
        print(f"fedsim: run failed: {err}", file=sys.stderr)
        log.debug("run failed", exc_info=True)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one diverged grid point: sweep on
            (outdir / "FAILED").write_text(f"{err}\n")
            return None
        sys.exit(1)
    summary = summarize(resolved, rows, outdir)
    if resolved["output"].get("plot", True) and rows:
        from fedsim.plot import plot_runs

        figure = plot_runs([outdir], outdir / "curves.png")
        log.info("figure: %s", figure)
    print_summary(summary)
    value = summary.get("gap") if summary.get("gap") is not None else summary.get("loss")
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
