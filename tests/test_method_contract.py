"""One contract over every method config (conf/method/*.yaml): it composes, runs a few inline
rounds to a finite, lower loss, and refuses the block groups it does not use."""

from pathlib import Path

import numpy as np
import pytest

from fedsim.errors import ConfigError
from fedsim.runner import run

METHODS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml")
)
# the sampler each method needs (a method whose yaml lands without an entry fails the first test)
SAMPLER = {
    "fedavg": ("sampler=uniform", "sampler.cohort_size=3"),
    "scaffnew": ("sampler=full",),
    "tamuna": ("sampler=uniform", "sampler.cohort_size=4"),
    "fivegcs": ("sampler=uniform", "sampler.cohort_size=3"),
    "fivegcs_cc": ("sampler=uniform", "sampler.cohort_size=3"),
    "clip_local_gdj": ("sampler=full",),
    "clerr": ("sampler=full",),
    "clipped_rr_cli": ("sampler=cyclic", "sampler.cohort_size=3"),
    "ce_fedavg": ("sampler=uniform", "sampler.cohort_size=3"),
    "celgc": ("sampler=uniform", "sampler.cohort_size=3"),
    "l0l1_gd": ("sampler=full",),
    "byz_vr_marina_pp": ("sampler=uniform", "sampler.cohort_size=3", "method.batch_size=30"),
    "robust_momentum": ("sampler=uniform", "sampler.cohort_size=3", "method.batch_size=30"),
    "rgd": ("sampler=full",),
    "rsgd": ("sampler=uniform", "sampler.cohort_size=3"),
    "rsvrg": ("sampler=uniform", "sampler.cohort_size=3"),
    "rlsvrg": ("sampler=uniform", "sampler.cohort_size=3"),
    "rpage": ("sampler=uniform", "sampler.cohort_size=3"),
    "rmarina": ("sampler=full",),
    "fed_fpft": ("sampler=full",),
    "fed_lora": ("sampler=full",),
    "fed_asymm_lora": ("sampler=full",),
    "fed_cola": ("sampler=full",),
    "fed_rac_lora": ("sampler=full",),
    "biased_sgd": ("sampler=full",),
    "dsgd": ("sampler=uniform", "sampler.cohort_size=3"),
    "l_svrdsg": ("sampler=uniform", "sampler.cohort_size=3"),
}
NEUTRAL = {"compressor": "compressor=rand_k", "aggregator": "aggregator=cm", "attack": "attack=ipm"}
SMALL = ("engine=inline", "task=logreg_synthetic", "num_clients=6", "task.samples_per_client=30")
# instead of SMALL: the LoRA methods adapt the nn.Linear layers of a torch task
LINEAR_TORCH = ("engine=inline", "task=linear_torch", "partition=iid", "num_clients=3")
TASK = {name: LINEAR_TORCH for name in ("fed_lora", "fed_asymm_lora", "fed_cola", "fed_rac_lora")}


def test_every_method_config_has_a_contract_entry():
    assert sorted(SAMPLER) == METHODS


@pytest.mark.parametrize("name", METHODS)
def test_the_method_runs_and_refuses_the_groups_it_does_not_use(compose, name):
    cfg = compose(*TASK.get(name, SMALL), f"method={name}", *SAMPLER[name], "num_rounds=4")
    rows = run(cfg, None)
    loss = np.array([r["loss"] for r in rows])
    assert np.all(np.isfinite(loss)) and loss[-1] < loss[0], loss
    from fedsim.build import _class

    uses = getattr(_class(cfg["method"]["strategy"], "strategy"), "uses", ())
    for group, choice in NEUTRAL.items():
        if group in uses:
            continue
        with pytest.raises(ConfigError, match=f"does not use {group}"):
            compose(
                *TASK.get(name, SMALL), f"method={name}", *SAMPLER[name], choice,
                "attack.num_byzantine=1",
            )  # fmt: skip
