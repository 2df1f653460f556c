"""Deployment: a SuperLink and three SuperNodes on 127.0.0.1; fedavg, tamuna, a label-flipping
Byzantine client under robust momentum and R-MARINA on the sphere via flwr run."""

import os
from pathlib import Path

import numpy as np

from fedsim.engines.deployment import LocalFederation, submit
from fedsim.metrics import read_metrics
from fedsim.runner import run_overrides

OVERRIDES = [
    "method=fedavg",
    "task=logreg_synthetic",
    "num_clients=3",
    "num_rounds=2",
    "sampler=full",
    "task.samples_per_client=30",
    "engine=deployment",
]


STATEFUL = [
    "method=tamuna",
    "method.s=2",
    "method.p=0.5",
    "task=logreg_synthetic",
    "task.dim=40",
    "num_clients=3",
    "num_rounds=4",
    "sampler=full",
    "task.samples_per_client=30",
    "engine=deployment",
]


# A Byzantine SuperNode: partition 1 computes its momentum on flipped labels; the server takes
# the coordinate-wise median.
BYZANTINE = [
    "method=robust_momentum",
    "task=logreg_synthetic",
    "num_clients=3",
    "num_rounds=3",
    "sampler=full",
    "task.samples_per_client=30",
    "aggregator=cm",
    "attack=label_flip",
    "attack.ids=[1]",
    "engine=deployment",
]


# R-MARINA on the sphere: a shared coin, Rand-K tangent differences re-projected on the server
# (seed 0: round 2 compressed, round 3 dense).
RMARINA = [
    "method=rmarina",
    "task=pca_sphere",
    "task.dim=8",
    "task.samples_per_client=10",
    "num_clients=3",
    "num_rounds=3",
    "sampler=full",
    "compressor=rand_k",
    "compressor.k=2",
    "method.p=0.5",
    "engine=deployment",
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie has exited; its parent reaps it
        return fh.read().split()[2] != "Z"


def test_deploy_three_supernodes_then_stop_by_pid(tmp_path):
    fed = LocalFederation(3, port=19092, supernode_port=19200, logdir=tmp_path / "logs")
    fed.start()
    try:
        assert len(fed.pids) == 4 and all(alive(p) for p in fed.pids)
        record = submit(
            OVERRIDES, str(tmp_path / "run"), fed.address, home=fed.home, run_timeout=300
        )
        assert record["status"] == "finished:completed"
        # A stateful method: TAMUNA's control variates live in the SuperNodes' context.state
        # across rounds, its uplink is the pattern's share of the model.
        record = submit(
            STATEFUL, str(tmp_path / "tamuna"), fed.address, home=fed.home, run_timeout=300
        )
        assert record["status"] == "finished:completed"
        record = submit(
            BYZANTINE, str(tmp_path / "byzantine"), fed.address, home=fed.home, run_timeout=300
        )
        assert record["status"] == "finished:completed"
        record = submit(
            RMARINA, str(tmp_path / "rmarina"), fed.address, home=fed.home, run_timeout=300
        )
        assert record["status"] == "finished:completed"
    finally:
        fed.stop()
    assert not any(alive(p) for p in fed.pids)
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["clients"] for r in rows] == [0, 3, 3]
    # The deployed run computes what the inline engine computes for the same overrides.
    inline = run_overrides([*OVERRIDES[:-1], "engine=inline", "output.progress=false"])
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in inline], rtol=1e-9)
    rows = read_metrics(tmp_path / "tamuna" / "metrics.csv")
    inline = run_overrides([*STATEFUL[:-1], "engine=inline", "output.progress=false"])
    for column in ("loss", "up_bits", "up_floats"):
        np.testing.assert_allclose(
            [r[column] for r in rows], [r[column] for r in inline], rtol=1e-9, err_msg=column
        )
    rows = read_metrics(tmp_path / "byzantine" / "metrics.csv")
    inline = run_overrides([*BYZANTINE[:-1], "engine=inline", "output.progress=false"])
    honest = run_overrides([*BYZANTINE[:-3], "engine=inline", "output.progress=false"])
    for column in ("loss", "gap", "up_bits"):
        np.testing.assert_allclose(
            [r[column] for r in rows], [r[column] for r in inline], rtol=1e-9, err_msg=column
        )
    assert rows[-1]["loss"] != honest[-1]["loss"]  # the flipped labels changed the run
    rows = read_metrics(tmp_path / "rmarina" / "metrics.csv")
    inline = run_overrides([*RMARINA[:-1], "engine=inline", "output.progress=false"])
    for column in ("loss", "grad_norm_sq", "dist_sq", "up_bits", "up_floats"):
        np.testing.assert_allclose(
            [r[column] for r in rows], [r[column] for r in inline], rtol=1e-9, err_msg=column
        )
    assert len({r["up_bits"] for r in rows[1:]}) == 2  # a compressed and a dense round


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read() and alive(int(entry)):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_deploy_engine_runs_a_relative_data_path_and_cleans_up(tmp_path, monkeypatch):
    """``engine=deployment`` as the CLI runs it: its own SuperLink and SuperNodes, a data path
    relative to where the user stands, and no process left behind."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    overrides = [
        "method=fedavg",
        "task=logreg_libsvm",
        "task.path=../shared/data/a9a",
        "task.max_samples=400",
        "partition=iid",
        "num_clients=2",
        "num_rounds=2",
        "sampler=full",
        "engine=deployment",
        "engine.port=19093",
        "engine.supernode_port=19210",
        "engine.run_timeout=300",
    ]
    rows = run_overrides(overrides, tmp_path / "run")
    assert [r["clients"] for r in rows] == [0, 2, 2]
    assert rows[-1]["gap"] < rows[0]["gap"]
    assert processes_mentioning("19093") == []  # the SuperLink and SuperNodes are gone
