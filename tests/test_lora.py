"""The RAC-LoRA family (strategies/lora.py, clients/lora.py; arXiv 2410.08305, Alg. 1–2).

1. Rule level: a few rounds of each method against a numpy loop written here from the
   pseudo-code (explicit B, A, merges, weighted averages, coins), to rel 1e-10. The loop shares
   no code with fedsim but the key convention of the shared randomness (``fedsim.rng.generator``
   with the documented purposes) and, on the MLP, the task's own gradient as the oracle; on
   ``linear_torch`` it computes the least-squares gradient itself.
2. Convergence: on ``linear_torch`` (convex) Fed-RAC-LoRA drives ‖∇f‖² below 1e-10 while Fed-LoRA
   and Fed-AsymmLoRA of the same rank stall above 1e-4.
3. Bad inputs are refused before any engine starts.
4. Parity: inline and ray give the same metrics.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.app import server_fn
from fedsim.build import client_factory, task_of
from fedsim.engines.inline import make_nodes, run_rounds
from fedsim.errors import ConfigError
from fedsim.rng import generator
from fedsim.runner import run

LINEAR = ("engine=inline", "task=linear_torch", "partition=dirichlet", "num_clients=3")
LINEAR += ("sampler=full", "seed=4")


# --------------------------------------------------------------------------- the hand loop


def weight(x, lay):
    name, out, inn, wo, _ = lay
    return x[wo : wo + out * inn].reshape(out, inn)


def bias(x, lay):
    name, out, inn, _, bo = lay
    return x[bo : bo + out]


def draw(seed, link, lay, which, r, init):
    name, out, inn, _, _ = lay
    shape = (r, inn) if which == "A" else (out, r)
    rng = generator(seed, link, f"lora/factor/{name}")
    if init == "gaussian":
        return rng.standard_normal(shape)
    return rng.uniform(-1 / np.sqrt(shape[1]), 1 / np.sqrt(shape[1]), shape)


def spectral(m):
    return np.linalg.svd(m, compute_uv=False)[0]


def hand_loop(kind, p, grads, w, big_l, x0, layers, seed, rounds):
    """The models x^1..x^rounds of ``kind`` (fpft, lora, asymm, cola, rac) by the pseudo-code."""
    if kind == "fpft":
        x, out = x0.copy(), []
        lr = p.get("client_lr", 1 / big_l)
        for _ in range(rounds):
            ys = []
            for grad in grads:
                y = x.copy()
                for _ in range(p["local_steps"]):
                    y = y - lr * grad(y)
                ys.append(y)
            x = sum(wm * y for wm, y in zip(w, ys, strict=True))
            out.append(x)
        return out
    r, s = p["rank"], p["alpha"] / p["rank"]

    def merged(base, a, b):
        x = base.copy()
        for lay in layers:
            weight(x, lay)[...] += s * b[lay[0]] @ a[lay[0]]
        return x

    def new_link(t):
        if kind in ("lora", "cola"):
            side = "both"
        elif p["side"] == "coin":
            side = "left" if generator(seed, t, "lora/coin").random() < 0.5 else "right"
        else:
            side = p["side"]
        a, b = {}, {}
        for lay in layers:
            name, out, inn = lay[:3]
            if side == "left":
                a[name], b[name] = np.zeros((r, inn)), draw(seed, t, lay, "B", r, p["init"])
            else:
                a[name], b[name] = draw(seed, t, lay, "A", r, p["init"]), np.zeros((out, r))
        return side, a, b

    base = x0.copy()
    link = 0
    side, a, b = new_link(0)
    sides, xs = [], []
    for rnd in range(1, rounds + 1):
        sides.append(side)
        trains_a, trains_b = side in ("left", "both"), side in ("right", "both")
        results = []
        for grad in grads:
            am = {k: v.copy() for k, v in a.items()}
            bm = {k: v.copy() for k, v in b.items()}
            xb = base.copy()
            eta = {}
            for k in range(p["local_steps"]):
                g = grad(merged(xb, am, bm))
                new_a, new_b = {}, {}
                for lay in layers:
                    name = lay[0]
                    big_g = weight(g, lay)
                    if k == 0:
                        if "client_lr" in p:
                            eta[name] = p["client_lr"]
                        elif side == "left":
                            eta[name] = 1 / (big_l * s**2 * spectral(bm[name]) ** 2)
                        elif side == "right":
                            eta[name] = 1 / (big_l * s**2 * spectral(am[name]) ** 2)
                        else:
                            curv = spectral(am[name]) ** 2 + spectral(bm[name]) ** 2
                            eta[name] = 1 / (big_l * s**2 * curv + s * spectral(big_g))
                    new_a[name] = am[name] - eta[name] * s * bm[name].T @ big_g
                    new_b[name] = bm[name] - eta[name] * s * big_g @ am[name].T
                if trains_a:
                    am = new_a
                if trains_b:
                    bm = new_b
                if p["train_bias"]:
                    for lay in layers:
                        bias(xb, lay)[...] -= p.get("client_lr", 1 / big_l) * bias(g, lay)
            results.append((am, bm, xb))
        for lay in layers:
            name = lay[0]
            if trains_a:
                a[name] = sum(wm * res[0][name] for wm, res in zip(w, results, strict=True))
            if trains_b:
                b[name] = sum(wm * res[1][name] for wm, res in zip(w, results, strict=True))
            if p["train_bias"]:
                bias(base, lay)[...] = sum(
                    wm * bias(res[2], lay) for wm, res in zip(w, results, strict=True)
                )
        if kind in ("cola", "rac") and rnd % p["link_rounds"] == 0:
            base = merged(base, a, b)  # W^{t+1} = W^t + s B A
            link += 1
            side, a, b = new_link(link)
        xs.append(merged(base, a, b))
    return xs, sides


def least_squares_grads(task, l2):
    """∇f_m of f_m(W, b) = (1/n) Σ ½‖W a + b − e_y‖² + (λ/2)(‖W‖² + ‖b‖²), and max_m L_m."""
    grads, big_l = [], 0.0
    for c in task.clients:
        a, y = c.a.cpu().numpy(), c.y.cpu().numpy()
        t = np.eye(5)[y]
        n = a.shape[0]

        def grad(x, a=a, t=t, n=n):
            wt, bt = x[:320].reshape(5, 64), x[320:325]
            res = a @ wt.T + bt - t
            return np.concatenate([(res.T @ a / n + l2 * wt).ravel(), res.mean(0) + l2 * bt])

        grads.append(grad)
        aug = np.hstack([a, np.ones((n, 1))])
        big_l = max(big_l, np.linalg.eigvalsh(aug.T @ aug / n)[-1] + l2)
    return grads, big_l


def drive(cfg, rounds):
    """The strategy's model after each of ``rounds`` inline rounds, and the strategy."""
    strategy = server_fn(cfg, None, False, None).server.strategy
    nodes = make_nodes(client_factory(cfg), cfg["num_clients"], cfg["seed"])
    xs, sides = [], []

    def after(rnd):
        xs.append(strategy.x.copy())

    def config_side(rnd, cohort, _orig=strategy.fit_config):
        out = _orig(rnd, cohort)
        sides.append(next(iter(out.values()))[1].get("side"))
        return out

    strategy.fit_config = config_side
    run_rounds(strategy, nodes, rounds, after)
    return xs, sides, strategy


def overrides(name, p):
    return [f"method={name}", *(f"method.{k}={str(v).lower()}" for k, v in p.items())]


CASES = {
    "fpft": ("fed_fpft", {"local_steps": 2}),
    "lora": ("fed_lora", {"rank": 2, "alpha": 3.0, "init": "peft", "local_steps": 2}),
    "lora_lr": ("fed_lora", {"rank": 2, "alpha": 1.0, "init": "gaussian", "client_lr": 0.003}),
    "asymm": ("fed_asymm_lora", {"rank": 2, "alpha": 3.0, "side": "right", "local_steps": 2}),
    "asymm_left": ("fed_asymm_lora", {"rank": 1, "alpha": 2.0, "side": "left", "init": "peft"}),
    "cola": ("fed_cola", {"rank": 2, "alpha": 3.0, "link_rounds": 2, "local_steps": 2}),
    "rac": ("fed_rac_lora", {"rank": 2, "alpha": 3.0, "link_rounds": 1, "local_steps": 2}),
    "rac_links": (
        "fed_rac_lora",
        {"rank": 2, "alpha": 3.0, "link_rounds": 2, "init": "peft", "client_lr": 0.05},
    ),
}
DEFAULTS = {"init": "gaussian", "local_steps": 1, "train_bias": True, "side": "coin"}


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_matches_a_numpy_loop_of_its_pseudo_code(compose, case):
    name, p = CASES[case]
    kind = case.split("_")[0]
    if kind != "fpft":
        p = {**DEFAULTS, **p}
    if kind in ("lora", "cola"):
        p.pop("side")
    cfg = compose(*LINEAR, *overrides(name, p), "num_rounds=3")
    task = task_of(cfg)
    assert len(set(task.weights.round(12))) > 1  # unequal client weights
    grads, big_l = least_squares_grads(task, cfg["task"]["l2"])
    layers = [tuple(layer) for layer in task.full.layers]
    expect = hand_loop(kind, p, grads, task.weights, big_l, task.x0, layers, 4, 3)
    sides = None
    if kind != "fpft":
        expect, sides = expect
    got, got_sides, _ = drive(cfg, 3)
    for rnd, (x, y) in enumerate(zip(got, expect, strict=True), 1):
        rel = np.linalg.norm(x - y) / np.linalg.norm(y)
        assert rel < 1e-10, (case, rnd, rel)
        assert np.linalg.norm(x - task.x0) > 1e-6  # the model moved
    if kind == "rac" and p["link_rounds"] == 1:
        assert sides == got_sides and set(sides) == {"left", "right"}  # the coin showed both


def test_rac_lora_trains_only_the_chosen_layers_of_an_mlp(compose):
    """A two-layer MLP with method.layers=[2]: the loop (task gradients as the oracle) agrees,
    layer 0 never moves, the uplink is the trained factor of layer 2 (+ its bias), and the
    random factor never crosses the wire."""
    p = {"rank": 2, "alpha": 2.0, "link_rounds": 1, "local_steps": 2, "side": "coin"}
    p |= {"init": "gaussian", "train_bias": True}
    cfg = compose(
        "engine=inline", "task=mlp_digits", "task.hidden=8", "partition=iid", "num_clients=2",
        "sampler=full", "seed=1", *overrides("fed_rac_lora", p), "method.layers=[2]",
        "num_rounds=3",
    )  # fmt: skip
    task = task_of(cfg)
    layers = [tuple(la) for la in task.full.layers]
    big_l = float(cfg["task"]["L"])
    grads = [c.grad for c in task.clients]
    expect, sides = hand_loop("rac", p, grads, task.weights, big_l, task.x0, layers[1:], 1, 3)
    got, _, strategy = drive(cfg, 3)
    for x, y in zip(got, expect, strict=True):
        assert np.linalg.norm(x - y) / np.linalg.norm(y) < 1e-10
        np.testing.assert_array_equal(weight(x, layers[0]), weight(task.x0, layers[0]))
        np.testing.assert_array_equal(bias(x, layers[0]), bias(task.x0, layers[0]))
    rows = strategy.recorder.rows
    per_side = {"left": 2 * 8, "right": 10 * 2}  # r·in or out·r of layer "2" (8 → 10)
    ups = [per_side[sd] * 2 + 10 * 2 for sd in sides]  # two clients, + the bias (10 each)
    assert [r["up_floats"] for r in rows[1:]] == ups
    downs = [(task.dim + per_side[sd]) * 2 for sd in sides]  # base + the trained factor only
    assert [r["down_floats"] for r in rows[1:]] == downs


# --------------------------------------------------------------------------- uplink counts


@pytest.mark.parametrize(
    ("name", "extra", "per_client"),
    [
        ("fed_fpft", (), 325),
        ("fed_lora", ("method.rank=2",), 2 * (64 + 5)),
        ("fed_cola", ("method.rank=2", "method.train_bias=true"), 2 * (64 + 5) + 5),
        ("fed_asymm_lora", ("method.rank=2", "method.side=right"), 5 * 2),
        ("fed_asymm_lora", ("method.rank=2", "method.side=left"), 2 * 64),
    ],
)
def test_uplink_floats_are_the_trained_factors(compose, name, extra, per_client):
    cfg = compose(*LINEAR, f"method={name}", *extra, "num_rounds=2")
    rows = run(cfg, None)
    assert [r["up_floats"] for r in rows[1:]] == [3 * per_client] * 2
    assert all(r["up_bits"] > 64 * r["up_floats"] for r in rows[1:])


# --------------------------------------------------------------------------- convergence

CONVEX = (
    "engine=inline", "task=linear_torch", "task.l2=1.0", "partition=iid", "num_clients=2",
    "sampler=full", "seed=0", "num_rounds=800", "eval_every=100", "method.rank=2",
    "method.local_steps=1", "method.train_bias=true",
)  # fmt: skip


def test_rac_lora_reaches_the_optimum_where_lora_and_asymmetric_lora_stall(compose):
    """linear_torch: ridge least squares of nn.Linear(64, 5), strongly convex, x* in closed form;
    task.l2 = 1 makes κ = L/μ ≈ 11 so that 800 rounds suffice. Rank 2 < min(64, 5) = 5. One local
    step per round and auto stepsizes (strategies/lora.py: 1/(L s²‖frozen‖₂²), biases 1/L): each
    RAC-LoRA round is then the analysed step W⁺ = W − (1/L)(B Bᵀ/‖B‖₂²)∇f on a fresh random
    subspace (link_rounds=1, coin sides), with no client drift. Fed-LoRA's and Fed-AsymmLoRA's
    update W − W⁰ = sBA stays of rank ≤ 2, and W* − W⁰ has rank 5."""
    final = {}
    for name in ("fed_rac_lora", "fed_lora", "fed_asymm_lora"):
        extra = ("method.link_rounds=1",) if name == "fed_rac_lora" else ()
        rows = run(compose(*CONVEX, f"method={name}", *extra), None)
        final[name] = rows[-1]["grad_norm_sq"]
        assert rows[-1]["round"] == 800
    assert final["fed_rac_lora"] < 1e-10, final
    assert final["fed_lora"] > 1e-4 and final["fed_asymm_lora"] > 1e-4, final


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("method=fed_rac_lora", "method.rank=5"), "method.rank=5 must be < min(in, out) = 5"),
        (("method=fed_lora", "method.rank=0"), "method.rank must be an integer >= 1, got 0"),
        (("method=fed_cola", "method.link_rounds=0"), "method.link_rounds must be an integer >="),
        (("method=fed_rac_lora", "method.link_rounds=0"), "method.link_rounds must be an integer"),
        (("method=fed_rac_lora", "method.layers=[1]"), "unknown layer name in method.layers '1'"),
        (("method=fed_asymm_lora", "method.layers=[]"), "method.layers must be 'all' or a non-e"),
        (("method=fed_rac_lora", "method.side=up"), "method.side 'up'; valid choices: coin, left"),
        (("method=fed_lora", "method.init=xavier"), "method.init 'xavier'; valid choices: gau"),
        (("method=fed_cola", "method.alpha=0"), "method.alpha must be a finite number > 0"),
        (("method=fed_rac_lora", "method.client_lr=-1"), "method.client_lr must be a positive"),
        (("method=fed_rac_lora", "method.train_bias=2"), "method.train_bias must be true or false"),
        (("method=fed_rac_lora", "method.local_steps=0"), "method.local_steps must be an integer"),
    ],
)
def test_bad_inputs_are_refused(compose, args, message):
    with pytest.raises(ConfigError) as err:
        compose(*LINEAR, *args)
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["fed_lora", "fed_asymm_lora", "fed_cola", "fed_rac_lora"])
def test_a_task_without_torch_layers_is_refused_naming_the_tasks_that_work(compose, name):
    """What `python -m fedsim method=<name>` answers on the embedded defaults (logreg_synthetic)."""
    with pytest.raises(ConfigError) as err:
        compose("engine=inline", f"method={name}")
    assert str(err.value) == (
        f"method {name!r} adapts nn.Linear layers, and task 'logreg_synthetic' has none; "
        "valid tasks: finetune_digits, hf_vision, linear_torch, mlp_digits, mlp_large"
    )


def test_fpft_runs_on_any_task(compose):
    rows = run(compose("engine=inline", "method=fed_fpft", "num_rounds=2"), None)
    assert rows[-1]["loss"] < rows[0]["loss"]


# --------------------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def one_ray():
    from fedsim.engines.ray import shared_ray

    with shared_ray():
        yield


@pytest.mark.xdist_group("ray-engines")  # with tests/test_engines.py: one Ray at a time
def test_rac_lora_is_the_same_on_inline_and_ray(compose, tmp_path, one_ray):
    common = (
        "task=linear_torch", "partition=iid", "num_clients=2", "sampler=full", "seed=3",
        "num_rounds=3", "method=fed_rac_lora", "method.rank=2", "method.link_rounds=2",
        "method.train_bias=true",
    )  # fmt: skip
    inline = run(compose(*common, "engine=inline"), tmp_path / "inline")
    ray = run(compose(*common, "engine=ray", "engine.round_timeout=120"), tmp_path / "ray")
    assert len(inline) == len(ray) == 4
    columns = ("loss", "grad_norm_sq", "dist_sq", "up_bits", "up_floats", "down_bits")
    for column in (*columns, "grad_evals"):
        a = np.array([r[column] for r in inline], dtype=float)
        b = np.array([r[column] for r in ray], dtype=float)
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=0, err_msg=column)
    assert inline[-1]["loss"] < inline[0]["loss"]
