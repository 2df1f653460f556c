"""Fault injection (``fault=...``, fedsim/faults.py): every kind is a counted failure exactly
when and where it was injected, on the inline engine and on Ray (a hanging client times out in
its own round without starving the others; a crash is one log line)."""

import logging
import math

import numpy as np
import pytest
from flwr.common import Context, RecordDict

from clients.fedavg import FedAvgClient
from fedsim.build import client_factory
from fedsim.errors import ConfigError
from fedsim.faults import DroppedMessage, FaultyClient, InjectedCrash, check_fault, poisoned
from fedsim.rng import generator
from fedsim.runner import run

N, ROUNDS = 6, 4
BASE = ("task=logreg_synthetic", "sampler=full", "method=fedavg", "max_failure_fraction=1.0")
SMALL = (*BASE, "engine=inline", f"num_clients={N}", f"num_rounds={ROUNDS}")
# Hydra reads a bare `nan` as a float: the group choice must be quoted on the command line.
KINDS = {
    "crash": "fault=crash",
    "drop": "fault=drop",
    "nan": "'fault=\"nan\"'",
    "wrong_shape": "fault=wrong_shape",
}


def column(rows, name):
    return [r[name] for r in rows]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_fault_is_counted_exactly_where_it_was_injected(compose, caplog, kind):
    """Clients 1 and 4 misbehave in every round after round 1: two failures in rounds 2..4,
    none before, and every failure logged names one of them."""
    cfg = compose(*SMALL, KINDS[kind], "fault.ids=[1,4]", "fault.after_round=1")
    with caplog.at_level(logging.WARNING):
        rows = run(cfg, None)
    expected = [0] + [0 if r <= 1 else 2 for r in range(1, ROUNDS + 1)]
    assert column(rows, "failures") == expected
    assert column(rows, "clients") == [0] + [N - f for f in expected[1:]]
    blamed = [r.getMessage() for r in caplog.records if "client" in r.getMessage()]
    assert len(blamed) == 2 * (ROUNDS - 1)
    if kind in ("crash", "drop"):  # the exception names the partition id (inline: node id too)
        pids = [int(m.split("fault=")[1].split("client ")[1].split(",")[0]) for m in blamed]
    else:  # the strategy's reply check names the partition id
        pids = [int(m.split("client ")[1].split(" ")[0]) for m in blamed]
    assert sorted(set(pids)) == [1, 4]


def test_a_slow_client_answers_correctly(compose):
    clean = run(compose(*SMALL), None)
    slow = run(compose(*SMALL, "fault=slow", "fault.ids=[0,5]", "fault.seconds=0.01"), None)
    assert column(slow, "failures") == [0] * (ROUNDS + 1)
    np.testing.assert_array_equal(column(slow, "loss"), column(clean, "loss"))


def test_a_fraction_and_a_probability_are_drawn_from_the_seed(compose):
    """fraction=0.5 of 6 clients: 3 faulty clients drawn from (seed, "fault/clients"); each one
    fails in round r iff its coin generator(seed, r, "fault/coin", pid) falls below prob."""
    seed, rounds, prob = 5, 8, 0.5
    over = (*BASE, "engine=inline", f"num_clients={N}", f"seed={seed}", f"num_rounds={rounds}")
    over = (*over, "fault=crash", "fault.fraction=0.5")
    rows = run(compose(*over, f"fault.prob={prob}"), None)
    faulty = generator(seed, 0, "fault/clients").choice(N, size=math.ceil(0.5 * N), replace=False)
    expected = [0] + [
        sum(generator(seed, r, "fault/coin", int(p)).random() < prob for p in faulty)
        for r in range(1, rounds + 1)
    ]
    assert column(rows, "failures") == expected
    assert 0 < sum(expected) < 3 * rounds  # the coin did decide something
    assert column(run(compose(*over, "fault.prob=0"), None), "failures") == [0] * (rounds + 1)


def test_faults_only_strike_fit_and_poison_every_array():
    class Honest:
        def fit(self, parameters, config):
            return [np.ones(3), np.arange(2)], 7, {}

        def get_properties(self, config):
            return {"partition-id": 2}

    from fedsim.faults import Fault

    client = FaultyClient(Honest(), Fault("crash", (2,)), pid=2, seed=0)
    assert client.get_properties({}) == {"partition-id": 2}
    with pytest.raises(InjectedCrash, match="client 2, round 1"):
        client.fit([], {"round": 1})
    with pytest.raises(DroppedMessage):
        FaultyClient(Honest(), Fault("drop", (2,)), 2, 0).fit([], {"round": 1})
    late = FaultyClient(Honest(), Fault("crash", (2,), after_round=3), 2, 0)
    assert late.fit([], {"round": 3})[1] == 7  # honest up to after_round
    nan = poisoned("nan", [np.ones(3), np.arange(2)])
    assert np.isnan(nan[0]).all() and nan[1].tolist() == [0, 1]  # integer indices kept
    assert np.isnan(poisoned("nan", [np.arange(2)])[0]).all()  # no float array: made one
    assert [a.shape for a in poisoned("wrong_shape", [np.ones(3), np.ones((2, 2))])] == [(4,), (5,)]


def test_every_engine_builds_the_faulty_client_from_the_same_overrides(compose):
    """Deployment's ClientApp composes the config from the run config's overrides, exactly as
    the other engines do: the same nodes get the FaultyClient."""
    from fedsim.app import _deployment_client_fn

    overrides = (
        "method=fedavg task=logreg_synthetic num_clients=6 sampler=full fault=crash fault.ids=[1]"
    )
    for pid, faulty in ((0, False), (1, True)):
        context = Context(
            run_id=0,
            node_id=pid,
            node_config={"partition-id": pid, "num-partitions": N},
            state=RecordDict(),
            run_config={"overrides": overrides, "outdir": ""},
        )
        client = _deployment_client_fn(context)
        assert isinstance(client.numpy_client, FaultyClient) is faulty
        direct = client_factory(compose(*overrides.split()))(context)
        assert isinstance(direct, FaultyClient) is faulty


def test_the_resolved_config_the_deployment_apps_read_is_the_composed_one(compose):
    """``python -m fedsim engine=deployment`` sends the resolved config as JSON (``config`` in the
    run config), so ClientApps skip Hydra: it gives back exactly the config the overrides
    compose, integer keys (``fault.kinds``) included, and the same faulty nodes."""
    from fedsim.app import _deployment_client_fn, config_from_json, config_json

    overrides = (
        "method=fedavg task=logreg_synthetic num_clients=6 sampler=full fault=mixed "
        "fault.kinds={1:crash,4:nan}"
    )
    cfg = compose(*overrides.split())
    text = config_json(cfg)
    back = config_from_json(text)
    kinds = back["fault"].pop("kinds")  # YAML reads `nan` as a float NaN, which != itself
    assert list(kinds) == [1, 4] and kinds[1] == "crash" and math.isnan(kinds[4])
    assert back == {**cfg, "fault": {k: v for k, v in cfg["fault"].items() if k != "kinds"}}
    for pid in range(6):
        context = Context(
            run_id=0,
            node_id=pid,
            node_config={"partition-id": pid, "num-partitions": 6},
            state=RecordDict(),
            run_config={"overrides": "method=this_is_not_read", "outdir": "", "config": text},
        )
        client = _deployment_client_fn(context)
        assert isinstance(client.numpy_client, FaultyClient) is (pid in (1, 4))
    assert config_json({"a": (1, 2)}) == ""  # JSON would give a list back: compose instead
    assert config_json({"x": {"y": 1e400}}) == '{"x": {"y": Infinity}}'


def fault_cfg(fault: dict, engine: str = "inline", timeout: float | None = None) -> dict:
    return {
        "num_clients": N,
        "seed": 0,
        "engine": {"name": engine, "round_timeout": timeout},
        "fault": fault,
    }


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (fault_cfg({"name": "flaky"}), "unknown fault 'flaky'; valid choices: crash, drop, hang"),
        (fault_cfg({"name": "crash", "ids": [6]}), r"partition ids in \[0, 6\) \(num_clients=6\)"),
        (fault_cfg({"name": "crash", "ids": [1, 1]}), "distinct"),
        (
            fault_cfg({"name": "crash", "fraction": 1.5}),
            r"fault.fraction must be a number in \[0, 1\]",
        ),
        (fault_cfg({"name": "drop", "prob": -0.1}), r"fault.prob must be a number in \[0, 1\]"),
        (fault_cfg({"name": "drop", "after_round": -1}), "after_round must be an integer >= 0"),
        (fault_cfg({"name": "none", "ids": [1]}), "fault=none has no faulty clients"),
        (fault_cfg({"name": "hang", "ids": [1]}, "ray"), "needs engine.round_timeout"),
        (fault_cfg({"name": "hang", "ids": [1], "seconds": 60}, "ray", 60), "merely slow"),
        (
            fault_cfg({"name": "slow", "ids": [1], "seconds": 9}, "deployment", 5),
            "that is fault=hang",
        ),
        (
            fault_cfg({"name": "slow", "ids": [1], "seconds": 0}),
            "fault.seconds must be a number > 0",
        ),
        (fault_cfg({"name": "mixed"}), "fault=mixed needs fault.kinds"),
        (fault_cfg({"name": "mixed", "kinds": {6: "crash"}}), r"keys must be partition ids"),
        (fault_cfg({"name": "mixed", "kinds": {1: "boom"}}), r"unknown fault.kinds\[1\] 'boom'"),
        (fault_cfg({"name": "mixed", "kinds": {1: "hang"}}, "inline"), "would stall the run"),
        (
            fault_cfg({"name": "mixed", "kinds": {1: "slow"}, "slow_seconds": 9}, "ray", 5),
            "fault.slow_seconds=9 s",
        ),
    ],
)
def test_impossible_fault_configs_are_refused(cfg, message):
    with pytest.raises(ConfigError, match=message):
        check_fault(cfg)


def test_the_config_checks_refuse_a_hang_on_the_inline_engine(compose):
    """resolve() runs the fault checks before any engine starts."""
    with pytest.raises(ConfigError, match="engine=inline would stall the run"):
        compose(*SMALL, "fault=hang")
    assert check_fault(compose(*BASE, f"num_clients={N}", "fault=hang")).seconds == 3600  # ray


# --------------------------------------------------------------------------- Ray

# client 0 raises (CrashingFedAvg, below), client 1 is the faulty one
PAIR = (
    *BASE,
    "num_clients=4",
    "num_rounds=2",
    "checkpoint_every_s=null",  # no checkpoint between the rounds timed below
    "method.client=tests.test_faults.CrashingFedAvg",
    "fault.ids=[1]",
)


@pytest.fixture(scope="module")
def one_ray():
    """The Ray runs of this module share one Ray (started only if a Ray test runs)."""
    from fedsim.engines.ray import shared_ray

    with shared_ray():
        yield


class CrashingFedAvg(FedAvgClient):
    """Client 0 raises in every fit: a crash that is not injected by the fault group."""

    def fit(self, parameters, config):
        if self.pid == 0:
            raise ValueError(f"client 0 crashed in round {config['round']}")
        return super().fit(parameters, config)


@pytest.mark.xdist_group("ray-faults")  # one worker, one shared Ray
def test_a_hanging_and_a_crashing_ray_client_fail_in_their_own_rounds_only(
    compose, caplog, capfd, tmp_path, one_ray
):
    """Client 1 hangs for an hour in every fit, client 0 raises. Each round counts exactly these
    two failures: the hang as a timeout logged with its partition id, the crash as one WARNING
    line without traceback. The hung Ray actor is replaced, so the healthy clients 2 and 3 of
    the next round still answer, and the run ends when its last round does. (One Ray run for
    both: each run costs its actors' start-up.)"""
    cfg = compose(*PAIR, "engine=ray", "output.plot=false", "fault=hang", "engine.round_timeout=4")
    with caplog.at_level(logging.WARNING):
        rows = run(cfg, tmp_path)
    assert column(rows, "failures") == [0, 2, 2]
    assert column(rows, "clients") == [0, 2, 2]
    assert rows[2]["wall_s"] - rows[1]["wall_s"] < 8  # round 2 took its 4 s, not 4 + a hang
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    about = [r.getMessage() for r in loud if r.getMessage().startswith("client ")]
    assert about == [
        line
        for rnd in (1, 2)
        for line in (
            f"client 0 raised in its fit of round {rnd}: ValueError: client 0 crashed in "
            f"round {rnd}",
            f"client 1: timeout, no reply to its fit of round {rnd} within the round timeout "
            "(4 s); counted as a failure, its Ray actor killed and replaced",
        )
    ]
    assert not [r for r in loud if "Traceback" in r.getMessage() or r.exc_info]
    assert not [r for r in loud if r.name.startswith("flwr") and r.levelno >= logging.ERROR]
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    # the same run inline, where client 1's message is lost instead: the very same metrics
    inline = run(compose(*PAIR, "engine=inline", "fault=drop"), None)
    for name in ("loss", "failures", "clients", "up_bits"):
        np.testing.assert_allclose(column(rows, name), column(inline, name), rtol=1e-9, atol=0)


# one client of each kind that can run inline; 0 and 6 are healthy
MIXED = "fault.kinds={1:crash,2:drop,3:nan,4:wrong_shape,5:slow}"


@pytest.mark.xdist_group("ray-faults")  # one worker, one shared Ray
def test_every_kind_at_once_on_ray_is_counted_exactly(compose, tmp_path, one_ray):
    """``fault=mixed`` on Ray, from round 2 on: clients 1–4 fail (crash, drop, nan,
    wrong_shape), client 5 is slow but correct, clients 0 and 6 are healthy; the failures
    column counts exactly the four, and the run is the inline run of the same faults."""
    common = (*BASE, "num_clients=7", "num_rounds=2", "fault=mixed", MIXED)
    common = (*common, "fault.slow_seconds=0.05", "fault.after_round=1")
    rows = run(compose(*common, "engine=ray", "output.plot=false"), tmp_path)
    assert column(rows, "failures") == [0, 0, 4]
    assert column(rows, "clients") == [0, 7, 3]
    inline = run(compose(*common, "engine=inline"), None)
    for name in ("loss", "failures", "clients", "up_bits"):
        np.testing.assert_allclose(column(rows, name), column(inline, name), rtol=1e-9, atol=0)
