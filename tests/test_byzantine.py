"""Byzantine-robust methods: the E1 claim on a9a, the honest objective, what an omniscient
adversary may see, composition with other methods, and refusals before the run."""

import dataclasses

import numpy as np
import pytest

from fedsim.app import server_fn
from fedsim.blocks.attacks import Attack
from fedsim.build import client_factory, task_of
from fedsim.engines.inline import make_nodes, run_rounds
from fedsim.errors import ConfigError
from fedsim.runner import run

# E1 (arXiv 2311.14127, Fig. 1) at test size: a9a (2,000 samples held by every client), l2 = 0.01,
# 20 clients of which 5 Byzantine (shift-back), cohorts of 4, CM with bucketing 2, batch 32, a full
# gradient at every epoch's start (the authors' code rule), gamma = 0.5 (their grid's largest).
E1 = (
    "engine=inline",
    "method=byz_vr_marina_pp",
    "task=logreg_libsvm",
    "task.max_samples=2000",
    "task.l2=0.01",
    "partition=replicated",
    "num_clients=20",
    "sampler=uniform",
    "sampler.cohort_size=4",
    "aggregator=cm",
    "aggregator.bucketing=2",
    "attack=shb",
    "attack.num_byzantine=5",
    "method.batch_size=32",
    "method.full_grad=epoch",
    "method.lr=0.5",
    "eval_every=20",
)


def relative_gaps(rows: list[dict]) -> np.ndarray:
    g = np.array([r["gap"] for r in rows])
    return g / g[0]


@pytest.mark.parametrize("seed", [0, 1])
def test_e1_clipping_converges_linearly_and_no_clipping_is_pulled_back(compose, seed):
    clipped = relative_gaps(
        run(compose(*E1, "method.clip_mult=1", "num_rounds=1200", f"seed={seed}"), None)
    )
    assert clipped[-1] <= 1e-6, clipped[-1]
    # linear: every third of the run gains at least a factor 10
    thirds = np.array_split(clipped[1:], 3)
    assert all(b.min() < 0.1 * a.min() for a, b in zip(thirds, thirds[1:], strict=False))
    plain = relative_gaps(
        run(compose(*E1, "method.clip_mult=null", "num_rounds=400", f"seed={seed}"), None)
    )
    assert plain[len(plain) // 4 :].min() > 0.1, plain


def test_the_optimum_is_the_honest_clients_and_moves_with_the_byzantine_set(compose):
    common = (
        "engine=inline",
        "task=logreg_synthetic",
        "num_clients=8",
        "sampler=full",
        "attack=alie",
    )
    a = task_of(compose(*common, "attack.ids=[0,1]"))
    b = task_of(compose(*common, "attack.ids=[5,6]"))
    x_a, _ = a.optimum()
    x_b, _ = b.optimum()
    assert np.linalg.norm(x_a - x_b) > 1e-2 * np.linalg.norm(x_a)
    for task, byz, x in ((a, {0, 1}, x_a), (b, {5, 6}, x_b)):
        honest = [m for m in range(8) if m not in byz]
        w = task.weights[honest] / task.weights[honest].sum()
        g = sum(wi * task.clients[m].grad(x) for wi, m in zip(w, honest, strict=True))
        g_all = sum(wi * c.grad(x) for wi, c in zip(task.weights, task.clients, strict=True))
        assert np.linalg.norm(g) < 1e-9
        assert np.linalg.norm(g_all) > 1e-4  # the Byzantine clients' data would move it
        assert task.full.loss(x) == pytest.approx(
            sum(wi * task.clients[m].loss(x) for wi, m in zip(w, honest, strict=True)), rel=1e-12
        )


@pytest.mark.parametrize(
    ("oracle", "method"),
    [("cohort", "byz_vr_marina_pp"), ("all", "byz_vr_marina_pp"), ("cohort", "robust_momentum")],
)
def test_an_omniscient_attack_sees_only_what_its_oracle_allows(
    compose, monkeypatch, oracle, method
):
    cfg = compose(
        "engine=inline",
        f"method={method}",
        "task=logreg_synthetic",
        "num_clients=10",
        "sampler=uniform",
        "sampler.cohort_size=4",
        "attack=alie",
        "attack.ids=[0,3,6]",
        f"attack.oracle={oracle}",
        "num_rounds=12",
        "method.p=0.2" if method == "byz_vr_marina_pp" else "method.momentum=0.5",
    )
    calls: dict[int, list[int]] = {}  # round -> partition ids that ran fit
    seen: list[tuple[int, int]] = []  # (honest vectors seen, honest clients allowed)
    make = client_factory(cfg)

    def spy(context):
        client = make(context)
        fit = client.fit

        def recorded(parameters, config):
            calls.setdefault(int(config["round"]), []).append(client.pid)
            return fit(parameters, config)

        client.fit = recorded
        return client

    strategy = server_fn(cfg, None, False, None).server.strategy
    cohorts: dict[int, set[int]] = {}
    draw = strategy.cohort

    def recorded_cohort(rnd):
        cohort = draw(rnd)
        cohorts[rnd] = set(cohort.ids.tolist())
        return cohort

    strategy.cohort = recorded_cohort
    forge = Attack.forge

    def watched(self, honest, in_cohort, size, target=None):
        cohort = strategy._cohort.ids.tolist()
        allowed = [p for p in cohort if p not in self.ids]
        if oracle == "all":
            allowed = [p for p in range(10) if p not in self.ids]
        seen.append((honest.shape[0], len(allowed)))
        return forge(self, honest, in_cohort, size, target)

    monkeypatch.setattr(Attack, "forge", watched)
    run_rounds(strategy, make_nodes(spy, 10, cfg["seed"]), cfg["num_rounds"])
    assert seen and all(k == allowed for k, allowed in seen)
    if oracle == "cohort":  # nobody outside the cohort was even asked
        assert all(set(pids) == cohorts[rnd] for rnd, pids in calls.items())


def test_label_flip_trains_the_byzantine_client_on_flipped_labels(compose):
    from flwr.common import Context, RecordDict

    from clients.fedavg import FedAvgClient
    from fedsim.tasks.logreg import BinaryLogistic

    common = ("engine=inline", "method=fedavg", "task=logreg_synthetic", "num_clients=6")
    cfg = compose(*common, "sampler=full", "attack=label_flip", "attack.ids=[2]")
    task = task_of(cfg)

    def context(pid: int) -> Context:
        return Context(0, pid, {"partition-id": pid}, RecordDict(), {})

    make = client_factory(cfg)
    x = np.full(task.dim, 0.1)
    sent = make(context(2)).fit([x], {"round": 1})[0][0]
    honest = task.clients[2]
    by_hand = BinaryLogistic(honest.a, -honest.y, honest.l2)  # y -> -y, written here
    twin = dataclasses.replace(task, clients=[*task.clients[:2], by_hand, *task.clients[3:]])
    expected = FedAvgClient.from_config(cfg["method"], twin, 2, cfg["seed"], context(2))
    np.testing.assert_allclose(sent, expected.fit([x], {"round": 1})[0][0], rtol=1e-12)
    clean = FedAvgClient.from_config(cfg["method"], task, 2, cfg["seed"], context(2))
    assert np.linalg.norm(sent - clean.fit([x], {"round": 1})[0][0]) > 1e-3
    # an honest client is left alone
    np.testing.assert_array_equal(
        make(context(3)).fit([x], {"round": 1})[0][0],
        FedAvgClient.from_config(cfg["method"], task, 3, cfg["seed"], context(3)).fit(
            [x], {"round": 1}
        )[0][0],
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("attack=alie", "attack.num_byzantine=10"), "fewer than half"),
        (("attack=shb", "aggregator=tm", "sampler.cohort_size=4"), "trim"),
        (
            ("attack=shb", "attack.num_byzantine=3", "aggregator=krum", "sampler.cohort_size=4"),
            "aggregator.f",
        ),
        (("method.clip_mult=0",), "clip_mult"),
        (("method.clip_mult=-1",), "clip_mult"),
        (("method.p=0",), "method.p"),
        (("method.p=1.5",), "method.p"),
        (("sampler=importance", "aggregator=cm"), "valid samplers"),
        (("task=quadratic", "attack=label_flip", "attack.num_byzantine=2"), "labels"),
        (("compressor=natural", "attack=bit_flip", "attack.num_byzantine=2"), "compressor"),
        (("compressor=top_k",), "unbiased"),
    ],
)
def test_impossible_byzantine_settings_are_refused_before_the_run(compose, overrides, message):
    base = (
        "engine=inline",
        "method=byz_vr_marina_pp",
        "num_clients=20",
        "sampler=uniform",
        "sampler.cohort_size=4",
    )
    with pytest.raises(ConfigError, match=message):
        compose(*base, *overrides)


def test_stateful_methods_refuse_the_all_seeing_oracle_and_others_refuse_attacks(compose):
    with pytest.raises(ConfigError, match="oracle=cohort"):
        compose("engine=inline", "method=robust_momentum", "attack=ipm", "attack.oracle=all")
    with pytest.raises(ConfigError, match="does not use attack"):
        compose("engine=inline", "method=scaffnew", "sampler=full", "attack=ipm")
    with pytest.raises(ConfigError, match="does not use aggregator"):
        compose("engine=inline", "method=tamuna", "aggregator=cm")
    from hydra.errors import HydraException

    with pytest.raises(HydraException, match="attack"):
        compose("engine=inline", "attack=nonexistent")


def test_a_cohort_of_byzantine_clients_only_is_allowed(compose):
    """Every round may be Byzantine-majority: that is the case clipping exists for."""
    cfg = compose(
        "engine=inline",
        "method=byz_vr_marina_pp",
        "task=logreg_synthetic",
        "num_clients=10",
        "sampler=uniform",
        "sampler.cohort_size=1",
        "attack=shb",
        "attack.num_byzantine=4",
        "num_rounds=30",
    )
    rows = run(cfg, None)
    assert np.isfinite(rows[-1]["loss"])


def test_a_round_with_too_few_replies_for_krum_is_a_failed_round_not_a_crash(compose):
    """Krum with f = 1 needs n − f − 2 ≥ 1, i.e. 4 inputs: a cohort of 4 that loses a client
    cannot aggregate, so the round keeps the model and counts as failed (the run goes on)."""
    cfg = compose(
        "engine=inline",
        "method=robust_momentum",
        "task=logreg_synthetic",
        "num_clients=4",
        "sampler=full",
        "aggregator=krum",
        "aggregator.f=1",
        "attack=bit_flip",
        "attack.ids=[3]",
        "num_rounds=4",
        "max_failed_rounds=10",
        "method.client=tests.flaky_clients.CrashingRobustMomentum",
    )
    rows = run(cfg, None)
    assert all(r["failures"] == 1 for r in rows[1:])
    assert rows[-1]["loss"] == rows[0]["loss"]


def test_one_bucket_for_the_whole_cohort_is_refused(compose):
    with pytest.raises(ConfigError, match="one bucket"):
        compose(
            "engine=inline",
            "method=byz_vr_marina_pp",
            "sampler.cohort_size=4",
            "aggregator=cm",
            "aggregator.bucketing=4",
            "attack=shb",
            "attack.num_byzantine=5",
        )


def test_centered_clipping_keeps_one_centre_per_kind_of_vector(compose):
    """Gradients (full rounds) and gradient differences never share cc's centre: a shared
    centre would answer a difference round with about the last gradient (cc moves at most
    iters·τ from its centre), doubling the estimate g."""
    cfg = compose(
        "engine=inline",
        "method=byz_vr_marina_pp",
        "task=logreg_synthetic",
        "num_clients=6",
        "sampler=uniform",
        "sampler.cohort_size=4",
        "aggregator=cc",
        "attack=alie",
        "attack.num_byzantine=1",
    )
    strategy = server_fn(cfg, None, False, None).server.strategy
    big = np.full((4, strategy.task.dim), 100.0)
    small = np.random.default_rng(0).normal(0, 1e-3, (4, strategy.task.dim))
    first = strategy.robust_aggregate(1, big, kind="gradient")  # from centre 0: moves ≤ 3τ
    np.testing.assert_allclose(first, strategy.robust_aggregate(1, big, kind="probe"))
    out = strategy.robust_aggregate(2, small, clip=1.0, kind="difference")
    np.testing.assert_allclose(out, small.mean(axis=0), rtol=1e-9, atol=1e-12)
    # and each kind continues from its own centre
    again = strategy.robust_aggregate(3, big, kind="gradient")
    assert np.linalg.norm(again) > np.linalg.norm(strategy.robust_aggregate(3, big, kind="fresh"))
