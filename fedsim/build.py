"""From one composed config to the objects every engine runs.

:func:`resolve` validates a composed config before any engine starts (unknown names, impossible
values, missing files, resources) and turns ``auto`` hyperparameters into numbers, returning a
plain dict. :func:`build_strategy` and :func:`build_client` turn that dict into the method's
Flower ``Strategy`` and ``NumPyClient``; the ray, inline and deployment engines all call them.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import Client, NumPyClient
from flwr.common import Context

from fedsim.blocks.aggregators import build_aggregator
from fedsim.blocks.attacks import CLIENT_SIDE, build_attack, byzantine_ids
from fedsim.blocks.samplers import Sampler, build_sampler
from fedsim.errors import ConfigError, int_at_least, unknown
from fedsim.tasks.base import Task
from fedsim.tasks.registry import build_task

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


def _check_engine(cfg: Mapping) -> None:
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
    if name != "ray":
        return
    res = engine.get("client_resources") or {}
    cpus, gpus = res.get("num_cpus", 1), res.get("num_gpus", 0.0)
    if not isinstance(cpus, int | float) or cpus <= 0:
        raise ConfigError(f"engine.client_resources.num_cpus must be > 0, got {cpus!r}")
    if not isinstance(gpus, int | float) or gpus < 0:
        raise ConfigError(f"engine.client_resources.num_gpus must be >= 0, got {gpus!r}")
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

    With ``solve`` the task's optimum is computed (and cached) here too, so a solver failure is
    reported before any engine starts.
    """
    out = to_dict(cfg)
    for key in ("method", "task", "partition", "sampler", "engine"):
        if not isinstance(out.get(key), Mapping) or "name" not in out[key]:
            raise ConfigError(f"the config has no {key} group (choose one with {key}=NAME)")
    int_at_least("seed", out.get("seed"), 0)
    int_at_least("num_clients", out.get("num_clients"), 1)
    int_at_least("num_rounds", out.get("num_rounds"), 1)
    int_at_least("eval_every", out.get("eval_every"), 1)
    int_at_least("max_failed_rounds", out.get("max_failed_rounds"), 1)
    frac = out.get("max_failure_fraction", 0.5)
    if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac <= 1:
        raise ConfigError(f"max_failure_fraction must lie in [0, 1], got {frac!r}")
    _check_engine(out)
    method = dict(out["method"])
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
    if solve:
        try:
            task.optimum()
        except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            raise ConfigError(f"cannot compute the optimum of task {task.name!r}: {err}") from err
    return out


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

    return make


def build_client(cfg: Mapping, context: Context) -> Client:
    """The method's NumPyClient for the node whose ``context`` is given, as a Flower Client."""
    return client_factory(cfg)(context).to_client()
