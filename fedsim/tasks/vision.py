"""Image classification on Hugging Face data sets (``task=hf_vision``), with standard models.

Data. ``task.dataset`` is anything ``datasets.load_dataset`` opens, the loader that Flower
Datasets' ``FederatedDataset`` wraps: a Hub name (``ylecun/mnist``, ``uoft-cs/cifar10``; cached
where Hugging Face caches, ``$HF_HOME``) or a local folder of parquet / image files. fedsim does
not go through ``FederatedDataset`` itself because the ``partition=`` group already applies the
same Flower Datasets partitioners to the label column (:mod:`fedsim.partition`), exactly as it does
for every other task; each node then decodes only its own rows (``Dataset.select``; Arrow maps the
rest of the file without reading it). A Hub data set that is not cached while the Hub cannot be
reached is a :class:`ConfigError` raised before any engine starts (:func:`load_split`).

Pixels are scaled to ``[0, 1]`` and standardized per channel, ``(p − mean_c) / std_c``, with
``mean_c, std_c`` from a fixed sample of at most ``task.norm_samples`` training images (the same
sample on every node, so every node standardizes alike without decoding the whole split).

Models (``task.model``), all evaluated through :func:`torch.func.functional_call` on views into
one flat parameter vector, as :class:`fedsim.tasks.mlp.MLPObjective` does:

- ``cnn``: the MNIST CNN of the Byzantine-robust experiments (arXiv 2311.14127 §5):
  ``conv3×3(32) → ReLU → conv3×3(64) → ReLU → maxpool 2 → fc(128) → ReLU → fc(K)``;
- ``mlp``: ``flatten → fc(hidden) → ReLU → fc(K)``;
- ``resnet18``: ResNet-18 (torchvision's layers) with ``task.norm`` as its normalization (``layer``:
  LayerNorm over each feature map's (C, H, W), i.e. ``GroupNorm(1, C)``, the Byzantine paper's
  choice; ``group``: ``GroupNorm(32, C)``; ``none``) and ``task.stem`` (``cifar``: a 3×3 stride-1
  first convolution without max-pooling, the usual stem for 32×32 images; ``imagenet``:
  the 7×7 stride-2 convolution and max-pool). Batch norm is refused: its running
  statistics are state outside the parameter vector that fedsim's methods average, compress
  and attack, so a federated batch-norm model would need a rule of its own for them.

Transfer (``task.transfer = K``, RAC-LoRA's MNIST protocol, arXiv 2410.08305 §6.2.2): the model
has ``max(K, classes − K)`` outputs; ``x0`` is that model pretrained on the training images of
classes ``< K`` (``task.pretrain_steps`` of full-batch Adam with ``task.pretrain_lr``, no ridge,
from the init of ``task.pretrain_seed``; cached on disk as ``finetune_digits`` caches its own),
and the clients, ``full`` and ``test`` hold the classes ``≥ K`` with labels ``− K``.

Evaluation (``full``: the honest clients' pooled training rows; ``test``: ``task.test_split``)
uses a fixed sample of at most ``task.eval_samples`` rows of each, in minibatches of
``task.eval_batch_size``, on ``task.device``; with ``eval_every`` it bounds what evaluation costs.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from fedsim.errors import ConfigError, unknown
from fedsim.rng import generator, int_seed
from fedsim.tasks.finetune import cached_pretrained, fingerprint, pretrain
from fedsim.tasks.mlp import MLPObjective

MODELS: tuple[str, ...] = ("cnn", "mlp", "resnet18")
NORMS: tuple[str, ...] = ("layer", "group", "none")
STEMS: tuple[str, ...] = ("cifar", "imagenet")
IMAGE_KEYS: tuple[str, ...] = ("image", "img", "pixel_values")

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- models


def build_cnn(channels: int, height: int, width: int, classes: int) -> nn.Sequential:
    """``conv3×3(32) → ReLU → conv3×3(64) → ReLU → maxpool 2 → fc(128) → ReLU → fc(K)``."""
    if min(height, width) < 6:
        raise ConfigError(f"task.model=cnn needs images of 6×6 or more, got {height}×{width}")
    flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def build_image_mlp(
    channels: int, height: int, width: int, classes: int, hidden: int, depth: int = 1
) -> nn.Module:
    """``flatten → (fc(hidden) → ReLU) × depth → fc(K)``."""
    if hidden < 1:
        raise ConfigError(f"task.hidden must be positive, got {hidden}")
    if depth < 1:
        raise ConfigError(f"task.depth must be positive, got {depth}")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = channels * height * width
    for _ in range(depth):
        layers += [nn.Linear(fan_in, hidden), nn.ReLU()]
        fan_in = hidden
    layers.append(nn.Linear(fan_in, classes))
    return nn.Sequential(*layers)


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The ``norm_layer`` torchvision's ResNet calls with a channel count."""
    if norm == "batch":
        raise ConfigError(
            "task.norm=batch is not supported: batch norm's running statistics live outside the "
            "parameter vector that fedsim's methods average, compress and attack; use "
            f"{', '.join(NORMS)} (layer is the Byzantine paper's)"
        )
    if norm == "layer":
        return lambda c: nn.GroupNorm(1, c)
    if norm == "group":
        return lambda c: nn.GroupNorm(min(32, c), c)
    if norm == "none":
        return lambda c: nn.Identity()
    raise unknown("task.norm", norm, NORMS)


class BasicBlock(nn.Module):
    """ResNet's basic block: ``relu(n2(conv3×3(relu(n1(conv3×3(x))))) + shortcut(x))``; the
    shortcut is a strided 1×1 convolution and a norm where the shape changes, else ``x``."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.n1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.n2 = norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(out)) + self.shortcut(x))


def build_resnet18(channels: int, classes: int, norm: str, stem: str) -> nn.Module:
    """ResNet-18 (He et al. 2016): a stem, four stages of two basic blocks with 64, 128, 256,
    512 channels (stride 2 from the second stage on), global average pooling, ``fc(K)``.

    Written here rather than taken from torchvision: the only torchvision wheel built for the
    pinned torch 2.13.0 is a CUDA build whose import fails against torch's CPU wheel
    ("operator torchvision::nms does not exist"). The layers are torchvision's ``resnet18``
    (11.2M parameters with batch norm at 1000 classes, the same count with ``GroupNorm``)."""
    if stem not in STEMS:
        raise unknown("task.stem", stem, STEMS)
    make = norm_layer(norm)
    if stem == "cifar":
        head: list[nn.Module] = [nn.Conv2d(channels, 64, 3, padding=1, bias=False), make(64)]
        head.append(nn.ReLU())
    else:
        head = [nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False), make(64)]
        head += [nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
    layers, c_in = head, 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(c_in, c_out, stride, make), BasicBlock(c_out, c_out, 1, make)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def build_model(opts: dict[str, Any], shape: tuple[int, int, int], classes: int) -> nn.Module:
    """``task.model`` for images of ``shape = (C, H, W)`` and ``classes`` classes."""
    c, h, w = shape
    name = str(opts["model"])
    if name == "cnn":
        return build_cnn(c, h, w, classes)
    if name == "mlp":
        return build_image_mlp(c, h, w, classes, int(opts["hidden"]), int(opts["depth"]))
    if name == "resnet18":
        return build_resnet18(c, classes, str(opts["norm"]), str(opts["stem"]))
    raise unknown("task.model", name, MODELS)


def init_params(module: nn.Module, seed: int) -> np.ndarray:
    """The module's own (PyTorch default) initialization drawn under a seeded torch RNG
    (``int_seed(seed, 0, "task/vision_init")``), as one flat float64 vector in
    ``named_parameters()`` order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int_seed(seed, 0, "task/vision_init"))
        for layer in module.modules():
            if layer is not module and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        flat = [p.detach().reshape(-1).to(torch.float64) for p in module.parameters()]
    return torch.cat(flat).numpy().copy()


# ------------------------------------------------------------------------------------- data


def _hub_endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def _reachable(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout``, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return str(err) or type(err).__name__


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """``datasets``/``huggingface_hub`` in offline mode: only the local cache is read."""
    import datasets
    import huggingface_hub.constants as hub

    before = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = before


def load_split(dataset: str, split: str) -> Any:
    """``datasets.load_dataset(dataset, split=split)``; a local folder as it is, a Hub data set
    from the cache first, then from the Hub. Neither cached nor reachable: ConfigError."""
    import datasets

    try:
        if Path(dataset).expanduser().exists():
            return datasets.load_dataset(str(Path(dataset).expanduser()), split=split)
        try:
            with _offline():
                return datasets.load_dataset(dataset, split=split)
        except (ConnectionError, FileNotFoundError, ValueError):
            pass  # not in the cache
        host, port = _hub_endpoint()
        why = _reachable(host, port)
        if why is not None:
            raise ConfigError(
                f"task.dataset={dataset!r} needs downloading: it is not in the Hugging Face "
                f"cache ({datasets.config.HF_DATASETS_CACHE}) and the Hub at {host}:{port} "
                f"cannot be reached ({why}). Run once with a network (the data are then cached "
                "there), or set task.dataset to a local folder of parquet or image files"
            )
        return datasets.load_dataset(dataset, split=split)
    except ConfigError:
        raise
    except (ValueError, KeyError) as err:  # an unknown split, a folder without data files
        raise ConfigError(f"task.dataset={dataset!r}, split {split!r}: {err}") from err
    except (OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise ConfigError(f"task.dataset={dataset!r} could not be loaded: {err}") from err


def _column(ds: Any, key: str | None, candidates: tuple[str, ...], what: str) -> str:
    names = list(ds.column_names)
    if key not in (None, "auto"):
        if key not in names:
            raise ConfigError(f"task.{what}={key!r} is not a column of the data set: {names}")
        return str(key)
    for name in candidates:
        if name in names:
            return name
    raise ConfigError(f"no {what.split('_')[0]} column among {names}; set task.{what}")


def _pixels(ds: Any, rows: np.ndarray, image_key: str) -> np.ndarray:
    """Rows ``rows`` of the image column as float32 ``N × C × H × W`` in ``[0, 1]``."""
    raw = ds.select(rows.tolist()).with_format("numpy")[:][image_key]
    arr = np.asarray(raw)
    if arr.dtype == object:
        raise ConfigError("the images differ in size: hf_vision needs images of one size")
    arr = arr.astype(np.float32)
    if arr.max(initial=0.0) > 1.0:
        arr /= 255.0
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        arr = np.moveaxis(arr, -1, 1)  # N × H × W × C → N × C × H × W
    else:
        raise ConfigError(f"images of shape {arr.shape[1:]}: expected H × W or H × W × C")
    return arr


class ImageRows:
    """One split's images: the labels at once, the pixels of given rows on demand."""

    def __init__(self, ds: Any, image_key: str, label_key: str) -> None:
        self.ds, self.image_key = ds, image_key
        labels = ds.with_format("numpy").select_columns([label_key])[:][label_key]
        self.labels = np.asarray(labels).astype(np.int64).reshape(-1)

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        return _pixels(self.ds, np.asarray(rows, dtype=np.int64), self.image_key)

    def shifted(self, k: int) -> ImageRows:
        """The same images with every label ``− k`` (transfer's fine-tuning classes)."""
        out = copy.copy(self)
        out.labels = self.labels - k
        return out


def fixed_sample(n: int, k: int | None, tag: str) -> np.ndarray:
    """At most ``k`` of ``0..n-1`` (sorted), the same for every run seed (``None``: all)."""
    if k is None or k >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(generator(0, 0, f"task/hf_vision/{tag}").permutation(n)[:k])


# ------------------------------------------------------------------------------- objectives


class ImageObjective(MLPObjective):
    """Cross-entropy of ``module`` on the images of ``rows``, decoded on first use.

    ``f(x) = (1/n) Σ_j CE(net_x(a_j), y_j) + (λ/2)‖x‖²`` over the ``n = |rows|`` images; full-data
    loss, gradient and accuracy run in minibatches of ``batch`` images (the same values, summed
    with weights ``|batch|/n``); a minibatch ``idx`` is one forward and backward pass.
    """

    def __init__(
        self,
        module: nn.Module,
        source: ImageRows,
        rows: np.ndarray,
        standardize: Callable[[np.ndarray], np.ndarray],
        smoothness: float,
        l2: float,
        device: str,
        dtype: str,
        batch: int,
    ) -> None:
        self._bind(module, smoothness, l2, device, dtype)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.num_samples = int(self.rows.shape[0])
        self.batch = int(batch)
        self._source, self._standardize = source, standardize
        self._a: torch.Tensor | None = None
        self._y = torch.as_tensor(source.labels[self.rows], dtype=torch.long, device=self.device)

    @property
    def a(self) -> torch.Tensor:  # type: ignore[override]
        if self._a is None:
            pixels = self._standardize(self._source.pixels(self.rows))
            self._a = torch.as_tensor(pixels, dtype=self.dtype, device=self.device)
        return self._a

    @a.setter
    def a(self, value: torch.Tensor) -> None:
        self._a = value

    @property
    def y(self) -> torch.Tensor:  # type: ignore[override]
        return self._y

    @y.setter
    def y(self, value: torch.Tensor) -> None:
        self._y = value

    def _chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.num_samples, self.batch):
            yield np.arange(start, min(start + self.batch, self.num_samples))

    def _batched_logits(self, x: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(net_x(a_B), y_B)`` for consecutive minibatches ``B`` of every row, without grad."""
        with torch.no_grad():
            params = self._params(self._tensor(x))
            for rows in self._chunks():
                pick = torch.as_tensor(rows, device=self.device)
                yield torch.func.functional_call(self.module, params, (self.a[pick],)), self.y[pick]

    def loss(self, x: np.ndarray, idx: np.ndarray | None = None) -> float:
        if idx is not None:
            return super().loss(x, idx)
        total = sum(
            float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            for logits, y in self._batched_logits(x)
        )
        return total / self.num_samples + 0.5 * self.l2 * float(x @ x)

    def grad(self, x: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        if idx is not None:
            return super().grad(x, idx)
        out = np.zeros(self.dim)
        for rows in self._chunks():
            out += super().grad(x, rows) * (len(rows) / self.num_samples)
        return out

    def accuracy(self, x: np.ndarray) -> float:
        hits = sum(int((z.argmax(dim=1) == y).sum()) for z, y in self._batched_logits(x))
        return hits / self.num_samples


# ------------------------------------------------------------------------------------ build


@dataclass(frozen=True)
class Standardizer:
    """Per-channel ``(p − mean_c) / std_c`` (arrays of shape ``(C, 1, 1)``)."""

    mean: np.ndarray
    std: np.ndarray

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels - self.mean) / self.std


def standardizer(source: ImageRows, k: int) -> Standardizer:
    """The :class:`Standardizer` of a fixed sample of at most ``k`` images."""
    sample = source.pixels(fixed_sample(len(source.labels), k, "norm"))
    mean = sample.mean(axis=(0, 2, 3), keepdims=True)[0]
    std = sample.std(axis=(0, 2, 3), keepdims=True)[0]
    return Standardizer(mean, np.where(std > 0, std, 1.0).astype(np.float32))


def image_shape(source: ImageRows) -> tuple[int, int, int]:
    c, h, w = source.pixels(np.zeros(1, dtype=np.int64)).shape[1:]
    return int(c), int(h), int(w)


def hf_vision_task(
    opts: dict[str, Any],
    partition_cfg: dict[str, Any],
    num_clients: int,
    seed: int,
    honest: list[int],
    number: Callable[..., Any],
) -> Any:
    """The ``hf_vision`` Task (module docstring); ``number(opts, key, kind, low, strict)``
    checks a numeric knob (the registry's ``_number``)."""
    from fedsim.partition import partition_indices
    from fedsim.tasks.base import Task

    threads = number(opts, "torch_threads", int, 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    dataset = str(opts["dataset"])
    train = load_split(dataset, str(opts["split"]))
    image_key = _column(train, opts["image_key"], IMAGE_KEYS, "image_key")
    label_key = _column(train, opts["label_key"], ("label", "labels", "fine_label"), "label_key")
    source = ImageRows(train, image_key, label_key)
    used = fixed_sample(len(source.labels), _optional(opts, "max_samples", number), "train")
    classes = int(source.labels.max()) + 1
    split = _optional(opts, "transfer", number)
    standardize = standardizer(source, number(opts, "norm_samples", int, 1))
    head = classes if split is None else transfer_head(classes, split)
    module = build_model(opts, image_shape(source), head)
    smooth = number(opts, "L", float, 0.0, strict=True)
    l2 = number(opts, "l2", float, 0.0)
    batch = number(opts, "eval_batch_size", int, 1)
    eval_k = _optional(opts, "eval_samples", number)

    def make(src: ImageRows, rows: np.ndarray, decay: float = l2) -> ImageObjective:
        device, dtype = str(opts["device"]), str(opts["dtype"])
        return ImageObjective(module, src, rows, standardize, smooth, decay, device, dtype, batch)

    if split is None:
        x0 = init_params(module, seed)
    else:  # pretrain on the classes < split, fine-tune on the others (labels − split)
        pre = used[source.labels[used] < split]
        key = {
            "what": "hf_vision/pretrained",
            "dataset": dataset,
            "split": str(opts["split"]),
            "fingerprint": str(getattr(train, "_fingerprint", "")),
            "rows": fingerprint(pre, source.labels[pre]),
            "standardize": fingerprint(standardize.mean, standardize.std),
            "model": {k: opts[k] for k in ("model", "hidden", "depth", "norm", "stem")},
            "transfer": split,
            "head": head,
            "steps": number(opts, "pretrain_steps", int, 0),
            "lr": number(opts, "pretrain_lr", float, 0.0, strict=True),
            "seed": number(opts, "pretrain_seed", int, 0),
            "device": str(opts["device"]),
            "dtype": str(opts["dtype"]),
            "torch": torch.__version__.split("+")[0],
        }
        x0 = pretrained(key, module, make(source, pre, 0.0))
        used = used[source.labels[used] >= split]
        source = source.shifted(split)
    labels = source.labels[used]
    parts = [used[p] for p in partition_indices(labels, num_clients, partition_cfg, seed)]
    if partition_cfg.get("name") == "replicated":
        clients = [make(source, parts[0])] * num_clients
    else:
        clients = [make(source, p) for p in parts]
    pooled = np.unique(np.concatenate([parts[m] for m in honest]))
    full = make(source, pooled[fixed_sample(len(pooled), eval_k, "eval")])
    test = None
    if opts["test_split"] not in (None, "", "none"):
        held = ImageRows(load_split(dataset, str(opts["test_split"])), image_key, label_key)
        rows = np.arange(len(held.labels))
        if split is not None:
            rows, held = rows[held.labels >= split], held.shifted(split)
        test = make(held, rows[fixed_sample(len(rows), eval_k, "test")])
    return Task(
        name="hf_vision",
        dim=full.dim,
        clients=clients,
        full=full,
        x0=x0,
        mu=0.0,
        solve=None,
        test=test,
    )


def pretrained(key: dict[str, Any], module: nn.Module, teacher: ImageObjective) -> np.ndarray:
    """``x0`` of ``task.transfer``: ``key["steps"]`` full-batch Adam steps (no ridge) on the
    pretraining rows from the init of seed ``key["seed"]``, cached on disk under ``key`` (as
    ``finetune_digits`` caches its own, :func:`fedsim.tasks.finetune.cached_pretrained`)."""
    start = init_params(module, key["seed"])
    if key["steps"] == 0:
        return start

    def compute() -> tuple[np.ndarray, float]:
        x, f = pretrain(teacher, start, key["steps"], key["lr"])
        log.info(
            "pretrained on %d images of classes < %d: loss %.4f, accuracy %.4f (cached)",
            teacher.num_samples, key["transfer"], f, teacher.accuracy(x),
        )  # fmt: skip
        return x, f

    return cached_pretrained(key, start.shape[0], compute)


def transfer_head(classes: int, split: int) -> int:
    """Outputs of a model pretrained on classes ``< split`` and fine-tuned on the others, with
    labels ``− split``: one head serves both, so it has ``max(split, classes − split)`` outputs."""
    if not 0 < split < classes:
        raise ConfigError(
            f"task.transfer must split the {classes} classes (1 to {classes - 1}), got {split}"
        )
    return max(split, classes - split)


def _optional(opts: dict[str, Any], key: str, number: Callable[..., Any]) -> int | None:
    return None if opts[key] is None else number(opts, key, int, 1)
