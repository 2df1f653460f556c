"""From one composed config to the objects every engine runs.

:func:`resolve` validates a composed config before any engine starts (unknown names, impossible
values, missing files, resources) and turns ``auto`` hyperparameters into numbers, returning a
plain dict. :func:`build_strategy` and :func:`build_client` turn that dict into the method's
Flower ``Strategy`` and ``NumPyClient``; the ray, inline and deployment engines all call them.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import Client, NumPyClient
from flwr.common import Context

from fedsim import schema
from fedsim.blocks.aggregators import build_aggregator
from fedsim.blocks.attacks import CLIENT_SIDE, build_attack, byzantine_ids
from fedsim.blocks.samplers import Sampler, build_sampler
from fedsim.engines.deployment import check_secure
from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.tasks.base import Task
from fedsim.tasks.registry import build_task

log = logging.getLogger("fedsim")

ENGINES = ("ray", "inline", "deployment")
# Building-block groups and their neutral choice. A method that does not list a group in its
# strategy's ``uses`` keeps the neutral choice (an ignored compressor is an error, not a no-op).
BLOCK_GROUPS = {"compressor": "identity", "aggregator": "mean", "attack": "none"}


def _class(path: str, what: str) -> type:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"cannot import {what} {path!r}: {err}") from err


def to_dict(cfg: Any) -> dict:
    """A plain, resolved dict from an OmegaConf config (or a dict)."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # interpolation errors are config errors
        raise ConfigError(f"cannot resolve the config: {err}") from err
    return {k: v for k, v in dict(cfg).items() if k != "hydra"}


def byzantine_of(cfg: Mapping) -> tuple[int, ...]:
    """The Byzantine clients' partition ids (fixed for the run; none without an attack)."""
    attack = cfg.get("attack") or {"name": "none"}
    if attack.get("name", "none") == "none":
        return ()
    return byzantine_ids(int(cfg["num_clients"]), attack, int(cfg["seed"]))


def task_of(cfg: Mapping) -> Task:
    """The task of a resolved config (built once per process, then cached by the registry); its
    metrics and optimum are the honest clients' objective."""
    return build_task(
        dict(cfg["task"]),
        dict(cfg["partition"]),
        cfg["num_clients"],
        cfg["seed"],
        byzantine=byzantine_of(cfg),
    )


def sampler_of(cfg: Mapping, task: Task) -> Sampler:
    bound = None
    if (cfg["sampler"] or {}).get("name") == "importance":
        from fedsim.blocks.pdhg import uniform_form

        bound = uniform_form(task)
    return build_sampler(
        cfg["sampler"],
        cfg["num_clients"],
        cfg["seed"],
        client_L=task.client_L,
        sizes=task.sizes,
        bound=bound,
    )


def _real(name: str, value: object, low: float, strict: bool) -> float:
    """``value`` as a finite number ``> low`` (``strict``) or ``>= low``, else a ConfigError."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ConfigError(
            f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}"
        )
    return float(value)


def _timeout(name: str, value: object) -> None:
    """A timeout in seconds: null (none) or a finite number > 0."""
    if value is not None:
        try:
            _real(name, value, 0, strict=True)
        except ConfigError:
            raise ConfigError(
                f"{name} must be null (no limit) or a number of seconds > 0, got {value!r}"
            ) from None


def _port(name: str, value: object, last: int = 65535) -> int:
    """A TCP port in ``[1, last]``."""
    port = int_at_least(name, value, 1)
    if port > last:
        raise ConfigError(f"{name} must be a TCP port in [1, {last}], got {port}")
    return port


def _check_deployment(engine: Mapping, num_clients: int) -> None:
    """``engine=deployment``: the SuperLink address or the local federation's ports, timeouts."""
    for key in ("insecure", "secure"):
        if not isinstance(engine.get(key, False), bool):
            raise ConfigError(f"engine.{key} must be true or false, got {engine[key]!r}")
    _timeout("engine.round_timeout", engine.get("round_timeout"))
    _real("engine.run_timeout", engine.get("run_timeout", 3600), 0, strict=True)
    superlink = engine.get("superlink")
    if superlink is not None:
        host, _, port = str(superlink).rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"engine.superlink must be HOST:PORT (or null), got {superlink!r}")
        return
    port = _port("engine.port", engine.get("port", 9092))
    first = _port("engine.supernode_port", engine.get("supernode_port", 9200), 65536 - num_clients)
    if first <= port < first + num_clients:
        raise ConfigError(
            f"engine.port={port} is one of the SuperNodes' ports {first}..{first + num_clients - 1}"
            " (engine.supernode_port and one more per client): choose another"
        )


def _check_engine(cfg: Mapping) -> None:
    """The engine's settings: each key in its range, the resources this machine offers."""
    engine = cfg["engine"]
    name = engine.get("name")
    if name not in ENGINES:
        raise unknown("engine", name, ENGINES)
    if cfg.get("device", "cpu") not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {cfg.get('device')!r}")
    if cfg.get("device") == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but torch sees no CUDA device on this machine")
    if name == "deployment":
        _check_deployment(engine, int(cfg["num_clients"]))
        check_secure(engine)
    if name != "ray":
        return
    if engine.get("num_cpus") is not None:
        int_at_least("engine.num_cpus", engine["num_cpus"], 1)
    _timeout("engine.round_timeout", engine.get("round_timeout"))
    if not isinstance(engine.get("shared", True), bool):
        raise ConfigError(f"engine.shared must be true or false, got {engine['shared']!r}")
    res = engine.get("client_resources") or {}
    if not isinstance(res, Mapping):
        raise ConfigError(f"engine.client_resources must hold num_cpus and num_gpus, got {res!r}")
    cpus = _real("engine.client_resources.num_cpus", res.get("num_cpus", 1), 0, strict=True)
    gpus = _real("engine.client_resources.num_gpus", res.get("num_gpus", 0.0), 0, strict=False)
    if engine.get("address") is not None:  # a cluster checks its own resources
        _check_reachable(str(engine["address"]))
        return
    have = engine.get("num_cpus") or os.cpu_count() or 1  # resources of this machine
    if cpus > have:
        raise ConfigError(
            f"engine.client_resources.num_cpus={cpus} but this machine offers {have} CPUs"
        )
    if gpus > 0:
        import torch

        if torch.cuda.device_count() == 0:
            raise ConfigError(
                f"engine.client_resources.num_gpus={gpus} but this machine has no GPU"
            )


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A Ray cluster address must answer; otherwise Ray would retry for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"engine.address must be HOST:PORT (or 'auto'), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"no Ray cluster answers at engine.address={address} ({err}); start one with "
            f"`ray start --head --port={port}` or drop engine.address"
        ) from err


def _absolute_paths(task: dict) -> None:
    """Data paths become absolute, so every process of every engine reads the same file."""
    if task.get("path"):
        task["path"] = str(Path(str(task["path"])).expanduser().resolve())


def resolve(cfg: Any, solve: bool = False) -> dict:
    """Validate a composed config and resolve ``auto`` values (raises :class:`ConfigError`).

    Every key must be one that its option's yaml declares (:mod:`fedsim.schema`; a method key
    beyond it only if resolving derives it, :func:`_check_derived`), every value in its range.
    With ``solve`` the task's optimum is computed (and cached) here too, so a solver failure is
    reported before any engine starts.
    """
    out = to_dict(cfg)
    for key in ("method", "task", "partition", "sampler", "engine"):
        if not isinstance(out.get(key), Mapping) or "name" not in out[key]:
            raise ConfigError(f"the config has no {key} group (choose one with {key}=NAME)")
    schema.check(out, skip=("method",))  # method keys beyond its yaml: _check_derived
    int_at_least("seed", out.get("seed"), 0)
    int_at_least("num_clients", out.get("num_clients"), 1)
    int_at_least("num_rounds", out.get("num_rounds"), 1)
    int_at_least("eval_every", out.get("eval_every"), 1)
    int_at_least("max_failed_rounds", out.get("max_failed_rounds"), 1)
    from fedsim.sweep import job_threads

    job_threads(out.get("threads", "auto"), parallel=False)
    frac = out.get("max_failure_fraction", 0.5)
    if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac <= 1:
        raise ConfigError(f"max_failure_fraction must lie in [0, 1], got {frac!r}")
    _check_engine(out)
    from fedsim.faults import check_fault  # the fault group (conf/fault) against the engine

    check_fault(out)
    given = dict(out["method"])
    extras = sorted(set(given) - set(schema.accepted("method", given["name"])))
    method = {k: v for k, v in given.items() if k not in extras}
    strategy_cls = _class(str(method.get("strategy")), "strategy")
    _class(str(method.get("client")), "client")
    uses = getattr(strategy_cls, "uses", ())
    for group, neutral in BLOCK_GROUPS.items():
        chosen = dict(out.get(group) or {"name": neutral})
        if group in uses:  # the method reads it from its own section
            method[group] = chosen
        elif chosen.get("name", neutral) != neutral:
            raise ConfigError(
                f"method {method['name']!r} does not use {group}={chosen.get('name')!r}; "
                f"valid choices: {neutral}"
            )
    _absolute_paths(out["task"])
    task = task_of(out)
    if task.num_clients != out["num_clients"]:
        raise ConfigError(
            f"task {task.name!r} has {task.num_clients} clients "
            f"but num_clients={out['num_clients']}"
        )
    sampler = sampler_of(out, task)  # validates the sampler against the population
    _check_byzantine(out, method, task, sampler, strategy_cls)
    out["method"] = strategy_cls.resolve(method, task, sampler)
    _check_derived(given, extras, out["method"])
    _check_batch_size(out["method"], task)
    if solve:
        try:
            task.optimum()
        except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            raise ConfigError(f"cannot compute the optimum of task {task.name!r}: {err}") from err
    return out


def _same(a: object, b: object) -> bool:
    """Equal values, mappings and sequences compared item by item (tuple = list)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _check_derived(given: Mapping, extras: list[str], resolved: Mapping) -> None:
    """Method keys that its yaml does not declare: each must be one that resolving derives
    (``cohort_size``, ``mu``, ``omega``, the block sections ``compressor``/``aggregator``/
    ``attack``, ...), with the value derived here, so a resolved config resolves again. Any
    other key, or a derived key set by hand, would be ignored: both are refused.

    ``resolved`` comes from the method section without ``extras``, so what it holds beyond
    the yaml is exactly what this run derives.
    """
    name = given["name"]
    valid = tuple(sorted(schema.accepted("method", name)))
    stray = [k for k in extras if k not in resolved]
    if stray:
        raise schema.error(
            schema.Unknown(f"method.{k}", f"for method {name!r}", valid) for k in stray
        )
    for key in extras:
        if not _same(given[key], resolved[key]):
            how = f"choose it with {key}=NAME" if key in BLOCK_GROUPS else "leave it out"
            raise ConfigError(
                f"method.{key} is derived when the config is resolved, not set: this run "
                f"derives {resolved[key]!r}, not {given[key]!r}; {how}"
            )


def _check_batch_size(method: Mapping, task: Task) -> None:
    """``method.batch_size`` against the clients' data (every method whose yaml has one).

    A minibatch larger than the data of every client is refused, with the largest client's
    size. One larger than only some clients' data is clamped for those clients: every client
    draws ``min(batch_size, n_m)`` distinct samples (so a small client takes its full local
    gradient), and one WARNING line says how many clients that is. Clamping, not refusing,
    because heterogeneous partitions (dirichlet, by_label, sorted) make small clients normal,
    and a refusal would rule out a sweep over them. Not checked where no minibatch is drawn:
    ``batch_size: null`` (R-SGD's full gradients) or ``local_solver: gd``.
    """
    b = method.get("batch_size")
    if not isinstance(b, int) or isinstance(b, bool) or method.get("local_solver") == "gd":
        return
    sizes = [int(c.num_samples) for c in task.clients]
    if b > max(sizes):
        raise ConfigError(
            f"method.batch_size={b} exceeds the data of every client (the largest holds "
            f"{max(sizes)} samples): use method.batch_size <= {max(sizes)}"
        )
    small = [n for n in sizes if n < b]
    if small:
        log.warning(
            "method.batch_size=%d exceeds the data of %d of %d clients (the smallest holds %d "
            "samples): they use all their samples in every minibatch",
            b,
            len(small),
            len(sizes),
            min(small),
        )


# Compressors whose payload is float values only (indices, if any, are integers left alone): a
# client-side attack can negate or replace the floats without breaking the decoder.
_FLOAT_PAYLOADS = ("identity", "rand_k", "biased_rand_k", "top_k", "perm_k")


def _check_byzantine(
    out: dict, method: dict, task: Task, sampler: Sampler, strategy_cls: type
) -> None:
    """The attack and aggregator groups against the population, the task and the method."""
    uses = getattr(strategy_cls, "uses", ())
    if "attack" not in uses and "aggregator" not in uses:
        return
    n = int(out["num_clients"])
    attack_cfg = dict(out.get("attack") or {"name": "none"})
    attack = build_attack(attack_cfg, n, int(out["seed"]))
    aggregator = build_aggregator(dict(out.get("aggregator") or {"name": "mean"}), len(attack.ids))
    robust = not (aggregator.name == "mean" and aggregator.bucketing == 1)
    if robust and sampler.__class__.__name__ not in (
        "FullSampler",
        "UniformSampler",
        "CyclicSampler",
    ):
        raise ConfigError(
            f"aggregator={aggregator.name} weighs every reply alike and needs cohorts of one "
            f"fixed size drawn uniformly; valid samplers: full, uniform, cyclic "
            f"(got {out['sampler']['name']!r})"
        )
    aggregator.check_inputs(sampler.max_cohort_size, "the cohort (sampler.cohort_size)")
    buckets = -(-sampler.max_cohort_size // aggregator.bucketing)
    if robust and aggregator.name != "mean" and buckets < 2:
        raise ConfigError(
            f"aggregator.bucketing={aggregator.bucketing} puts the whole cohort of "
            f"{sampler.max_cohort_size} into one bucket, and {aggregator.name} of one bucket "
            "mean is the mean: use aggregator.bucketing < sampler.cohort_size"
        )
    if attack.name == "label_flip":
        for b in attack.ids:
            try:
                task.clients[b].flipped()
            except TypeError as err:
                raise ConfigError(
                    f"attack=label_flip needs a task with labels; task {task.name!r}: {err}"
                ) from err
    if attack.name in CLIENT_SIDE and attack.name != "label_flip":
        comp = (out.get("compressor") or {}).get("name", "identity")
        if comp not in _FLOAT_PAYLOADS:
            raise ConfigError(
                f"attack={attack.name} rewrites the float values of a reply; compressor={comp} "
                f"sends codes. Valid compressors with this attack: {', '.join(_FLOAT_PAYLOADS)}"
            )
    if (
        attack.is_omniscient
        and attack.oracle == "all"
        and not getattr(strategy_cls, "oracle_ready", False)
    ):
        raise ConfigError(
            f"method {method['name']!r} keeps per-client state between rounds, so the honest "
            "vectors of clients outside the cohort cannot be computed without side effects: "
            "use attack.oracle=cohort"
        )


def build_strategy(cfg: Mapping, settings: Any) -> Any:
    """The method's Strategy for a resolved config."""
    task = task_of(cfg)
    cls = _class(cfg["method"]["strategy"], "strategy")
    return cls.from_config(cfg["method"], task, sampler_of(cfg, task), settings)


def client_factory(cfg: Mapping) -> Callable[[Context], NumPyClient]:
    """``context ↦`` the method's NumPyClient for that node (task and class looked up once)."""
    task = task_of(cfg)
    cls = _class(cfg["method"]["client"], "client")
    method, seed = cfg["method"], cfg["seed"]

    attack = cfg.get("attack") or {"name": "none"}
    byzantine = set(task.byzantine)
    client_side = attack.get("name") in CLIENT_SIDE

    def make(context: Context) -> NumPyClient:
        pid = int(context.node_config["partition-id"])
        if not 0 <= pid < task.num_clients:
            raise ConfigError(f"partition-id {pid} outside [0, {task.num_clients})")
        if client_side and pid in byzantine:
            from clients.attacks import byzantine_client

            return byzantine_client(cls, method, task, attack, pid, seed, context)
        return cls.from_config(method, task, pid, seed, context)

    from fedsim.faults import with_faults  # fault=...: faulty nodes get a FaultyClient

    return with_faults(cfg, make)


def build_client(cfg: Mapping, context: Context) -> Client:
    """The method's NumPyClient for the node whose ``context`` is given, as a Flower Client."""
    return client_factory(cfg)(context).to_client()
