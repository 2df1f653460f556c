"""Engine parity: the same config and seed give the same metrics on inline and ray."""

import numpy as np
import pytest

from fedsim.engines.ray import shared_ray
from fedsim.runner import run

pytestmark = pytest.mark.xdist_group("ray-engines")  # one worker, one shared Ray


@pytest.fixture(scope="module", autouse=True)
def one_ray():
    """Every Ray run of this module shares one Ray (8–11 s to start each time otherwise)."""
    with shared_ray():
        yield


COMMON = (
    "method=fedavg",
    "task=logreg_synthetic",
    "num_clients=6",
    "task.samples_per_client=40",
    "sampler=uniform",
    "sampler.cohort_size=3",
    "method.local_solver=rr",
    "method.batch_size=8",
    "num_rounds=4",
    "seed=3",
)


def test_inline_and_ray_give_identical_losses(compose, tmp_path):
    inline = run(compose(*COMMON, "engine=inline"), tmp_path / "inline")
    ray = run(compose(*COMMON, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray")
    assert len(inline) == len(ray) == 5
    for column in ("loss", "gap", "dist_sq", "up_bits", "grad_evals", "clients"):
        a = np.array([r[column] for r in inline], dtype=float)
        b = np.array([r[column] for r in ray], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=0, err_msg=column)
    assert (tmp_path / "ray" / "metrics.csv").exists()
    import ray

    assert ray.is_initialized()  # shared_ray kept it across the run

    # A client whose update depends on context.state: both engines keep one state per node.
    stateful = (*COMMON, "method.client=tests.stateful_client.DampedClient")
    inline_s = run(compose(*stateful, "engine=inline"), tmp_path / "inline-state")
    ray_s = run(compose(*stateful, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray-s")
    losses = [r["loss"] for r in inline_s]
    np.testing.assert_allclose([r["loss"] for r in ray_s], losses, rtol=1e-9, atol=0)
    assert losses[-1] != inline[-1]["loss"]  # the state changed the run


LOCAL_TRAINING = {
    "scaffnew": ("method=scaffnew", "sampler=full"),
    "tamuna": ("method=tamuna", "sampler=uniform", "sampler.cohort_size=4", "method.s=2"),
    "fivegcs": ("method=fivegcs", "sampler=importance", "sampler.cohort_size=3"),
    "fivegcs_cc": (
        "method=fivegcs_cc",
        "sampler=uniform",
        "sampler.cohort_size=3",
        "compressor=perm_k",
    ),
}


def same_on_inline_and_ray(compose, tmp_path, common, columns) -> list[dict]:
    """Run ``common`` on both engines; the ``columns`` agree to rtol 1e-9. Returns inline's rows."""
    inline = run(compose(*common, "engine=inline"), tmp_path / "inline")
    ray = run(compose(*common, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray")
    assert len(inline) == len(ray)
    for column in columns:
        a = np.array([r[column] for r in inline], dtype=float)
        b = np.array([r[column] for r in ray], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=0, err_msg=column)
    return inline


@pytest.mark.parametrize("name", list(LOCAL_TRAINING))
def test_local_training_methods_agree_on_inline_and_ray(compose, tmp_path, name):
    """Client state (control variates, duals), per-client instructions and compressed payloads
    cross Ray's process boundary and give the same run as in process."""
    common = (
        "task=logreg_synthetic",
        "num_clients=6",
        "task.samples_per_client=40",
        "num_rounds=3",
        "seed=5",
        *LOCAL_TRAINING[name],
    )
    columns = ("loss", "dist_sq", "up_bits", "up_floats", "down_bits", "grad_evals")
    rows = same_on_inline_and_ray(compose, tmp_path, common, columns)
    assert len(rows) == 4 and rows[-1]["dist_sq"] < rows[0]["dist_sq"]


CLIPPED = {
    "clip_local_gdj": ("method=clip_local_gdj", "sampler=full", "method.clip_vector=full_gradient"),
    "clerr": ("method=clerr", "sampler=full", "method.batch_size=4"),
    "clipped_rr_cli": (
        "method=clipped_rr_cli",
        "sampler=cyclic",
        "sampler.cohort_size=2",
        "method.batch_size=4",
        "method.server_lr=1e-6",
        "method.client_lr=1e-6",
    ),
    "ce_fedavg": ("method=ce_fedavg", "sampler=uniform", "sampler.cohort_size=2"),
    "celgc": ("method=celgc", "sampler=full", "method.local_solver=sgd", "method.batch_size=4"),
}


@pytest.mark.parametrize("name", list(CLIPPED))
def test_clipped_methods_agree_on_inline_and_ray(compose, tmp_path, name):
    common = (
        "task=quartic",
        "num_clients=4",
        "task.dim=6",
        "task.num_points=40",
        "num_rounds=4",
        "seed=2",
        *CLIPPED[name],
    )
    rows = same_on_inline_and_ray(compose, tmp_path, common, ("loss", "up_bits", "grad_evals"))
    assert len(rows) == 5 and rows[-1]["gap"] < rows[0]["gap"]


BYZANTINE = {
    "byz_vr_marina_pp": (
        "method=byz_vr_marina_pp",
        "method.p=0.4",
        "method.clip_mult=0.5",
        "aggregator=cm",
        "aggregator.bucketing=2",
        "attack=alie",
        "attack.num_byzantine=2",
    ),
    "robust_momentum": (
        "method=robust_momentum",
        "method.clip_mult=1",
        "aggregator=rfa",
        "attack=bit_flip",
        "attack.num_byzantine=2",
    ),
}


@pytest.mark.parametrize("name", list(BYZANTINE))
def test_byzantine_methods_agree_on_inline_and_ray(compose, tmp_path, name):
    """Coins, cohorts, minibatches, bucketing, omniscient and client-side attacks, and the
    momentum buffers in context.state give the same run on both engines."""
    common = (
        "task=logreg_synthetic",
        "num_clients=6",
        "task.samples_per_client=40",
        "sampler=uniform",
        "sampler.cohort_size=4",
        "num_rounds=5",
        "seed=4",
        *BYZANTINE[name],
    )
    columns = ("loss", "dist_sq", "up_bits", "up_floats", "down_bits", "grad_evals", "clients")
    rows = same_on_inline_and_ray(compose, tmp_path, common, columns)
    assert len(rows) == 6 and rows[-1]["gap"] < rows[0]["gap"]


COHORT2 = ("sampler=uniform", "sampler.cohort_size=2")
RIEMANNIAN = {
    "rgd": ("method=rgd", "sampler=full"),
    "rsgd": ("method=rsgd", *COHORT2, "method.batch_size=4"),
    "rsvrg": ("method=rsvrg", *COHORT2, "method.inner_steps=2"),
    "rlsvrg": ("method=rlsvrg", *COHORT2, "method.p=0.5"),
    "rpage": ("method=rpage", *COHORT2, "method.p=0.5", "method.transport=projection"),
    "rmarina": (
        "method=rmarina",
        "sampler=full",
        "compressor=rand_k",
        "compressor.k=2",
        "method.p=0.5",
    ),
}


def test_riemannian_methods_agree_on_inline_and_ray(compose, tmp_path):
    """All six Riemannian methods in one test (one Ray start each, 4 rounds): coins, cohorts,
    minibatches, per-client instructions (R-LSVRG's refresh rounds send two kinds of message)
    and compressed tangent vectors give the same run on both engines, on the sphere."""
    common = (
        "task=pca_sphere",
        "task.dim=6",
        "task.samples_per_client=10",
        "num_clients=4",
        "num_rounds=4",
        "seed=3",
    )
    columns = ("loss", "dist_sq", "grad_norm_sq", "up_bits", "up_floats", "down_bits", "grad_evals")
    for name, extra in RIEMANNIAN.items():
        rows = same_on_inline_and_ray(compose, tmp_path / name, (*common, *extra), columns)
        assert len(rows) == 5 and rows[-1]["loss"] < rows[0]["loss"], name
        if name in ("rlsvrg", "rmarina"):  # both kinds of round occurred
            assert len({r["up_bits"] for r in rows[2:]}) == 2, (name, [r["up_bits"] for r in rows])
