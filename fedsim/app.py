"""The ServerApp and ClientApp every engine runs.

``server_fn``/``client_fn`` build the method's Strategy and NumPyClient from one resolved config
(:mod:`fedsim.build`). The ray and inline engines bind the config directly; the deployment
objects :data:`server_app` and :data:`client_app` (named in ``pyproject.toml`` for ``flwr run``)
read it from the run config: the resolved config as JSON in ``config`` when ``python -m fedsim``
submitted the run (:func:`config_json`), else composed from the ``overrides`` string, exactly as
``python -m fedsim`` would::

    flwr run . local --run-config 'overrides="method=fedavg sampler=cyclic" outdir="/abs/dir"'
"""

from __future__ import annotations

import functools
import json
import math
import shlex
from collections.abc import Mapping
from pathlib import Path

from flwr.client import Client, ClientApp
from flwr.common import Context
from flwr.server import Server, ServerApp, ServerAppComponents, ServerConfig
from flwr.server.client_manager import SimpleClientManager

from fedsim.build import build_client, build_strategy, resolve
from strategies.base import RunSettings

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def settings_of(cfg: Mapping, outdir: str | None, progress: bool) -> RunSettings:
    deployed = cfg["engine"]["name"] == "deployment"
    return RunSettings(
        seed=cfg["seed"],
        num_rounds=cfg["num_rounds"],
        eval_every=cfg["eval_every"],
        max_failure_fraction=float(cfg["max_failure_fraction"]),
        max_failed_rounds=cfg["max_failed_rounds"],
        max_loss_ratio=loss_ratio(cfg),
        # deployment cannot resume (README), so it writes no checkpoint
        checkpoint_every=None if deployed else cfg.get("checkpoint_every"),
        checkpoint_every_s=None if deployed else _ratio(cfg.get("checkpoint_every_s")),
        tensorboard=_tensorboard(cfg),
        outdir=outdir,
        progress=progress,
        name_missing=deployed,
        mark_done=deployed,
    )


def loss_ratio(cfg: Mapping) -> float | None:
    """``max_loss_ratio``, or None (only non-finite losses count as divergence) when the run has
    an attack: a Byzantine attack that pushes the honest loss up is the attack working, not a
    stepsize that diverged (the Byzantine experiments show such curves)."""
    attack = cfg.get("attack") or {}
    if attack.get("name", "none") != "none":
        return None
    return _ratio(cfg.get("max_loss_ratio", 1e6))


def _tensorboard(cfg: Mapping) -> dict | None:
    logger = dict(cfg.get("logger") or {"name": "none"})
    return logger if logger.get("name") == "tensorboard" else None


def _ratio(value: object) -> float | None:
    return None if value is None else float(value)


def round_timeout(cfg: Mapping) -> float | None:
    value = cfg["engine"].get("round_timeout")
    return None if value is None else float(value)


def server_fn(
    cfg: Mapping, outdir: str | None, progress: bool, context: Context, resume: bool = False
):
    """A legacy ``Server`` around the method's strategy, dispatching to the whole cohort at once.
    ``resume``: the strategy continues from ``outdir``'s checkpoint, and Flower runs the rounds
    that are left."""
    strategy = build_strategy(cfg, settings_of(cfg, outdir, progress))
    rounds = cfg["num_rounds"]
    if resume:
        assert outdir is not None
        from fedsim import checkpoint

        rounds = strategy.resume_from(checkpoint.load(outdir))
    server = Server(client_manager=SimpleClientManager(), strategy=strategy)
    server.set_max_workers(strategy.sampler.max_cohort_size)
    config = ServerConfig(num_rounds=rounds, round_timeout=round_timeout(cfg))
    return ServerAppComponents(server=server, config=config)


def client_fn(cfg: Mapping, context: Context) -> Client:
    return build_client(cfg, context)


def bound_apps(
    cfg: Mapping, outdir: str | None, progress: bool, resume: bool = False
) -> tuple[ServerApp, ClientApp]:
    """ServerApp and ClientApp bound to one resolved config (ray and inline engines)."""
    serve = functools.partial(server_fn, dict(cfg), outdir, progress, resume=resume)
    server = ServerApp(server_fn=serve)
    client = ClientApp(client_fn=functools.partial(client_fn, dict(cfg)))
    return server, client


@functools.lru_cache(maxsize=8)
def compose(overrides: str) -> dict:
    """Compose ``conf/`` with Hydra overrides (a shell-quoted string) and resolve it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=shlex.split(overrides))
    return resolve(cfg)


def config_json(cfg: Mapping) -> str:
    """The resolved config as a JSON string for the run config's ``config`` key, so that every
    ClientApp process (one per message in Flower 1.42) reads it instead of importing Hydra and
    composing (about 0.6 s of CPU each). A mapping with a non-string key (``fault.kinds``) is
    written as ``{"__items__": [[key, value], ...]}``. "" when the JSON form would not give back
    the same config (the apps then compose from ``overrides``)."""
    text = json.dumps(_tagged(cfg))
    return text if _same(config_from_json(text), cfg) else ""


def _same(a: object, b: object) -> bool:
    """Equal values of equal types, NaN equal to NaN (``fault.kinds={3: nan}`` parses as one)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def config_from_json(text: str) -> dict:
    """The config :func:`config_json` wrote."""
    return _untagged(json.loads(text))


def _tagged(value: object) -> object:
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value) and "__items__" not in value:
            return {k: _tagged(v) for k, v in value.items()}
        return {"__items__": [[k, _tagged(v)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_tagged(v) for v in value]
    return value


def _untagged(value: object) -> object:
    if isinstance(value, dict):
        if set(value) == {"__items__"}:
            return {k: _untagged(v) for k, v in value["__items__"]}
        return {k: _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value


def _run_config(context: Context) -> tuple[dict, str | None]:
    """The run's config: the resolved ``config`` JSON when the submitter sent one (``python -m
    fedsim engine=deployment`` does), else composed from ``overrides`` (``flwr run`` by hand)."""
    outdir = str(context.run_config.get("outdir", "")) or None
    text = str(context.run_config.get("config", ""))
    if text:
        return config_from_json(text), outdir
    return compose(str(context.run_config.get("overrides", ""))), outdir


def _deployment_server_fn(context: Context) -> ServerAppComponents:
    cfg, outdir = _run_config(context)
    return server_fn(cfg, outdir, False, context)


def _deployment_client_fn(context: Context) -> Client:
    cfg, _ = _run_config(context)
    return client_fn(cfg, context)


server_app = ServerApp(server_fn=_deployment_server_fn)
client_app = ClientApp(client_fn=_deployment_client_fn)
