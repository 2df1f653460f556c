"""Checkpoint and resume (inline engine): a killed run, resumed, ends as the uninterrupted one.

Every method is checked in process (a crash right after a round, some rounds past the last
checkpoint); four of them (fedavg, tamuna, fivegcs_cc, a clipped method) are killed for real,
with ``kill -9`` at a random round, and resumed from the command line.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedsim import checkpoint
from fedsim.app import server_fn
from fedsim.build import client_factory
from fedsim.engines.inline import make_nodes, run_rounds
from fedsim.errors import ConfigError
from fedsim.metrics import read_columns
from fedsim.runner import run
from tests.test_engines import BYZANTINE, CLIPPED, LOCAL_TRAINING, RIEMANNIAN

ROOT = Path(__file__).resolve().parents[1]
LOGREG = ("task=logreg_synthetic", "num_clients=6", "task.samples_per_client=40")
QUARTIC = ("task=quartic", "num_clients=4", "task.dim=6", "task.num_points=40")
SPHERE = ("task=pca_sphere", "task.dim=6", "task.samples_per_client=10", "num_clients=4")
LINEAR_TORCH = ("task=linear_torch", "partition=iid", "num_clients=3", "sampler=uniform")
LINEAR_TORCH += ("sampler.cohort_size=2",)
LORA = ("fed_fpft", "fed_lora", "fed_asymm_lora", "fed_cola", "fed_rac_lora")
CASES = {
    "fedavg": (*LOGREG, "method=fedavg", "sampler=uniform", "sampler.cohort_size=3"),
    **{k: (*LOGREG, *v) for k, v in LOCAL_TRAINING.items()},
    **{k: (*QUARTIC, *v) for k, v in CLIPPED.items()},
    "l0l1_gd": (*QUARTIC, "method=l0l1_gd", "sampler=full"),
    **{k: (*LOGREG, "sampler=uniform", "sampler.cohort_size=4", *v) for k, v in BYZANTINE.items()},
    **{k: (*SPHERE, *v) for k, v in RIEMANNIAN.items()},
    # links of 5 rounds: the checkpoint (round 4) is mid-link, a merge (5) precedes the crash (6)
    **{k: (*LINEAR_TORCH, f"method={k}") for k in LORA},
    "biased_sgd": (*LOGREG, "method=biased_sgd", "sampler=full"),
    "dsgd": (*LOGREG, "method=dsgd", "sampler=uniform", "sampler.cohort_size=3"),
}
COLUMNS_BUT_WALL = (
    "round", "clients", "loss", "grad_norm_sq", "gap", "dist_sq", "accuracy", "test_accuracy",
    "up_bits", "down_bits", "up_floats", "down_floats", "grad_evals", "failures",
)  # fmt: skip


class Crash(Exception):
    pass


def same_metrics(a: Path, b: Path) -> None:
    ca, cb = read_columns(a / "metrics.csv"), read_columns(b / "metrics.csv")
    for column in COLUMNS_BUT_WALL:
        np.testing.assert_array_equal(cb[column], ca[column], err_msg=column)


@pytest.mark.parametrize("name", list(CASES))
def test_every_method_resumes_to_the_uninterrupted_run(compose, tmp_path, name):
    cfg = compose(*CASES[name], "num_rounds=9", "seed=7", "engine=inline")
    run(cfg, tmp_path / "full")

    # the same run, checkpointed after rounds 4 and 8, crashing after round 6
    crashing = compose(
        *CASES[name], "num_rounds=9", "seed=7", "engine=inline", "checkpoint_every=4"
    )
    outdir = tmp_path / "crashed"
    strategy = server_fn(crashing, str(outdir), False, None).server.strategy
    nodes = make_nodes(client_factory(crashing), crashing["num_clients"], crashing["seed"])

    def after(rnd: int) -> None:
        if rnd == 6:
            raise Crash

    with pytest.raises(Crash):
        run_rounds(strategy, nodes, crashing["num_rounds"], after)
    assert len((outdir / "metrics.csv").read_text().splitlines()) == 1 + 7  # rounds 0..6
    assert checkpoint.load(outdir).round == 4
    run(cfg, outdir, resume=True)
    same_metrics(tmp_path / "full", outdir)


def test_resume_needs_a_checkpoint_and_the_inline_engine(compose, tmp_path):
    cfg = compose(*CASES["fedavg"], "num_rounds=3", "engine=inline")
    with pytest.raises(ConfigError, match="nothing to resume from"):
        run(cfg, tmp_path, resume=True)
    (tmp_path / "checkpoint.pkl").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot be read"):
        run(cfg, tmp_path, resume=True)
    with pytest.raises(ConfigError, match="deployment runs cannot resume"):
        run(compose(*CASES["fedavg"], "engine=deployment"), tmp_path, resume=True)


def kill_9_after_row(proc: subprocess.Popen, metrics: Path, row: int, timeout: float) -> None:
    """SIGKILL ``proc`` once ``metrics`` holds more than ``row`` rows (header included)."""
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and len(metrics.read_text().splitlines()) > row):
        if proc.poll() is not None:  # the message, then the end of any native stack trace
            err = proc.stderr.read()
            pytest.fail(f"finished before the kill: {err[:3000]}\n...\n{err[-1000:]}")
        assert time.monotonic() < deadline, "the run never got that far"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def saved_config(outdir: Path) -> dict:
    """The resolved config a run saved (what ``python -m fedsim resume=DIR`` runs)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(outdir / "config.yaml"), resolve=True)


def fedsim(*args: str) -> subprocess.Popen:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    cmd = [sys.executable, "-m", "fedsim", *args, "output.progress=false", "output.plot=false"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


KILLED = {  # a long enough run that a kill lands mid-way, on 2 cores
    "fedavg": (*CASES["fedavg"], "num_rounds=1500"),
    "tamuna": (*CASES["tamuna"], "num_rounds=800"),
    "fivegcs_cc": (*CASES["fivegcs_cc"], "num_rounds=800"),
    "clerr": (*CASES["clerr"], "num_rounds=1000"),
}


@pytest.mark.parametrize("name", list(KILLED))
def test_kill_9_at_a_random_round_then_resume_gives_the_same_metrics(compose, tmp_path, name):
    args = (*KILLED[name], "engine=inline", "seed=1", "checkpoint_every=13")
    full = run(compose(*args), tmp_path / "full")
    outdir = tmp_path / "killed"
    proc = fedsim(*args, f"hydra.run.dir={outdir}")
    metrics = outdir / "metrics.csv"
    kill_9_after_row(proc, metrics, random.Random().randrange(40, len(full) // 2), 120)
    assert (outdir / "checkpoint.pkl").exists()
    assert len(metrics.read_text().splitlines()) < 1 + len(full)  # it really was cut short
    if name == "fedavg":  # the command line's resume=DIR once
        resumed = fedsim(f"resume={outdir}")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err[-2000:]
    else:  # the same call in process (a subprocess costs seconds of imports)
        run(saved_config(outdir), outdir, resume=True)
    same_metrics(tmp_path / "full", outdir)
    assert not (outdir / "checkpoint.pkl").exists()  # a completed run keeps none


RAY_KILLED = {  # rounds: a kill lands mid-way; cohorts as in CASES
    "fedavg": (*CASES["fedavg"], "num_rounds=40"),
    "tamuna": (*CASES["tamuna"], "num_rounds=40"),
    "fivegcs_cc": (*CASES["fivegcs_cc"], "num_rounds=40"),
    "clerr": (*CASES["clerr"], "num_rounds=40"),
}


@pytest.mark.xdist_group("ray-head")  # one worker, one Ray head
@pytest.mark.parametrize("name", list(RAY_KILLED))
def test_a_ray_run_killed_at_a_random_round_resumes_on_ray_to_the_same_metrics(
    compose, tmp_path, ray_head, name
):
    """The node states travel in properties messages through Flower's Simulation Engine, out
    for the checkpoint and back in on resume. The reference is the uninterrupted inline run
    (the engines agree to the last bit on these runs, tests/test_engines.py)."""
    args = (*RAY_KILLED[name], "seed=1", "checkpoint_every=5")
    run(compose(*args, "engine=inline"), tmp_path / "full")
    outdir = tmp_path / "killed"
    ray = ("engine=ray", f"engine.address={ray_head}", "engine.round_timeout=60")
    proc = fedsim(*args, *ray, f"hydra.run.dir={outdir}")
    kill_9_after_row(proc, outdir / "metrics.csv", random.Random().randrange(7, 20), 180)
    assert checkpoint.load(outdir).round >= 5
    run(saved_config(outdir), outdir, resume=True)  # joins the head again, from this process
    same_metrics(tmp_path / "full", outdir)
