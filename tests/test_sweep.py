"""Sweeps (``python -m fedsim -m``, :mod:`fedsim.sweep`): jobs side by side with Hydra's joblib
launcher, as Ray tasks on a Ray cluster with Hydra's Ray launcher, and ``engine=ray`` jobs on one
shared Ray; every path gives the serial sweep's metrics, to the last bit."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.errors import ConfigError
from fedsim.sweep import job_threads, parallel_map

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("engine=inline", "num_rounds=30", "seed=0,1", "sampler=uniform,cyclic")  # 4 jobs


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory) -> Path:
    """The reference: SMALL with Hydra's basic launcher (jobs one after another)."""
    out = tmp_path_factory.mktemp("serial") / "sweep"
    sweep(out, *SMALL)
    return out


def sweep(outdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim", "-m", *args, "output.progress=false"]
    cmd.append(f"hydra.sweep.dir={outdir}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(job: Path) -> list[dict[str, str]]:
    """A job's metrics rows without the wall clock (the one column that may differ)."""
    with open(job / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(fh)]


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


def assert_same_sweep(a: Path, b: Path, count: int) -> None:
    assert [p.name for p in jobs(a)] == [p.name for p in jobs(b)] == [str(i) for i in range(count)]
    for ja, jb in zip(jobs(a), jobs(b), strict=True):
        assert metrics(ja) == metrics(jb), ja.name
        assert len(metrics(ja)) > 1


def test_job_threads_rule():
    assert job_threads("auto", parallel=True) == 1
    assert job_threads("auto", parallel=False) is None
    assert job_threads(3, parallel=True) == 3
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(ConfigError, match="threads must be auto or an integer"):
            job_threads(bad, parallel=False)


def _final_gap_and_threads(job: tuple[int, int]) -> tuple[float, int]:
    from threadpoolctl import threadpool_info

    from fedsim.compare import run_one

    seed, rounds = job
    curve = run_one(["method=fedavg", f"num_rounds={rounds}", f"seed={seed}"], metric="gap")
    return float(curve["rel"][-1]), max(pool["num_threads"] for pool in threadpool_info())


def test_parallel_map_gives_the_serial_results_in_order_on_single_threaded_workers():
    """The experiment scripts' path: the same runs, in the same order, on 2 loky workers whose
    BLAS runs on one thread. The first run is the longest, so it finishes last."""
    jobs = [(0, 400), (1, 3), (2, 3), (3, 3)]
    serial = [_final_gap_and_threads(job)[0] for job in jobs]
    parallel = list(parallel_map(_final_gap_and_threads, jobs, jobs=2))
    assert [gap for gap, _ in parallel] == serial
    assert {threads for _, threads in parallel} == {1}
    assert len(set(serial)) == 4  # four different runs, so the order is checked
    with pytest.raises(ConfigError, match="jobs must be >= 1"):
        list(parallel_map(_final_gap_and_threads, jobs, jobs=0))


def test_bad_threads_is_refused(compose):
    from fedsim.build import resolve

    with pytest.raises(ConfigError, match="threads must be auto or an integer >= 1, got 0"):
        resolve(compose("threads=0"))


def test_joblib_sweep_gives_the_serial_sweep_and_its_figure(tmp_path, serial_sweep):
    """``hydra/launcher=joblib``: the same 4 jobs on 2 processes, each single-threaded and
    without a progress bar, give the serial sweep's metrics; both draw ``sweep.png``."""
    sweep(tmp_path / "joblib", *SMALL, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert_same_sweep(serial_sweep, tmp_path / "joblib", 4)
    for sweep_dir in (serial_sweep, tmp_path / "joblib"):
        assert (sweep_dir / "sweep.png").stat().st_size > 10_000
    for job in jobs(tmp_path / "joblib"):
        log = (job / "__main__.log").read_text()
        assert "threads: 1 (a job of a parallel sweep)" in log
    for job in jobs(serial_sweep):
        assert "threads:" not in (job / "__main__.log").read_text()


@pytest.mark.xdist_group("ray-engines")  # one Ray at a time on this worker
def test_engine_ray_jobs_of_a_sweep_share_one_ray(tmp_path):
    """Two ``engine=ray`` jobs: the first starts a Ray, the second joins it (and reuses its
    warm actors); each job's metrics are the inline job's."""
    args = ("num_rounds=3", "num_clients=4", "sampler=full", "seed=0,1", "output.plot=false")
    proc = sweep(tmp_path / "ray", "engine=ray", *args)
    sweep(tmp_path / "inline", "engine=inline", *args)
    assert_same_sweep(tmp_path / "ray", tmp_path / "inline", 2)
    logs = [(job / "__main__.log").read_text() for job in jobs(tmp_path / "ray")]
    assert ["one Ray for the whole sweep" in log for log in logs] == [True, False]
    assert proc.stderr.count("Started a local Ray instance") == 1


@pytest.mark.xdist_group("ray-head")  # one worker, one Ray head
def test_ray_launcher_runs_a_sweep_on_a_local_ray_head(tmp_path, ray_head, serial_sweep):
    """``hydra/launcher=ray_cluster``: 4 jobs as Ray tasks on a 127.0.0.1 head give the serial
    sweep's metrics."""
    launcher = ("hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={ray_head}")
    sweep(tmp_path / "cluster", *SMALL, *launcher, "output.plot=false")
    assert_same_sweep(serial_sweep, tmp_path / "cluster", 4)
    for job in jobs(tmp_path / "cluster"):
        assert "threads: 1 (a job of a parallel sweep)" in (job / "__main__.log").read_text()


def test_engine_ray_inside_the_ray_launcher_is_refused(tmp_path):
    """Its jobs are Ray tasks: Flower would take over, then shut down, the worker's Ray."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim", "-m", "hydra/launcher=ray_cluster", "engine=ray"]
    cmd += ["seed=0,1", f"hydra.sweep.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "engine=ray cannot run inside hydra/launcher=ray_cluster" in proc.stderr
    assert "Traceback" not in proc.stderr
