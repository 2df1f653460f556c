"""``python -m fedsim.clean`` after ``kill -9`` of a ray run: nothing the run started survives."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedsim.clean import alive, main, orphans, registry, stale_sessions, started_by

ROOT = Path(__file__).resolve().parents[1]


def test_kill_9_of_a_ray_run_then_clean_leaves_nothing_alive(tmp_path, capsys):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    env.pop("FEDSIM_OWNER", None)  # the run marks its own processes
    cmd = [sys.executable, "-m", "fedsim", "engine=ray", "num_clients=2", "sampler=full"]
    cmd += ["num_rounds=1000000", "eval_every=20", "output.progress=false"]
    cmd += ["output.plot=false", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    metrics = tmp_path / "metrics.csv"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the ray run never wrote a row"
        time.sleep(0.2)
    children = started_by(proc.pid)
    assert len(children) >= 3  # GCS, raylet, workers ...
    assert (registry() / str(proc.pid)).exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)
    left = orphans().get(proc.pid, [])
    assert left  # Ray's agents outlive a killed driver: what the command is for
    assert main(["--grace", "3"]) == 0
    out = capsys.readouterr().out
    assert f"run {proc.pid} (gone) left" in out
    survivors = [p for p in set(children) | set(left) if alive(p)]
    assert survivors == [], survivors
    assert proc.pid not in orphans()
    assert not (registry() / str(proc.pid)).exists()
    session = [s for s in stale_sessions() if s.name.endswith(f"_{proc.pid}")]
    assert session == []  # its Ray session folder was removed too
