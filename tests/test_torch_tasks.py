"""Torch tasks of fedsim.tasks.finetune: finetune_digits (pretrained on digits 0–4, cached),
linear_torch (closed-form x*, exact constants), mlp_large (≥ 1M parameters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedsim.errors import ConfigError
from fedsim.runner import run
from fedsim.tasks import finetune as ft
from fedsim.tasks.mlp import MLPObjective
from fedsim.tasks.registry import TASK_DEFAULTS, TASK_NAMES, build_task, clear_cache

NAMES = ("finetune_digits", "linear_torch", "mlp_large")
CONF = Path(__file__).resolve().parents[1] / "conf" / "task"

PARTITIONS = [
    {"name": "iid"},
    {"name": "dirichlet", "alpha": 0.5},
    {"name": "by_label", "classes_per_client": 2},
    {"name": "sorted"},
    {"name": "replicated"},
]
SMALL_FINETUNE = {"name": "finetune_digits", "hidden": 8, "pretrain_steps": 60}


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory):
    """Pretrained models go to a fresh cache: every test sees this file's own computations."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDSIM_CACHE", str(tmp_path_factory.mktemp("fedsim-cache")))
        clear_cache()
        yield
    clear_cache()


def _count_pretraining(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = ft.pretrain

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ft, "pretrain", counted)
    return calls


# --- finetune_digits ------------------------------------------------------------------------


def test_the_pretrained_model_knows_digits_0_to_4_and_the_task_is_digits_5_to_9():
    task = build_task({"name": "finetune_digits"}, {"name": "iid"}, 4, 0)
    assert task.dim == (64 * 64 + 64) * 2 + 64 * 5 + 5 and task.optimum() is None
    split = ft.digits_split(0.2)  # the task's default test_fraction
    held = split.labels_test < 5
    seen = MLPObjective(task.full.module, split.a_test[held], split.labels_test[held], 1.0)
    assert seen.accuracy(task.x0) > 0.9
    # fine-tuning data: the train rows of digits 5–9, labels shifted to 0–4
    assert task.full.num_samples == int(np.sum(split.labels >= 5))
    assert set(task.full.y.tolist()) == {0, 1, 2, 3, 4}
    assert task.test is not None and task.test.num_samples == int(np.sum(~held))
    assert task.full.accuracy(task.x0) < 0.5  # untuned: the head knows other digits


def test_the_pretrained_vector_is_cached_and_a_corrupt_cache_is_recomputed(monkeypatch):
    calls = _count_pretraining(monkeypatch)
    clear_cache()
    folder = ft.pretrained_path({}).parent
    before = set(folder.glob("pretrained-*.npz"))
    first = build_task(SMALL_FINETUNE, {"name": "iid"}, 3, 0).x0.copy()
    assert len(calls) == 1
    files = sorted(set(folder.glob("pretrained-*.npz")) - before)
    assert len(files) == 1
    for content in (None, b"", b"PK\x03\x04 truncated", b"not an npz"):
        clear_cache()
        if content is not None:
            for f in files:
                f.write_bytes(content)
        before = len(calls)
        again = build_task(SMALL_FINETUNE, {"name": "iid"}, 3, 0)
        assert len(calls) == before + (content is not None)
        np.testing.assert_array_equal(again.x0, first)
    clear_cache()
    for f in files:  # a readable file of the wrong length is recomputed too
        np.savez(f, x=np.zeros(3), f=0.0)
    build_task(SMALL_FINETUNE, {"name": "iid"}, 3, 0)
    assert len(calls) == 5
    # another setting is another file; the run seed changes nothing
    clear_cache()
    build_task(SMALL_FINETUNE, {"name": "iid"}, 3, 5)
    build_task({**SMALL_FINETUNE, "pretrain_lr": 0.02}, {"name": "iid"}, 3, 0)
    assert len(calls) == 6


def test_finetune_gradient_matches_finite_differences():
    task = build_task(SMALL_FINETUNE, {"name": "dirichlet", "alpha": 1.0}, 3, 0)
    obj = task.clients[1]
    x = task.x0 + 0.05 * np.random.default_rng(0).standard_normal(task.dim)
    g = obj.grad(x)
    rng = np.random.default_rng(1)
    coords = np.concatenate(
        [
            rng.choice(np.arange(lay.weight_offset, lay.bias_offset + lay.out_features), 4)
            for lay in obj.layers
        ]
    )
    fd = []
    for j in coords:
        e = np.zeros(task.dim)
        e[j] = 1e-6
        fd.append((obj.loss(x + e) - obj.loss(x - e)) / 2e-6)
    np.testing.assert_allclose(g[coords], fd, rtol=1e-5, atol=1e-8)


def test_layers_locate_every_linear_weight_and_bias_in_the_flat_vector():
    task = build_task(SMALL_FINETUNE, {"name": "iid"}, 2, 0)
    layers = ft.layers_of(task)
    assert [(lay.name, lay.out_features, lay.in_features) for lay in layers] == [
        ("0", 8, 64),
        ("2", 8, 8),
        ("4", 5, 8),
    ]
    assert sum(lay.out_features * (lay.in_features + 1) for lay in layers) == task.dim
    module = task.full.module
    x = np.arange(task.dim, dtype=np.float64)
    torch.nn.utils.vector_to_parameters(torch.tensor(x, dtype=torch.float64), module.parameters())
    for lay in layers:
        linear = module.get_submodule(lay.name)
        np.testing.assert_array_equal(lay.weight(x), linear.weight.detach().numpy())
        np.testing.assert_array_equal(lay.bias(x), linear.bias.detach().numpy())
    assert (
        ft.layers_of(build_task({"name": "quadratic", "dim": 3}, {"name": "natural"}, 2, 0)) is None
    )


# --- linear_torch -------------------------------------------------------------------------


def _ridge_lstsq(l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge least squares of one linear layer on standardized digits 5–9, by np.linalg.lstsq
    on the augmented system [Ã; √(nλ) I] Θ = [Y; 0]: (W, b)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    a = (bunch.data - bunch.data.mean(0)) / np.where(bunch.data.std(0) > 0, bunch.data.std(0), 1)
    rows = bunch.target >= 5
    a, y = a[rows], bunch.target[rows] - 5
    n = a.shape[0]
    aug = np.hstack([a, np.ones((n, 1))])
    lhs = np.vstack([aug, np.sqrt(n * l2) * np.eye(aug.shape[1])])
    rhs = np.vstack([np.eye(5)[y], np.zeros((aug.shape[1], 5))])
    theta = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return theta[:-1].T, theta[-1]


def test_linear_torch_optimum_matches_an_independent_least_squares_solve():
    cfg = {"name": "linear_torch", "test_fraction": 0.0, "l2": 0.05}
    task = build_task(cfg, {"name": "iid"}, 3, 0)
    x_star, f_star = task.optimum()
    (layer,) = ft.layers_of(task)
    w, b = _ridge_lstsq(0.05)
    np.testing.assert_allclose(layer.weight(x_star), w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(layer.bias(x_star), b, rtol=1e-8, atol=1e-10)
    assert np.linalg.norm(task.full.grad(x_star)) < 1e-10
    assert f_star == pytest.approx(task.full.loss(x_star), rel=1e-14)
    assert np.sum((task.x0 - x_star) ** 2) > 0.1  # x0: the solution on digits 0–4, not x*
    assert task.full.loss(task.x0) > f_star + 0.1


def _eigvalsh(h: np.ndarray) -> np.ndarray:
    """Eigenvalues by torch (on the one thread the task set): numpy's multithreaded BLAS takes
    seconds for a 325 × 325 matrix on a loaded 2-core machine."""
    return torch.linalg.eigvalsh(torch.from_numpy(h)).numpy()


def test_linear_torch_constants_are_the_hessians_eigenvalues():
    task = build_task({"name": "linear_torch"}, {"name": "by_label", "classes_per_client": 2}, 4, 0)
    rng = np.random.default_rng(2)
    x, v = rng.standard_normal((2, task.dim))
    for obj in task.clients:
        h = obj.hessian()
        np.testing.assert_allclose(h @ v, obj.grad(x + v) - obj.grad(x), rtol=1e-8, atol=1e-10)
        eig = _eigvalsh(h)
        assert obj.smoothness == pytest.approx(eig[-1], rel=1e-10)
        assert obj.strong_convexity == pytest.approx(eig[0], rel=1e-8)
    assert task.mu == min(c.strong_convexity for c in task.clients) >= 0.01
    assert task.L == pytest.approx(_eigvalsh(task.full.hessian())[-1], rel=1e-10)


# --- mlp_large ----------------------------------------------------------------------------


def test_mlp_large_has_a_million_float32_parameters():
    task = build_task({"name": "mlp_large"}, {"name": "iid"}, 10, 0)
    assert task.dim == 64 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 10 + 10 > 1_000_000
    assert task.full.dtype == torch.float32
    g = task.clients[0].grad(task.x0)
    assert g.shape == (task.dim,) and g.dtype == np.float64 and np.all(np.isfinite(g))


# --- every task -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:by_label")  # 10 digits, 5 clients × 2: some unheld
@pytest.mark.parametrize("partition", PARTITIONS, ids=lambda p: p["name"])
@pytest.mark.parametrize(
    "task_cfg",
    [SMALL_FINETUNE, {"name": "linear_torch"}, {"name": "mlp_large", "hidden": 16}],
    ids=lambda c: c["name"],
)
def test_every_partition_gives_a_weighted_client_sum(task_cfg, partition):
    task = build_task(task_cfg, partition, 5, 3)
    assert task.num_clients == 5 and task.weights.sum() == pytest.approx(1.0)
    x = task.x0 + 0.1 * np.random.default_rng(3).standard_normal(task.dim)
    weighted = sum(w * c.loss(x) for w, c in zip(task.weights, task.clients, strict=True))
    rel = 1e-10 if task.full.dtype == torch.float64 else 1e-5  # mlp_large: float32
    assert task.full.loss(x) == pytest.approx(weighted, rel=rel)


@pytest.mark.parametrize(
    ("task_cfg", "match"),
    [
        ({"name": "finetune_digits", "hidden": 0}, "task.hidden"),
        ({"name": "finetune_digits", "depth": 0}, "task.depth"),
        ({"name": "finetune_digits", "activation": "gelu"}, "relu, tanh"),
        ({"name": "finetune_digits", "pretrain_lr": 0}, "task.pretrain_lr"),
        ({"name": "finetune_digits", "test_fraction": 1.0}, "task.test_fraction"),
        ({"name": "finetune_digits", "dtype": "float16"}, "float32, float64"),
        ({"name": "linear_torch", "l2": 0.0}, "task.l2 must be > 0"),
        ({"name": "linear_torch", "init": "ones"}, "pretrained, random, zero"),
        ({"name": "mlp_large", "hidden": -1}, "task.hidden"),
        ({"name": "mlp_large", "width": 3}, "unknown key"),
    ],
)
def test_bad_settings_are_config_errors(task_cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_task(task_cfg, {"name": "iid"}, 3, 0)


@pytest.mark.parametrize("task", ["finetune_digits", "linear_torch", "mlp_large"])
def test_a_short_inline_run(compose, task):
    cfg = compose(
        "engine=inline",
        "method=fedavg",
        f"task={task}",
        "partition=iid",
        "num_clients=3",
        "num_rounds=3",
        "sampler=full",
        "method.local_steps=2",
        "eval_every=3",  # rounds 0 and 3: a full evaluation of mlp_large costs 0.2–0.5 s
    )
    rows = run(cfg, None)
    assert [r["round"] for r in rows] == [0, 3]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(r["accuracy"] is not None for r in rows)
    if task == "linear_torch":
        assert rows[-1]["dist_sq"] < rows[0]["dist_sq"]
        assert rows[-1]["test_accuracy"] is not None


@pytest.mark.parametrize("name", NAMES)
def test_the_conf_file_holds_the_registry_keys_and_defaults(name):
    assert name in TASK_NAMES
    conf = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert conf.pop("name") == name and set(conf) == set(TASK_DEFAULTS[name])
    assert conf.pop("device") == "${device}"
    assert conf == {k: v for k, v in TASK_DEFAULTS[name].items() if k != "device"}


def test_the_schema_accepts_the_new_keys_and_refuses_unknown_ones(compose):
    cfg = compose("engine=inline", "task=linear_torch", "task.init=zero", "partition=iid")
    assert cfg["task"]["init"] == "zero"
    with pytest.raises(ConfigError, match="unknown key task.rank for task 'linear_torch'"):
        compose("engine=inline", "task=linear_torch", "partition=iid", "+task.rank=1")
