"""Scaffnew, TAMUNA, 5GCS and 5GCS-CC: exact convergence, invariants, special cases, traffic."""

import numpy as np
import pytest

from fedsim.app import server_fn
from fedsim.blocks.patterns import support
from fedsim.build import client_factory, task_of
from fedsim.engines.inline import make_nodes, run_rounds
from fedsim.runner import run
from fedsim.wire import encoded_size, from_record

# Strongly convex, heterogeneous logistic regression (Synthetic(1,1), kappa ~ 250), 20 clients.
LOGREG = (
    "engine=inline",
    "task=logreg_synthetic",
    "num_clients=20",
    "task.l2=0.001",
)
COHORT = ("sampler=uniform", "sampler.cohort_size=5")


def rel_dist(rows: list[dict]) -> np.ndarray:
    return np.array([r["dist_sq"] for r in rows]) / rows[0]["dist_sq"]


def first_round_below(rows: list[dict], level: float) -> int | None:
    below = [r["round"] for r in rows if r["dist_sq"] <= level * rows[0]["dist_sq"]]
    return below[0] if below else None


@pytest.mark.parametrize(
    ("method", "rounds"),
    [
        (("method=tamuna",), 1500),  # s = 2 < c = 5
        (("method=fivegcs",), 400),
        (("method=fivegcs_cc", "compressor=qsgd"), 600),
        (("method=fivegcs_cc", "compressor=rand_k", "compressor.ratio=0.25"), 900),
    ],
    ids=["tamuna", "fivegcs", "fivegcs_cc-qsgd", "fivegcs_cc-rand_k"],
)
def test_reaches_the_exact_optimum_with_partial_participation(compose, method, rounds):
    cfg = compose(*LOGREG, *COHORT, *method, f"num_rounds={rounds}", "eval_every=10")
    rows = run(cfg, None)
    rel = rel_dist(rows)
    assert rel[-1] <= 1e-10, f"dist_sq/dist_sq(x0) = {rel[-1]:.2e}"
    # linear convergence: each tenth of the run gains a fixed factor (no plateau on the way)
    tenth = len(rel) // 10
    assert np.all(rel[tenth::tenth] / rel[:-tenth:tenth][: len(rel[tenth::tenth])] < 0.5)


def test_fedavg_with_the_same_local_work_stalls(compose):
    tamuna = compose(*LOGREG, *COHORT, "method=tamuna")
    steps = round(1 / tamuna["method"]["p"])  # TAMUNA's expected local steps per round
    cfg = compose(
        *LOGREG,
        *COHORT,
        "method=fedavg",
        f"method.local_steps={steps}",
        "num_rounds=1500",
        "eval_every=10",
    )
    rel = rel_dist(run(cfg, None))
    assert rel[-1] > 1e-3  # seven orders of magnitude above the local-training methods
    late = rel[len(rel) // 2 :]
    assert late.min() > 0.3 * late.max()  # the second half of the run no longer improves


def state_of(proxy, key: str) -> list[np.ndarray] | None:
    record = proxy.context.state.get(key)
    return None if record is None else from_record(record)


def effective_control_variates(strategy, nodes, method) -> np.ndarray:
    """h_i with each client's pending update (TAMUNA applies it at the next participation)."""
    m = strategy.task.num_clients
    gamma, eta = method["client_lr"], method["eta"]
    h = np.zeros((m, strategy.task.dim))
    for proxy in nodes.all().values():
        pid = int(proxy.context.node_config["partition-id"])
        if state_of(proxy, "h") is not None:
            h[pid] = state_of(proxy, "h")[0]
        r, values = strategy._pending.get(pid, (0, None))
        if r > (state_of(proxy, "applied") or [[0]])[0][0]:
            rows, sent, sent_round = state_of(proxy, "sent")
            assert sent_round[0] == r
            h[pid, rows] += (eta / gamma) * (values - sent)
    return h


def drive(cfg, after_round=None):
    """Run ``cfg`` inline, calling ``after_round(rnd, strategy, nodes)`` after every round."""
    strategy = server_fn(cfg, None, False, None).server.strategy
    nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
    hook = None if after_round is None else (lambda rnd: after_round(rnd, strategy, nodes))
    run_rounds(strategy, nodes, cfg["num_rounds"], hook)
    return strategy.recorder.rows


def test_tamuna_control_variates_sum_to_zero_after_every_round(compose):
    cfg = compose(*LOGREG, *COHORT, "method=tamuna", "method.s=3", "num_rounds=40")
    sums = []

    def check(rnd, strategy, nodes):
        h = effective_control_variates(strategy, nodes, cfg["method"])
        scale = max(1.0, float(np.abs(h).max()))
        sums.append(float(np.abs(h.sum(axis=0)).max()) / scale)
        assert rnd < 5 or np.abs(h).max() > 0  # the control variates do move

    drive(cfg, check)
    assert len(sums) == 40
    assert max(sums) < 1e-12


def test_tamuna_with_everyone_and_no_compression_is_scaffnew(compose):
    common = (*LOGREG, "sampler=full", "num_rounds=30", "method.p=0.3", "method.client_lr=2.0")
    scaffnew = run(compose(*common, "method=scaffnew"), None)
    tamuna = run(compose(*common, "method=tamuna", "method.s=20", "method.eta=0.3"), None)
    for column in ("loss", "dist_sq", "grad_evals"):
        a = np.array([r[column] for r in scaffnew], dtype=float)
        b = np.array([r[column] for r in tamuna], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=0, err_msg=column)
    assert rel_dist(scaffnew)[-1] < 0.5  # a run that moves (the iterates are not trivial)


def test_scaffnew_with_p_one_is_gradient_descent(compose):
    cfg = compose(*LOGREG, "sampler=full", "method=scaffnew", "method.p=1", "num_rounds=50")
    rows = run(cfg, None)
    task = task_of(cfg)
    x, gamma = task.x0.copy(), cfg["method"]["client_lr"]
    x_star, _ = task.optimum()
    for _ in range(50):
        x = x - gamma * task.full.grad(x)
    assert rows[-1]["dist_sq"] == pytest.approx(float(np.sum((x - x_star) ** 2)), rel=1e-9)


def test_scaffnew_converges_linearly_and_keeps_sum_h_zero(compose):
    cfg = compose(*LOGREG, "sampler=full", "method=scaffnew", "num_rounds=300", "eval_every=10")
    sums = []

    def check(rnd, strategy, nodes):
        gamma, p = cfg["method"]["client_lr"], cfg["method"]["p"]
        total = np.zeros(strategy.task.dim)
        for proxy in nodes.all().values():
            pid = int(proxy.context.node_config["partition-id"])
            total += state_of(proxy, "h")[0]
            r = strategy._used.get(pid, 0)
            if r > state_of(proxy, "applied")[0][0]:  # the pending update
                sent, _ = state_of(proxy, "sent")
                total += (p / gamma) * (strategy._averages[r] - sent)
        sums.append(float(np.abs(total).max()))

    rows = drive(cfg, check)
    assert max(sums) < 1e-10
    rel = rel_dist(rows)
    assert rel[-1] <= 1e-10
    assert np.all(rel[5::5] / rel[:-5:5] < 0.5)  # every 50 rounds at least halve the distance


def test_tamuna_compression_saves_uplink_floats_at_equal_c_and_p(compose):
    used = {}
    for s in (2, 5):
        cfg = compose(
            *LOGREG,
            *COHORT,
            "method=tamuna",
            f"method.s={s}",
            "method.p=0.3",
            "num_rounds=1200",
            "eval_every=5",
        )
        rows = run(cfg, None)
        hit = first_round_below(rows, 1e-8)
        assert hit is not None
        used[s] = sum(r["up_floats"] for r in rows if r["round"] <= hit)
    assert used[2] < 0.8 * used[5], used


def test_tamuna_uploads_about_s_d_over_c_floats_per_client(compose):
    cfg = compose(*LOGREG, *COHORT, "task.dim=400", "method=tamuna", "method.s=2", "num_rounds=4")
    rows = run(cfg, None)
    d, c, s = task_of(cfg).dim, 5, 2
    loads = [len(support(d, c, s, j)) for j in range(c)]
    assert min(loads) >= s * d // c and max(loads) <= -(-s * d // c)  # ⌊sd/c⌋ .. ⌈sd/c⌉
    header = encoded_size(np.zeros(7)) - 8 * 7  # Flower's per-array np.save header
    for r in rows[1:]:
        assert r["up_floats"] == s * d  # every coordinate from s clients, nothing else
        # The bytes on the wire: s·d float64 values and one header per client, no indices.
        assert r["up_bits"] == 8 * (8 * s * d + c * header)
        assert r["up_bits"] < 0.5 * 8 * c * encoded_size(np.zeros(d))  # vs d floats each


@pytest.mark.parametrize(
    ("compressor", "floats_per_client", "bytes_per_client"),
    [
        (("compressor=identity",), 20, 8 * 20),
        (("compressor=rand_k", "compressor.k=4"), 4, 8 * 4),  # values; indices from the seed
        (("compressor=qsgd",), 1, 8 + 20),  # the norm; 20 int8 levels are not reals
        (("compressor=natural",), 20, 2 * 20),  # one int16 code per coordinate
    ],
)
def test_fivegcs_cc_counts_what_its_compressor_sends(
    compose, compressor, floats_per_client, bytes_per_client
):
    cfg = compose(*LOGREG, *COHORT, "method=fivegcs_cc", *compressor, "num_rounds=3")
    header = encoded_size(np.zeros(7)) - 8 * 7
    arrays = 2 if compressor[0] == "compressor=qsgd" else 1
    for r in run(cfg, None)[1:]:
        assert r["up_floats"] == 5 * floats_per_client
        assert r["up_bits"] == 8 * 5 * (bytes_per_client + arrays * header)


def test_importance_sampling_needs_fewer_rounds_on_spread_smoothness(compose):
    common = (
        "engine=inline",
        "task=quadratic",
        "num_clients=20",
        "task.L_min=1",
        "task.L_max=1000",
        "method=fivegcs",
        "sampler.cohort_size=5",
        "num_rounds=400",
    )
    uniform = run(compose(*common, "sampler=uniform"), None)
    importance = run(compose(*common, "sampler=importance", "sampler.by=sqrt_smoothness"), None)
    hit_u, hit_i = first_round_below(uniform, 1e-6), first_round_below(importance, 1e-6)
    assert hit_u is not None and hit_i is not None
    assert hit_i < 0.8 * hit_u, (hit_i, hit_u)


@pytest.mark.parametrize(
    ("method", "rounds"),
    [
        (("method=scaffnew", "sampler=full"), 300),
        (("method=tamuna", *COHORT), 1500),
        (("method=fivegcs", *COHORT), 400),
        (("method=fivegcs_cc", *COHORT, "compressor=qsgd"), 500),
    ],
    ids=["scaffnew", "tamuna", "fivegcs", "fivegcs_cc"],
)
def test_lost_messages_and_replies_do_not_move_the_optimum(compose, method, rounds):
    """A client whose message is lost before it runs, and one whose reply is lost after it saved
    its state, are counted failures; control variates and duals stay consistent with the server,
    so the run still converges to the exact x*."""
    flaky = {
        "method=scaffnew": "FlakyScaffnew",
        "method=tamuna": "FlakyTamuna",
        "method=fivegcs": "FlakyFiveGCS",
        "method=fivegcs_cc": "FlakyFiveGCSCC",
    }[method[0]]
    cfg = compose(
        *LOGREG,
        *method,
        f"method.client=tests.flaky_clients.{flaky}",
        f"num_rounds={rounds}",
        "eval_every=10",
    )
    checks = []

    def check(rnd, strategy, nodes):
        if method[0] == "method=tamuna":
            h = effective_control_variates(strategy, nodes, cfg["method"])
            checks.append(float(np.abs(h.sum(axis=0)).max()))
        elif method[0].startswith("method=fivegcs"):  # v = (1/M) Σ u_m with accepted increments
            u = np.zeros(strategy.task.dim)
            for proxy in nodes.all().values():
                pid = int(proxy.context.node_config["partition-id"])
                if state_of(proxy, "u") is not None:
                    u += state_of(proxy, "u")[0]
                    change, r = state_of(proxy, "candidate")
                    if strategy._applied.get(pid) == r[0]:
                        u += change
            checks.append(float(np.abs(strategy.v - u / strategy.task.num_clients).max()))

    rows = drive(cfg, check)
    assert sum(r["failures"] for r in rows) == 2
    assert max(checks, default=0.0) < 1e-12
    assert rel_dist(rows)[-1] <= 1e-10


def test_a_payload_of_the_wrong_dtype_is_a_counted_failure(compose):
    cfg = compose(
        *LOGREG,
        "sampler=full",
        "method=fivegcs_cc",
        "compressor=qsgd",
        "method.client=tests.flaky_clients.FloatLevels",
        "num_rounds=4",
    )
    rows = run(cfg, None)
    assert [r["failures"] for r in rows] == [0, 0, 1, 0, 0]
    assert rows[-1]["dist_sq"] < rows[0]["dist_sq"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("method=scaffnew",), "sampler=full"),
        (("method=tamuna", "method.s=6"), "exceeds the cohort size"),
        (("method=tamuna", "method.s=1"), "method.s must be an integer >= 2"),
        (("method=tamuna", "method.p=1.5"), "method.p must lie in (0, 1]"),
        (("method=tamuna", "method.p=0.5", "method.eta=0.5"), "eta=0.5 lies outside"),
        (("method=tamuna", "sampler=importance"), "fixed size"),
        (("method=fivegcs_cc", "compressor=top_k"), "needs an unbiased compressor"),
        (("method=fivegcs", "compressor=rand_k"), "does not use compressor"),
        (("method=fivegcs", "method.local_steps=0"), "method.local_steps"),
        (("method=tamuna", "method.p=0.5", "method.eta=0.2"), "outside [p/2, p·χ]"),
        (("method=fivegcs_cc", "compressor=qsgd", "method.dual_shift=2"), "dual_shift=2.0"),
        (("method=fivegcs", "task.l2=0"), "set method primal_lr and dual_lr"),
        (("method=tamuna", "task.l2=0"), "set method s and p explicitly"),
        (
            (
                "method=fivegcs",
                "sampler=importance",
                "sampler.cohort_size=5",
                "sampler.probabilities=[0,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]",
            ),
            "positive probability",
        ),
    ],
)
def test_impossible_settings_are_refused_before_the_run(compose, overrides, message):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match=None) as err:
        compose(*LOGREG, *COHORT, *overrides)
    assert message in str(err.value)


def test_explicit_stepsizes_need_no_strong_convexity(compose):
    cfg = compose(
        *LOGREG,
        *COHORT,
        "method=fivegcs",
        "task.l2=0",
        "method.primal_lr=5",
        "method.dual_lr=0.1",
    )
    assert cfg["method"]["primal_lr"] == 5.0 and cfg["method"]["mu"] == 0.0
