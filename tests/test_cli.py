"""``python -m fedsim``: bad input stops before any engine starts, with a clear message."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fedsim(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            f"hydra.run.dir={tmp_path}",
            "output.progress=false",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        # Hydra's own composition errors (unknown group option) exit 1 and list the options.
        (["method=nonexistent"], 1, "Available options in 'method'"),
        (["sampler=uniform", "sampler.cohort_size=50", "num_clients=20"], 2, "cohort_size"),
        (["method.client_lr=-0.1"], 2, "method.client_lr must be a positive finite number"),
        (["method.client_lr=inf"], 2, "method.client_lr must be a positive finite number"),
        (["method.local_solver=adam"], 2, "valid choices: gd, sgd, rr, so"),
        (["task=logreg_libsvm", "task.path=/nonexistent/a9a"], 2, "/nonexistent/a9a"),
        (["task=logreg_libsvm", "partition=iid", "task.path=pyproject.toml"], 2, "not a LIBSVM"),
        (["engine.client_resources.num_cpus=512"], 2, "CPUs"),
        (["engine.address=127.0.0.1:9"], 2, "no Ray cluster answers"),
        (["sampler=cyclic", "sampler.cohort_size=3", "num_clients=20"], 2, "divisible"),
        (["engine.name=spark"], 2, "valid choices: deployment, inline, ray"),
        (["num_rounds=0"], 2, "num_rounds must be an integer >= 1"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message_and_no_traceback(args, status, message, tmp_path):
    out = fedsim(*args, tmp_path=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == status, text
    assert message in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "metrics.csv").exists()


def test_the_default_job_runs_on_ray_and_writes_metrics_and_a_figure(tmp_path):
    """``python -m fedsim`` with no arguments (here only the output folder is chosen)."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "fedsim", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 101  # header, round 0, rounds 1..100
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "ray" in (tmp_path / "summary.json").read_text()


def test_a_small_inline_run_writes_metrics_config_summary_and_figure(tmp_path):
    out = fedsim("engine=inline", "num_rounds=5", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("metrics.csv", "config.yaml", "summary.json", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("round,wall_s,clients,loss,grad_norm_sq,gap,dist_sq,accuracy")
    assert len(lines) == 1 + 6
    assert "gap" in out.stdout  # the summary table
