"""``task=hf_vision`` offline: scikit-learn's digits written by the test as PNG images in parquet
files (``train.parquet``, ``test.parquet``), which ``datasets.load_dataset`` reads from the folder
exactly as it reads a Hub data set's cached files. Loading, partitioning, the models and the
evaluation are fedsim's real code path; only the bytes come from disk instead of the Hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.errors import ConfigError
from fedsim.runner import run_overrides
from fedsim.tasks.registry import build_task, clear_cache
from fedsim.tasks.vision import (
    ImageObjective,
    ImageRows,
    build_cnn,
    build_resnet18,
    load_split,
)
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = {
    "iid": {"name": "iid"},
    "dirichlet": {"name": "dirichlet", "alpha": 0.5, "min_size": 5, "self_balancing": False},
    "by_label": {
        "name": "by_label",
        "classes_per_client": 2,
        "class_assignment": "first-deterministic",
    },
    "sorted": {"name": "sorted"},
    "replicated": {"name": "replicated"},
}


def write_digits(out: Path, side: int) -> Path:
    """scikit-learn's 1797 digits as ``side × side`` grey PNGs (bilinear from 8×8): 1500 train,
    297 test, in parquet files."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = [
        Image.fromarray((x * 255 / 16).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        for x in d.images
    ]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)}
    )
    ds = datasets.Dataset.from_dict({"image": images, "label": d.target.tolist()}, features)
    ds.select(range(1500)).to_parquet(str(out / "train.parquet"))
    ds.select(range(1500, 1797)).to_parquet(str(out / "test.parquet"))
    return out


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    """The digits at their own 8×8."""
    return write_digits(tmp_path_factory.mktemp("digits_images"), 8)


def task_cfg(path: Path, **extra) -> dict:
    return {"name": "hf_vision", "dataset": str(path), "device": "cpu", **extra}


@pytest.mark.parametrize("scheme", sorted(PARTITIONS))
def test_every_partition_of_the_group_splits_the_images(digits_dir, scheme):
    """Each node's objective holds its partition's rows and their labels; the partitions are
    disjoint and cover the split (replicated: everyone holds everything); nothing is decoded
    before a node first evaluates its objective."""
    clear_cache()
    task = build_task(task_cfg(digits_dir), PARTITIONS[scheme], 10, seed=3)  # M ≥ classes
    labels = np.asarray(load_split(str(digits_dir), "train")["label"])
    rows = [c.rows for c in task.clients]
    assert all(len(r) > 0 for r in rows)
    assert all(c._a is None for c in task.clients)  # lazy: no pixels read yet
    if scheme == "replicated":
        assert all(np.array_equal(r, np.arange(1500)) for r in rows)
    else:
        flat = np.concatenate(rows)
        assert len(flat) == len(np.unique(flat)) == 1500
    for c in task.clients:
        assert np.array_equal(c.y.numpy(), labels[c.rows])
    if scheme == "by_label":
        assert all(len(np.unique(labels[r])) <= 2 for r in rows)
    if scheme == "sorted":
        pairs = zip(rows[:-1], rows[1:], strict=True)
        assert all(labels[a].max() <= labels[b].min() for a, b in pairs)
    x = task.x0
    assert np.isfinite(task.clients[0].loss(x)) and task.clients[0]._a is not None
    assert task.clients[-1]._a is None or scheme == "replicated"
    assert task.test is not None and task.test.num_samples == 297
    with pytest.raises(ConfigError, match="natural"):
        build_task(task_cfg(digits_dir), {"name": "natural"}, 10, seed=3)


def test_pixels_are_standardized_per_channel_and_the_batched_evaluation_is_exact(digits_dir):
    """Standardized pixels have mean 0 and std 1 over the training split (the statistics come
    from a 2000-image sample, which here is all 1500); the minibatched full loss, gradient and
    accuracy equal one pass over every row, in float64."""
    clear_cache()
    cfg = task_cfg(digits_dir, dtype="float64", eval_batch_size=128)
    task = build_task(cfg, {"name": "iid"}, 3, seed=0)
    full = task.full
    a = full.a.numpy()
    assert a.shape == (1500, 1, 8, 8)
    assert abs(a.mean()) < 1e-6 and abs(a.std() - 1) < 1e-6
    x = task.x0 + 0.01 * np.random.default_rng(0).standard_normal(task.dim)
    every = np.arange(full.num_samples)
    assert full.loss(x) == pytest.approx(full.loss(x, every), rel=1e-12)
    np.testing.assert_allclose(full.grad(x), full.grad(x, every), rtol=1e-9, atol=1e-14)
    logits = torch.func.functional_call(full.module, full._params(torch.tensor(x)), (full.a,))
    expected = float((logits.argmax(1) == full.y).double().mean())
    assert full.accuracy(x) == pytest.approx(expected, abs=1e-12)


def test_the_models_have_the_standard_layers():
    """ResNet-18 with the ImageNet stem and 1000 classes has torchvision's 11,689,512 parameters
    (GroupNorm holds as many as batch norm); the CIFAR stem keeps 32×32 maps through the first
    stage. The MNIST CNN is conv32-conv64-pool-fc128-fc10 (1,199,882 parameters at 28×28).
    Batch norm is refused with the reason."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_resnet18(3, 1000, "group", "imagenet")) == 11_689_512
    cifar = build_resnet18(3, 10, "layer", "cifar")
    assert cifar[0].stride == (1, 1) and cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert isinstance(cifar[1], torch.nn.GroupNorm) and cifar[1].num_groups == 1  # LayerNorm
    cnn = build_cnn(1, 28, 28, 10)
    assert count(cnn) == 1_199_882
    assert [type(m).__name__ for m in cnn] == [
        "Conv2d",
        "ReLU",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    with pytest.raises(ConfigError, match="running statistics"):
        build_resnet18(3, 10, "batch", "cifar")


@pytest.mark.xdist_group("ray-engines")  # with tests/test_engines.py: one Ray at a time
def test_fedavg_cnn_learns_the_digits_and_ray_gives_the_same_metrics(digits_dir, tmp_path):
    """FedAvg with the CNN, defaults only, 4 rounds on 5 clients: the test accuracy rises from
    chance (0.1) to above 0.4 on the inline engine, and engine=ray gives the same rows."""
    base = [
        "method=fedavg",
        "task=hf_vision",
        f"task.dataset={digits_dir}",
        "partition=dirichlet",
        "num_clients=5",
        "sampler=full",
        "num_rounds=4",
        "output.progress=false",
    ]
    rows = run_overrides([*base, "engine=inline"], tmp_path / "inline")
    assert rows[0]["test_accuracy"] < 0.2
    assert rows[-1]["test_accuracy"] > 0.4
    assert rows[-1]["loss"] < rows[0]["loss"]
    from fedsim.engines.ray import shared_ray

    with shared_ray():
        ray = run_overrides([*base, "engine=ray", "engine.round_timeout=120"], tmp_path / "ray")
    keys = ("loss", "accuracy", "test_accuracy", "grad_norm_sq", "up_floats", "clients")
    for a, b in zip(rows, ray, strict=True):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-9), (k, a["round"])


def test_a_hub_data_set_that_is_not_cached_fails_before_any_engine_with_no_network(tmp_path):
    """No network (the Hub endpoint is a 127.0.0.1 port where nothing listens) and an empty
    Hugging Face cache: ``python -m fedsim`` exits 2 with "needs downloading" before starting
    any engine (engine=ray here, and no Ray is started)."""
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "FLWR_TELEMETRY_ENABLED": "0",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "engine=ray",
            "task=hf_vision",
            "task.dataset=fedsim-tests/not-cached-mnist",
            "partition=iid",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "needs downloading" in out.stderr and "not-cached-mnist" in out.stderr
    assert "Traceback" not in out.stderr
    assert "(ray engine)" not in out.stdout + out.stderr  # the run's start line: never reached
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.parametrize(
    ("experiment", "expected"),
    [
        (
            "clipped_cifar10_resnet18",
            {"task.model": "resnet18", "task.stem": "cifar", "method.batch_size": 256},
        ),
        (
            "byzantine_mnist_cnn",
            {"task.model": "cnn", "task.dataset": "ylecun/mnist", "method.lr": 0.01},
        ),
        (
            "byzantine_cifar10_resnet18",
            {"task.model": "resnet18", "task.norm": "layer", "attack.num_byzantine": 5},
        ),
        (
            "rac_lora_mnist",
            {"task.transfer": 5, "task.depth": 2, "method.rank": 1, "method.name": "fed_rac_lora"},
        ),
    ],
)
def test_the_paper_scale_configs_compose_and_validate(experiment, expected):
    """The full-scale experiment configs (they need a network, and a GPU for CIFAR-10) compose
    with Hydra and pass fedsim's key and value checks without touching the data."""
    from hydra import compose, initialize_config_dir

    from fedsim import schema
    from fedsim.build import to_dict

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = to_dict(compose("config", overrides=[f"+experiment={experiment}"]))
    schema.check(cfg)  # every key, the method's included, is one its yaml declares
    for dotted, value in expected.items():
        group, key = dotted.split(".")
        assert cfg[group][key] == value
    assert cfg["task"]["name"] == "hf_vision"
    assert cfg["device"] == ("cpu" if experiment == "rac_lora_mnist" else "cuda")
    assert cfg["task"]["device"] == cfg["device"]  # ${device}


def test_an_image_objective_without_its_images_is_never_decoded(digits_dir):
    """A node that holds another partition never reads that partition's pixels."""
    source = ImageRows(load_split(str(digits_dir), "train"), "image", "label")
    calls = []
    real = source.pixels

    def counting(rows):
        calls.append(len(rows))
        return real(rows)

    source.pixels = counting
    obj = ImageObjective(
        build_cnn(1, 8, 8, 10), source, np.arange(10), lambda p: p, 1.0, 0.0, "cpu", "float32", 4
    )
    assert calls == [] and obj.num_samples == 10
    obj.loss(np.zeros(obj.dim))
    assert calls == [10]


def test_max_samples_is_one_fixed_subsample_split_across_the_clients(digits_dir):
    """``task.max_samples=600``: the clients split one fixed sample of 600 of the 1500 training
    rows (the same for every run seed, spread over the split, not its first 600 rows)."""
    clear_cache()
    union = {}
    for seed in (0, 1):
        task = build_task(task_cfg(digits_dir, max_samples=600), {"name": "iid"}, 3, seed=seed)
        union[seed] = np.sort(np.concatenate([c.rows for c in task.clients]))
        assert len(np.unique(union[seed])) == 600
    assert np.array_equal(union[0], union[1])
    assert union[0].max() > 1000  # drawn from the whole split


def test_transfer_pretrains_on_the_first_classes_and_fine_tunes_on_the_others(digits_dir, tmp_path):
    """``task.transfer=5``: the clients and the test split hold only digits 5–9, labelled − 5;
    ``x0`` is the model pretrained on the training digits 0–4 (it classifies them, the seeded
    init does not), computed once and then read from the cache; the MLP is 64 → 64 → 64 → 5."""
    clear_cache()
    os.environ["FEDSIM_CACHE"] = str(tmp_path / "cache")
    try:
        cfg = task_cfg(digits_dir, model="mlp", hidden=64, depth=2, transfer=5, dtype="float64")
        task = build_task(cfg, {"name": "iid"}, 4, seed=1)
        stored = list((tmp_path / "cache").glob("pretrained-*.npz"))
        clear_cache()
        again = build_task(cfg, {"name": "iid"}, 4, seed=1)
    finally:
        del os.environ["FEDSIM_CACHE"]
    assert len(stored) == 1 and np.array_equal(task.x0, again.x0)
    train = np.asarray(load_split(str(digits_dir), "train")["label"])
    test = np.asarray(load_split(str(digits_dir), "test")["label"])
    rows = np.concatenate([c.rows for c in task.clients])
    assert np.array_equal(np.sort(rows), np.flatnonzero(train >= 5))
    for c in task.clients:
        assert np.array_equal(c.y.numpy(), train[c.rows] - 5)
    assert np.array_equal(task.test.rows, np.flatnonzero(test >= 5))
    assert np.array_equal(task.test.y.numpy(), test[test >= 5] - 5)
    assert [(layer.out_features, layer.in_features) for layer in task.full.layers] == [
        (64, 64),
        (64, 64),
        (5, 64),
    ]
    first = ImageObjective(
        task.full.module, task.test._source, np.flatnonzero(test < 5), task.full._standardize,
        1.0, 0.0, "cpu", "float64", 100,
    )  # fmt: skip
    first.y = torch.as_tensor(test[test < 5])  # the held-out digits 0–4, their own labels
    init = build_task({**cfg, "transfer": None}, {"name": "iid"}, 4, seed=1).x0[: task.dim]
    assert first.accuracy(task.x0) > 0.9
    assert first.accuracy(init) < 0.5
    with pytest.raises(ConfigError, match="task.transfer"):
        build_task({**cfg, "transfer": 10}, {"name": "iid"}, 4, seed=1)


def test_the_rac_lora_mnist_config_runs_on_local_images(tmp_path):
    """``+experiment=rac_lora_mnist`` with only the data set (the digits scaled to MNIST's
    28×28) and the rounds changed: Fed-RAC-LoRA from the pretrained model lifts the test accuracy
    on digits 5–9 from about chance (0.2) to above 0.5 in 60 rounds, sending rank-1 factors
    only."""
    from fedsim.runner import run_overrides as run

    (tmp_path / "digits28").mkdir()
    data = write_digits(tmp_path / "digits28", 28)
    os.environ["FEDSIM_CACHE"] = str(tmp_path / "cache")
    try:
        rows = run(
            [
                "+experiment=rac_lora_mnist",
                f"task.dataset={data}",
                "num_rounds=60",
                "output.progress=false",
            ],
            tmp_path / "run",
        )
    finally:
        del os.environ["FEDSIM_CACHE"]
    assert rows[0]["test_accuracy"] < 0.3
    assert rows[-1]["test_accuracy"] > 0.5
    assert rows[-1]["loss"] < 0.2 * rows[0]["loss"]
    # 3 layers × one rank-1 factor of at most 784 entries per client: far below 54,725 weights
    assert max(r["up_floats"] / r["clients"] for r in rows[1:]) <= 784 + 64 + 64
