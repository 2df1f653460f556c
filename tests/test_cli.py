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
    ("args", "message"),
    [
        (["method=nonexistent"], "fedavg"),  # Hydra lists the available methods
        (["sampler=uniform", "sampler.cohort_size=50", "num_clients=20"], "cohort_size"),
        (["method.client_lr=-0.1"], "method.client_lr must be a positive number"),
        (["method.local_solver=adam"], "valid choices: gd, sgd, rr, so"),
        (["task=logreg_libsvm", "task.path=/nonexistent/a9a"], "/nonexistent/a9a"),
        (["engine.client_resources.num_cpus=512"], "CPUs"),
        (["sampler=cyclic", "sampler.cohort_size=3", "num_clients=20"], "divisible"),
        (["engine.name=spark"], "valid choices: deployment, inline, ray"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message_and_no_traceback(args, message, tmp_path):
    out = fedsim(*args, tmp_path=tmp_path)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert message in text, text
    assert "Traceback" not in text
    assert not (tmp_path / "metrics.csv").exists()


def test_a_small_inline_run_writes_metrics_config_summary_and_figure(tmp_path):
    out = fedsim("engine=inline", "num_rounds=5", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("metrics.csv", "config.yaml", "summary.json", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("round,wall_s,clients,loss,grad_norm_sq,gap,dist_sq,accuracy")
    assert len(lines) == 1 + 6
    assert "gap" in out.stdout  # the summary table
