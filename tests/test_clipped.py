"""Clipped methods under (L0,L1)-smoothness: the quartic, where clipping happens, the schedule."""

import numpy as np
import pytest

from fedsim.blocks.clipping import clipped_stepsize
from fedsim.build import task_of
from fedsim.runner import run
from tests.test_local_training import drive

QUARTIC = ("engine=inline", "+experiment=generalized_smoothness")
SMALL = ("engine=inline", "task=quartic", "num_clients=5", "task.dim=8", "task.num_points=60")


def test_quartic_gradient_optimum_and_sorted_split(compose):
    task = task_of(compose(*SMALL, "sampler=full"))
    x = np.random.default_rng(0).standard_normal(task.dim)
    e = np.eye(task.dim)[2] * 1e-6
    fd = (task.full.loss(x + e) - task.full.loss(x - e)) / 2e-6
    assert fd == pytest.approx(task.full.grad(x)[2], rel=1e-6)
    x_star, f_star = task.optimum()
    assert np.linalg.norm(task.full.grad(x_star)) < 1e-8 * np.linalg.norm(task.full.grad(x))
    assert f_star == pytest.approx(task.full.loss(x_star))
    norms = [np.linalg.norm(c.points, axis=1) for c in task.clients]
    assert all(a.max() <= b.min() for a, b in zip(norms, norms[1:], strict=False))
    np.testing.assert_array_equal(task.x0, np.full(task.dim, 10.0))


def local_path_gradient(objective, x, lr, steps):
    """The average gradient of ``steps`` plain (unclipped) GD steps from ``x``."""
    z, g = x.copy(), np.zeros_like(x)
    for _ in range(steps):
        s = objective.grad(z)
        g += s / steps
        z = z - lr * s
    return g


def test_clipping_is_on_the_server_only(compose):
    cfg = compose(
        *SMALL,
        "sampler=full",
        "method=clip_local_gdj",
        "method.client_lr=1e-5",
        "method.c0=10",
        "method.c1=0.01",
        "num_rounds=3",
    )
    task = task_of(cfg)
    x = task.x0.copy()
    m = cfg["method"]
    for _ in range(3):
        g = sum(
            w * local_path_gradient(c, x, m["client_lr"], m["local_steps"])
            for w, c in zip(task.weights, task.clients, strict=True)
        )
        x = x - clipped_stepsize(g, m["c0"], m["c1"]) * g
    rows = run(cfg, None)
    x_star, _ = task.optimum()
    assert rows[-1]["dist_sq"] == pytest.approx(float(np.sum((x - x_star) ** 2)), rel=1e-10)
    # the client steps are plain: the gradient is ~1e5 here, a clipped client would move far less
    assert np.linalg.norm(task.full.grad(task.x0)) * m["client_lr"] > 0.1


def test_c1_zero_is_a_constant_server_stepsize(compose):
    common = (*SMALL, "sampler=full", "method.client_lr=1e-6", "num_rounds=20")
    clipped = run(compose(*common, "method=clip_local_gdj", "method.c0=5e4", "method.c1=0"), None)
    cfg = compose(*common, "method=clip_local_gdj", "method.c0=5e4", "method.c1=0")
    task = task_of(cfg)
    x = task.x0.copy()
    for _ in range(20):  # x ← x − (1/c0) g, no dependence on ‖g‖
        g = sum(
            w * local_path_gradient(c, x, 1e-6, cfg["method"]["local_steps"])
            for w, c in zip(task.weights, task.clients, strict=True)
        )
        x = x - g / 5e4
    x_star, _ = task.optimum()
    assert clipped[-1]["dist_sq"] == pytest.approx(float(np.sum((x - x_star) ** 2)), rel=1e-10)


def test_clipped_rr_cli_visits_each_client_once_per_meta_epoch(compose):
    cfg = compose(
        *SMALL,
        "num_clients=6",
        "sampler=cyclic",
        "sampler.cohort_size=2",
        "method=clipped_rr_cli",
        "method.server_lr=1e-6",
        "method.client_lr=1e-6",
        "method.c0=1e3",
        "method.c1=1e-2",
        "num_rounds=12",
    )
    seen, starts = [], {}

    def record(rnd, strategy, nodes):
        seen.append(strategy._cohort.ids.tolist())
        if rnd % 3 == 0:  # meta-epoch end: the clipped step from the meta-epoch's start
            starts[rnd] = strategy.x.copy()

    drive(cfg, record)
    for epoch in range(4):
        clients = sorted(sum(seen[3 * epoch : 3 * epoch + 3], []))
        assert clients == list(range(6))
    assert len(starts) == 4 and not np.allclose(starts[3], starts[6])


def test_clipped_rr_cli_needs_cyclic_cohorts(compose):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="sampler=cyclic"):
        compose(*SMALL, "sampler=uniform", "sampler.cohort_size=2", "method=clipped_rr_cli")


def final_gaps(compose, *overrides, seeds=range(10)) -> np.ndarray:
    return np.array(
        [run(compose(*QUARTIC, *overrides, f"seed={s}"), None)[-1]["gap"] for s in seeds]
    )


def test_server_clipping_beats_client_clipping_on_the_quartic(compose):
    """d = 100, x0 = 10·1, 10 clients, 200 rounds, tuned defaults, mean over 10 seeds."""
    ce_full = final_gaps(compose, "method=ce_fedavg", "sampler=full").mean()
    ce_pp = final_gaps(
        compose, "method=ce_fedavg", "sampler=uniform", "sampler.cohort_size=2"
    ).mean()
    gdj = final_gaps(compose, "method=clip_local_gdj", "sampler=full").mean()
    rr_cli = final_gaps(
        compose, "method=clipped_rr_cli", "sampler=cyclic", "sampler.cohort_size=2"
    ).mean()
    assert gdj < ce_full, (gdj, ce_full)
    assert rr_cli < ce_pp, (rr_cli, ce_pp)


def test_selection_rule_takes_the_lowest_tail_mean_and_ranks_diverged_runs_last(tmp_path):
    import sys
    from pathlib import Path

    import yaml

    sys.path.insert(
        0, str(Path(__file__).resolve().parents[1] / "experiments/generalized_smoothness")
    )
    from select_best import select

    def job(i, c0, losses, failed=False):
        d = tmp_path / "sweep" / str(i)
        d.mkdir(parents=True)
        cfg = {"num_rounds": len(losses) - 1, "method": {"name": "m", "c0": c0, "c1": 0.0}}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        rows = "\n".join(f"{r},{v}" for r, v in enumerate(losses))
        (d / "metrics.csv").write_text("round,loss\n" + rows + "\n")
        if failed:
            (d / "FAILED").write_text("diverged\n")

    job(0, 1.0, [9, 5, 4, 3, 2, 1, 1, 1, 1, 1, 3.0])  # tail (rounds 8-10): 5/3
    job(1, 2.0, [9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1.0])  # tail 1: the lowest
    job(2, 3.0, [9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0], failed=True)  # lower, but it diverged
    best = select([tmp_path / "sweep"])
    values, score, tried = best["sweep"]
    assert values == {"c0": 2.0, "c1": 0.0} and score == pytest.approx(1.0) and tried == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=clip_local_gdj", "method.client_lr=auto"), "no 'auto' value"),
        (("method=clip_local_gdj", "method.c1=-1"), "method.c1 must be a number >= 0"),
        (("method=clip_local_gdj", "method.clip_vector=norm"), "valid choices: full_gradient"),
        (("method=clerr", "method.local_solver=gd"), "is not one of rr, so"),
        (("method=clipped_rr_cli", "method.clip_vector=full_gradient"), "needs every client"),
        (("method=ce_fedavg", "method.client_clip=0"), "method.client_clip"),
    ],
)
def test_impossible_clipped_settings_are_refused(compose, overrides, message):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        compose(*SMALL, "sampler=cyclic", "sampler.cohort_size=1", *overrides)
    assert message in str(err.value)
