"""Local optimizers of the FedAvg client (``method.local_optimizer``): the default is today's plain
step, bit for bit; adamw and microadam equal a hand-written torch loop across rounds, their state
carried in ``context.state`` (inline and ray alike, and through a checkpoint); bad knobs are
refused before any engine starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.common import Context, RecordDict

from clients.fedavg import FedAvgClient
from fedsim import checkpoint
from fedsim.app import server_fn
from fedsim.blocks.local_optimizer import STATE_KEY, LocalOptimizer
from fedsim.blocks.optim import MicroAdam
from fedsim.blocks.solvers import local_solve
from fedsim.build import client_factory, task_of
from fedsim.engines.inline import make_nodes, run_rounds
from fedsim.engines.ray import shared_ray
from fedsim.errors import ConfigError
from fedsim.metrics import read_columns
from fedsim.rng import generator
from fedsim.runner import run

ROOT = Path(__file__).resolve().parents[1]
LOGREG = (
    "engine=inline",
    "method=fedavg",
    "task=logreg_synthetic",
    "num_clients=4",
    "sampler=full",
)
TINY_MLP = ("task=mlp_digits", "task.hidden=8", "partition=iid", "method=fedavg")
# one client, everyone sampled, server_lr = 1: FedAvg is x ← x − Δ, one local run after another
SINGLE = (
    *TINY_MLP,
    "engine=inline",
    "num_clients=1",
    "sampler=full",
    "method.local_solver=sgd",
    "method.batch_size=32",
    "method.local_steps=5",
    "method.server_lr=1.0",
    "seed=4",
)
MICRO = ("method.microadam_window=3", "method.microadam_density=0.05", "method.microadam_bucket=16")
LR = {"adamw": 3e-3, "microadam": 3e-3}


@pytest.fixture(scope="module")
def one_ray():
    """The one Ray run of this module shares a Ray started once (tests/test_engines.py)."""
    with shared_ray():
        yield


def context(pid: int = 0) -> Context:
    return Context(0, pid, {"partition-id": pid}, RecordDict(), {})


def fit(cfg: dict, ctx: Context, x: np.ndarray, rnd: int, **config) -> np.ndarray:
    """One round of a client rebuilt for the message, as Flower does."""
    client = FedAvgClient.from_config(cfg["method"], task_of(cfg), 0, cfg["seed"], ctx)
    return client.fit([x], {"round": rnd, **config})[0][0]


# --- the default ----------------------------------------------------------------------------

# metrics of two fixed configs, recorded with the client as it was before local optimizers
GOLDEN = {
    (
        *LOGREG,
        "task.samples_per_client=30",
        "method.local_solver=sgd",
        "method.batch_size=5",
        "num_rounds=3",
        "seed=2",
    ): [0.6931471805599453, 0.430555898963989, 0.33361539222901415, 0.29975982298843473],
    (
        *TINY_MLP,
        "engine=inline",
        "num_clients=3",
        "sampler=full",
        "method.local_solver=sgd",
        "method.batch_size=16",
        "method.client_lr=0.1",
        "num_rounds=3",
        "seed=1",
    ): [2.327106322569635, 2.2439333295984394, 2.1823536770124536, 2.1117421532817664],
}


def test_the_default_is_the_plain_step_with_the_metrics_it_had(compose):
    shipped = yaml.safe_load((ROOT / "conf" / "method" / "fedavg.yaml").read_text())
    assert shipped["local_optimizer"] == "sgd" and shipped["reset_optimizer"] is False
    for overrides, losses in GOLDEN.items():
        rows = run(compose(*overrides), None)
        np.testing.assert_allclose([r["loss"] for r in rows], losses, rtol=1e-13, atol=0)
    # the reply is local_solve's x − y, bit for bit, and the node keeps nothing
    cfg = compose(*LOGREG, "method.local_solver=sgd", "method.batch_size=4")
    task, m, ctx = task_of(cfg), cfg["method"], context()
    x = np.linspace(-0.2, 0.3, task.dim)
    expected = local_solve(
        task.clients[0],
        x,
        solver="sgd",
        lr=m["client_lr"],
        rng=generator(cfg["seed"], 2, "local-solver", 0),
        local_steps=m["local_steps"],
        batch_size=m["batch_size"],
    )
    np.testing.assert_array_equal(fit(cfg, ctx, x, 2), x - expected.y)
    assert len(ctx.state) == 0


@pytest.mark.parametrize("solver", ["gd", "sgd", "rr", "so"])
def test_torch_sgd_without_momentum_takes_the_plain_steps_of_every_batch_order(compose, solver):
    """The torch path draws the batches local_solve draws (and runs on a task without a torch
    model: logistic regression's gradient is a flat numpy vector)."""
    common = (*LOGREG, f"method.local_solver={solver}", "method.batch_size=7", "seed=3")
    plain = compose(*common)
    heavy = compose(*common, "method.local_optimizer=sgdm", "method.momentum=0.0")
    heavy["method"]["client_lr"] = plain["method"]["client_lr"]
    x = np.full(task_of(plain).dim, 0.05)
    for rnd in (1, 2):
        np.testing.assert_allclose(
            fit(heavy, context(), x, rnd), fit(plain, context(), x, rnd), rtol=1e-12, atol=1e-15
        )


# --- equal to a hand-written loop ------------------------------------------------------------


def hand_loop(
    cfg: dict, name: str, rounds: int, fresh: frozenset[int] = frozenset({1})
) -> tuple[list[np.ndarray], list[float]]:
    """FedAvg with one client and server_lr 1, written here: one torch optimizer on a flat
    float64 tensor, built anew in the rounds ``fresh`` only, the client's minibatches (sorted
    draws without replacement from the keyed generator), ``x ← x − (x − p)`` after every round.
    Returns the displacements and the loss after every round."""
    task, m = task_of(cfg), cfg["method"]
    obj, x = task.clients[0], task.x0.copy()
    p = torch.nn.Parameter(torch.tensor(x))

    def make() -> torch.optim.Optimizer:
        betas = tuple(m["optimizer_betas"])
        if name == "adamw":
            wd = m["weight_decay"]  # 0 in fedavg.yaml; torch's own default is 0.01
            return torch.optim.AdamW(
                [p], lr=m["client_lr"], betas=betas, eps=m["optimizer_eps"], weight_decay=wd
            )
        return MicroAdam(
            [p],
            lr=m["client_lr"],
            betas=betas,
            eps=m["optimizer_eps"],
            m=m["microadam_window"],
            density=m["microadam_density"],
            bucket=m["microadam_bucket"],
        )

    deltas, losses = [], []
    for rnd in range(1, rounds + 1):
        if rnd in fresh:
            opt = make()
        with torch.no_grad():
            p.copy_(torch.from_numpy(x))
        rng = generator(cfg["seed"], rnd, "local-solver", 0)
        for _ in range(m["local_steps"]):
            idx = np.sort(rng.choice(obj.num_samples, size=m["batch_size"], replace=False))
            p.grad = torch.from_numpy(obj.grad(p.detach().numpy().copy(), idx))
            opt.step()
        delta = x - p.detach().numpy()
        deltas.append(delta)
        x = x - delta
        losses.append(task.full.loss(x))
    return deltas, losses


@pytest.mark.parametrize("name", ["adamw", "microadam"])
def test_local_steps_equal_a_hand_loop_with_the_state_carried_across_rounds(compose, name):
    cfg = compose(*SINGLE, f"method.local_optimizer={name}", f"method.client_lr={LR[name]}", *MICRO)
    deltas, losses = hand_loop(cfg, name, rounds=3)
    ctx, x = context(), task_of(cfg).x0.copy()
    for rnd, expected in enumerate(deltas, start=1):
        delta = fit(cfg, ctx, x, rnd)
        np.testing.assert_array_equal(delta, expected, err_msg=f"round {rnd}")
        x = x - delta
    assert ctx.state[STATE_KEY].to_numpy_ndarrays()[0].dtype == np.uint8  # torch.save's bytes
    # round 2 did start from round 1's state: a fresh optimizer every round is another run
    fresh, _ = hand_loop(cfg, name, rounds=2, fresh=frozenset({1, 2}))
    assert np.abs(fresh[1] - deltas[1]).max() > 1e-6
    # the same through the inline engine, whose node keeps one Context for the whole run
    rows = run(compose(*SINGLE, *MICRO, f"method.local_optimizer={name}",
                       f"method.client_lr={LR[name]}", "num_rounds=3"), None)  # fmt: skip
    np.testing.assert_allclose([r["loss"] for r in rows[1:]], losses, rtol=1e-12, atol=0)


def test_a_float32_task_steps_a_float32_parameter(compose):
    """The parameter takes the task's dtype; Δ = p₀ − p_K in float64, zero for zero steps."""
    cfg = compose(*SINGLE, "task.dtype=float32", "method.local_optimizer=adamw",
                  "method.client_lr=0.003")  # fmt: skip
    task, m = task_of(cfg), cfg["method"]
    x = task.x0.copy()
    p = torch.nn.Parameter(torch.tensor(x, dtype=torch.float32))
    start = p.detach().clone()
    opt = torch.optim.AdamW([p], lr=m["client_lr"], betas=(0.9, 0.999), weight_decay=0.0)
    rng = generator(cfg["seed"], 1, "local-solver", 0)
    for _ in range(m["local_steps"]):
        idx = np.sort(rng.choice(task.clients[0].num_samples, size=m["batch_size"], replace=False))
        g = task.clients[0].grad(p.detach().double().numpy(), idx)
        p.grad = torch.from_numpy(g).float()
        opt.step()
    expected = (start.double() - p.detach().double()).numpy()
    np.testing.assert_array_equal(fit(cfg, context(), x, 1), expected)
    cfg["method"]["client_lr"] = 1e-300  # underflows to a zero step in float32
    assert not np.any(fit(cfg, context(), x, 1))


@pytest.mark.parametrize(("reset", "fresh"), [("false", {1}), ("true", {1, 2, 3}), ("2", {1, 3})])
def test_reset_optimizer_chooses_the_rounds_that_start_fresh(compose, reset, fresh):
    cfg = compose(*SINGLE, "method.local_optimizer=adamw", "method.client_lr=0.003",
                  f"method.reset_optimizer={reset}")  # fmt: skip
    deltas, _ = hand_loop(cfg, "adamw", rounds=3, fresh=frozenset(fresh))
    ctx, x = context(), task_of(cfg).x0.copy()
    for rnd, expected in enumerate(deltas, start=1):
        delta = fit(cfg, ctx, x, rnd)
        np.testing.assert_array_equal(delta, expected, err_msg=f"round {rnd}")
        x = x - delta
    assert (STATE_KEY in ctx.state) == (reset != "true")  # true: the node keeps nothing


def test_an_oracle_call_leaves_the_kept_state_alone(compose):
    cfg = compose(*SINGLE, "method.local_optimizer=microadam", "method.client_lr=0.003", *MICRO)
    ctx, x = context(), task_of(cfg).x0.copy()
    x = x - fit(cfg, ctx, x, 1)
    before = ctx.state[STATE_KEY].to_numpy_ndarrays()[0].copy()
    asked = fit(cfg, ctx, x, 2, oracle=1)
    np.testing.assert_array_equal(ctx.state[STATE_KEY].to_numpy_ndarrays()[0], before)
    np.testing.assert_array_equal(fit(cfg, ctx, x, 2), asked)  # what it sends when sampled


# --- engines and checkpoints -----------------------------------------------------------------

FEDERATED = (
    *TINY_MLP,
    "num_clients=3",
    "sampler=uniform",
    "sampler.cohort_size=2",
    "method.local_solver=sgd",
    "method.batch_size=16",
    "method.local_steps=4",
    "method.local_optimizer=microadam",
    "method.client_lr=0.003",
    *MICRO,
    "seed=5",
)


def test_inline_and_ray_agree_with_microadam_state_in_the_nodes(compose, tmp_path, one_ray):
    common = (*FEDERATED, "num_rounds=4")
    inline = run(compose(*common, "engine=inline"), tmp_path / "inline")
    ray = run(compose(*common, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray")
    for column in ("loss", "grad_evals", "up_bits", "clients"):
        a = np.array([r[column] for r in inline], dtype=float)
        b = np.array([r[column] for r in ray], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=0, err_msg=column)
    fresh = run(compose(*common, "engine=inline", "method.reset_optimizer=true"), None)
    assert fresh[-1]["loss"] != inline[-1]["loss"]  # the kept state changed the run


def test_a_crashed_run_resumes_with_the_optimizer_states(compose, tmp_path):
    common = (*FEDERATED, "engine=inline", "num_rounds=6")
    run(compose(*common), tmp_path / "full")
    crashing = compose(*common, "checkpoint_every=2")
    outdir = tmp_path / "crashed"
    strategy = server_fn(crashing, str(outdir), False, None).server.strategy
    nodes = make_nodes(client_factory(crashing), crashing["num_clients"], crashing["seed"])

    class Crash(Exception):
        pass

    def after(rnd: int) -> None:
        if rnd == 3:
            raise Crash

    with pytest.raises(Crash):
        run_rounds(strategy, nodes, crashing["num_rounds"], after)
    assert checkpoint.load(outdir).round == 2
    assert any(STATE_KEY.encode() in blob for blob in checkpoint.load(outdir).nodes.values())
    run(compose(*common), outdir, resume=True)
    full, resumed = (
        read_columns(tmp_path / "full" / "metrics.csv"),
        read_columns(outdir / "metrics.csv"),
    )
    for column in ("loss", "grad_evals", "up_bits"):
        np.testing.assert_array_equal(resumed[column], full[column], err_msg=column)


# --- refusals --------------------------------------------------------------------------------

BAD = {
    "method.local_optimizer=adam": "valid choices: adamw, microadam, sgd, sgdm",
    "method.microadam_density=0": r"microadam_density .* \(0, 1\]",
    "method.microadam_density=1.5": r"microadam_density .* \(0, 1\]",
    "method.microadam_window=0": "microadam_window",
    "method.microadam_bucket=0": "microadam_bucket",
    "method.optimizer_betas=[0.9]": "a pair",
    "method.optimizer_betas=[0.9,1.0]": r"β2\) must lie in \[0, 1\)",
    "method.optimizer_eps=-1": "optimizer_eps",
    "method.weight_decay=-0.1": "weight_decay",
    "method.momentum=1.0": "momentum",
    "method.reset_optimizer=0": "reset_optimizer",
    "method.reset_optimizer=sometimes": "reset_optimizer",
    "method.client_lr=-0.1": "client_lr",
}


@pytest.mark.parametrize("bad", list(BAD))
def test_bad_knobs_are_refused_before_any_engine_starts(compose, bad):
    with pytest.raises(ConfigError, match=BAD[bad]):
        compose(*LOGREG, "method.local_optimizer=microadam", "method.client_lr=0.01", bad)


def test_weight_decay_is_refused_for_the_plain_step_and_auto_lr_is_resolved(compose):
    with pytest.raises(ConfigError, match="local_optimizer=sgd"):
        compose(*LOGREG, "method.weight_decay=0.01")
    assert compose(*LOGREG, "method.local_optimizer=adamw")["method"]["client_lr"] == 1e-3
    plain = compose(*LOGREG, "method.local_solver=sgd")["method"]["client_lr"]
    heavy = compose(*LOGREG, "method.local_solver=sgd", "method.local_optimizer=sgdm")
    assert heavy["method"]["client_lr"] == pytest.approx((1 - 0.9) * plain, rel=1e-12)
    again = compose(*LOGREG, "method.local_optimizer=adamw", "method.client_lr=0.02")
    assert again["method"]["client_lr"] == 0.02


def test_the_rule_refuses_bad_values_by_itself():
    """What a client checks again when it builds its rule (a section that skipped resolving)."""
    good = {"local_optimizer": "microadam", "client_lr": 0.01}
    assert LocalOptimizer.from_method(good).window == 10
    for bad in (
        {"local_optimizer": "lion"},
        {"microadam_density": 0.0},
        {"microadam_window": 0},
        {"optimizer_betas": [0.9]},
        {"reset_optimizer": -1},
        {"client_lr": "auto"},
        {"client_lr": 0.0},
    ):
        with pytest.raises(ConfigError):
            LocalOptimizer.from_method({**good, **bad})
