"""Run status in ``summary.json``, divergence as its own outcome, and plots of unfinished runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsim.plot import BLOWUP, load_runs, plot_runs, until_blowup
from fedsim.runner import run
from fedsim.status import Terminated, exit_code, read_summary, status_of
from strategies.base import RunAborted, RunDiverged

ROOT = Path(__file__).resolve().parents[1]
SMALL = (
    "engine=inline",
    "num_clients=6",
    "sampler=full",
    "task.samples_per_client=30",
    "num_rounds=20",
)


def fedsim(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim", *args, "output.progress=false"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_a_completed_run_says_so_and_a_diverged_one_stops_at_the_blow_up(compose, tmp_path):
    rows = run(compose(*SMALL), tmp_path / "ok")
    assert summary(tmp_path / "ok")["status"] == "completed"
    assert summary(tmp_path / "ok")["rounds"] == 20 == rows[-1]["round"]

    with pytest.raises(RunDiverged, match="at round 1 exceeds") as caught:
        run(compose(*SMALL, "method.client_lr=1e6"), tmp_path / "big")
    s = summary(tmp_path / "big")
    assert s["status"] == "diverged" == status_of(caught.value)
    assert "method.client_lr=1e+06" in s["reason"]  # the message names the stepsize knobs
    assert s["rounds"] == 1 and s["failures"] == 0  # stopped at once, not a client failure
    lines = (tmp_path / "big" / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 2  # header, rounds 0 and 1: nothing computed is lost
    assert exit_code(caught.value) == 3


def test_only_non_finite_losses_count_when_the_ratio_is_off(compose, tmp_path):
    cfg = compose(*SMALL, "method.client_lr=1e6", "max_loss_ratio=null")
    with pytest.raises(RunDiverged, match="is not finite"):
        run(cfg, tmp_path)
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    losses = np.array([float(r.split(",")[3]) for r in rows])
    assert np.isfinite(losses[:-1]).all() and not np.isfinite(losses[-1])
    assert 2 < len(losses) < 21  # ran on past 1e6 × f(x0), stopped at the first inf


def test_aborted_runs_are_marked(compose, tmp_path, monkeypatch):
    from clients.fedavg import FedAvgClient

    def crash(self, parameters, config):
        raise RuntimeError("boom")

    monkeypatch.setattr(FedAvgClient, "fit", crash)
    with pytest.raises(RunAborted) as caught:
        run(compose(*SMALL, "max_failed_rounds=2"), tmp_path)
    assert summary(tmp_path)["status"] == "aborted" == status_of(caught.value)
    assert "consecutive rounds failed" in summary(tmp_path)["reason"]


def test_the_diverging_sweep_completes_and_the_plot_draws_both_runs(tmp_path):
    """The README's bad sweep: one diverged job does not stop the sweep, nor the plot tool."""
    proc = fedsim(
        "-m", "engine=inline", "method.client_lr=1e6,auto", "num_rounds=20",
        f"hydra.sweep.dir={tmp_path}",
    )  # fmt: skip
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert summary(tmp_path / "0")["status"] == "diverged"
    assert "run diverged" in err and "lower the stepsize" in err
    assert summary(tmp_path / "1")["status"] == "completed"
    runs = load_runs([tmp_path])
    assert [r.status for r in runs] == ["diverged", "completed"]
    assert plot_runs([tmp_path]).stat().st_size > 0


def test_blown_up_values_end_the_curve_and_old_csvs_still_plot(tmp_path):
    xs = np.arange(6.0)
    ys = np.array([1.0, 1e40, 1e280, np.inf, np.nan, 1.0])
    kx, ky, blown = until_blowup(xs, ys)
    assert blown and ky.tolist() == [1.0, 1e40]  # 1e280 > BLOWUP: log axes overflow there
    assert BLOWUP < 1e280
    keep = np.array([1.0, np.nan, 0.5])
    assert until_blowup(np.arange(3.0), keep)[2] is False
    header = "round,gap,loss"
    body = "\n".join(f"{i},{float(y)!r},{float(y)!r}" for i, y in enumerate(ys))
    (tmp_path / "metrics.csv").write_text(f"{header}\n{body}\n".replace("nan", ""))
    assert plot_runs([tmp_path]).stat().st_size > 0  # OverflowError from matplotlib before


def _wait_for_rows(path: Path, rows: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} never reached {rows} rows")


def test_sigterm_marks_the_run_interrupted_and_kill_9_leaves_it_running(tmp_path):
    long = ("engine=inline", "num_rounds=1000000", "eval_every=100", "output.plot=false")
    proc = fedsim(*long, f"hydra.run.dir={tmp_path / 'term'}")
    _wait_for_rows(tmp_path / "term" / "metrics.csv", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    s = summary(tmp_path / "term")
    assert s["status"] == "interrupted" and "SIGTERM" in s["reason"]
    assert s["rounds"] >= 200  # the rows so far are in the summary and in metrics.csv
    from fedsim.checkpoint import load

    assert load(tmp_path / "term").round >= s["rounds"]  # stopped after a round, checkpointed

    proc = fedsim(*long, f"hydra.run.dir={tmp_path / 'kill'}")
    _wait_for_rows(tmp_path / "kill" / "metrics.csv", 2)
    proc.kill()
    proc.communicate(timeout=60)
    assert read_summary(tmp_path / "kill")["status"] == "running"  # not a finished run
    runs = load_runs([tmp_path])
    assert {r.directory.name: r.status for r in runs} == {"kill": "running", "term": "interrupted"}


def test_exit_codes():
    assert exit_code(Terminated()) == 143 and exit_code(KeyboardInterrupt()) == 130
    assert exit_code(RunAborted("x")) == 1 and exit_code(ValueError("x")) == 1
    assert status_of(ValueError("x")) == "failed"


def test_without_a_terminal_progress_is_a_log_line_every_tenth_of_the_run(compose, caplog):
    """Under pytest stderr is no terminal: no bar, one INFO line per 10 rounds of 100."""
    import logging

    cfg = compose(*SMALL[:-1], "num_rounds=100", "eval_every=5")
    cfg["output"]["progress"] = True
    with caplog.at_level(logging.INFO, logger="fedsim"):
        rows = run(cfg, None, progress=True)
    lines = [r.getMessage() for r in caplog.records if "rounds/s" in r.getMessage()]
    assert len(lines) == 10 and lines[-1].startswith("round 100/100 (100%)")
    gap50 = next(r["gap"] for r in rows if r["round"] == 50)
    assert f"gap={gap50:.3e}" in lines[4]  # the metric of the round the line names


def test_logger_tensorboard_writes_every_column_and_the_running_totals(compose, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = run(compose(*SMALL[:-1], "num_rounds=6", "logger=tensorboard"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    gap = events.Scalars("gap")
    assert [e.step for e in gap] == [r["round"] for r in rows]
    np.testing.assert_allclose([e.value for e in gap], [r["gap"] for r in rows], rtol=1e-6)
    bits = np.cumsum([r["up_bits"] + r["down_bits"] for r in rows])
    np.testing.assert_allclose([e.value for e in events.Scalars("cum_bits")], bits, rtol=1e-6)


def test_a_checkpoint_a_node_cannot_serve_is_skipped_not_fatal(
    compose, tmp_path, monkeypatch, caplog
):
    """A node that cannot send its state (hung, crashed) costs only that checkpoint (a warning
    says so): the run goes on and completes."""
    import logging

    from strategies.base import FedsimStrategy

    honest = FedsimStrategy.node_states
    saved = []

    def flaky(self):
        if saved:  # the first checkpoint works, later ones find a node gone
            raise TimeoutError("node 3 did not answer")
        saved.append(1)
        return honest(self)

    monkeypatch.setattr(FedsimStrategy, "node_states", flaky)
    cfg = compose(*SMALL, "num_rounds=6", "checkpoint_every=2", "checkpoint_every_s=null")
    with caplog.at_level(logging.WARNING):
        rows = run(cfg, tmp_path)
    assert len(rows) == 7 and summary(tmp_path)["status"] == "completed"
    skipped = [r.getMessage() for r in caplog.records if "checkpoint skipped" in r.getMessage()]
    assert skipped == [
        "round 4: checkpoint skipped, a node did not send its state: node 3 did not answer"
    ]
