"""Clipped methods under (L0,L1)-smoothness (arXiv 2412.02781): the paper's sets, one command each.

    .venv/bin/python experiments/generalized_smoothness/run.py local_steps            # set (iii)
    .venv/bin/python experiments/generalized_smoothness/run.py partial_participation  # set (iv)
    .venv/bin/python experiments/generalized_smoothness/run.py clerr_digits  # vs SO, NASTYA

Sets (iii) and (iv) run on the quartic of ``conf/experiment/generalized_smoothness.yaml`` (d = 100,
x0 = 10·1, 10 clients sorted by norm, 200 rounds), 10 seeds, every method at its quartic tuning
(``tune.py --problem quartic``; the experiment config's ``tuned`` block replaces the methods'
``auto`` defaults); bands are mean ± std of f − f* over seeds. ``clerr_digits`` runs CLERR,
shuffle-once SGD and NASTYA on the digits MLP
(``conf/experiment/generalized_smoothness_digits.yaml``, whose ``tuned`` block holds CLERR's
setting) at the settings ``tune.py --problem digits`` selected. Options as in
:func:`fedsim.compare.main`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `fedsim` importable
    sys.path.insert(0, str(ROOT))

from fedsim import compare  # noqa: E402
from fedsim.compare import Arm, Comparison  # noqa: E402

QUARTIC = ("+experiment=generalized_smoothness",)
SEEDS = tuple(range(10))

COMPARISONS = {
    c.name: c
    for c in (
        Comparison(
            "local_steps",
            "(iii) local steps on the quartic: server vs client clipping, H = 10 and 1",
            QUARTIC,
            200,
            (
                Arm("Clip-LocalGDJ, H=10", ("method=clip_local_gdj", "sampler=full")),
                Arm(
                    "Clip-LocalGDJ, H=1",
                    ("method=clip_local_gdj", "sampler=full", "method.local_steps=1"),
                ),
                Arm("CE-FedAvg, H=10", ("method=ce_fedavg", "sampler=full")),
                Arm("CE-FedAvg, H=1", ("method=ce_fedavg", "sampler=full", "method.local_steps=1")),
                Arm("CELGC, H=10", ("method=celgc", "sampler=full")),
                Arm("L0L1-GD", ("method=l0l1_gd", "sampler=full")),
            ),
            ("round",),
            "Clip-LocalGDJ (H = 10) ends at a lower mean f − f* than CE-FedAvg and CELGC (H = 10)",
            0.0,
            "round",
            "Clip-LocalGDJ, H=10",
            ("CE-FedAvg, H=10", "CELGC, H=10"),
            metric="gap",
            kind="final",
            seeds=SEEDS,
        ),
        Comparison(
            "partial_participation",
            "(iv) partial participation on the quartic: cohorts of 2 of 10 clients",
            QUARTIC,
            200,
            (
                Arm(
                    "Clipped RR-CLI (cyclic)",
                    ("method=clipped_rr_cli", "sampler=cyclic", "sampler.cohort_size=2"),
                ),
                Arm(
                    "CE-FedAvg (uniform)",
                    ("method=ce_fedavg", "sampler=uniform", "sampler.cohort_size=2"),
                ),
            ),
            ("round",),
            "Clipped RR-CLI ends at a lower mean f − f* than CE-FedAvg with the same cohorts",
            0.0,
            "round",
            "Clipped RR-CLI (cyclic)",
            ("CE-FedAvg (uniform)",),
            metric="gap",
            kind="final",
            seeds=SEEDS,
        ),
        Comparison(
            "clerr_digits",
            "CLERR vs shuffle-once SGD vs NASTYA: digits MLP, one node, batch 32",
            ("+experiment=generalized_smoothness_digits",),
            60,
            (  # the settings tune.py --problem digits selected (tuned_digits.md); CLERR's are
                # the experiment config's tuned.clerr
                Arm("CLERR", ("method=clerr",)),
                Arm(
                    "NASTYA",
                    (
                        "method=fedavg",
                        "method.local_solver=rr",
                        "method.client_lr=1",
                        "method.server_lr=0.5",
                    ),
                ),
                Arm("SO", ("method=fedavg", "method.local_solver=so", "method.client_lr=0.3")),
            ),
            ("round",),
            "CLERR ends at a lower mean training loss than shuffle-once SGD and NASTYA",
            0.0,
            "round",
            "CLERR",
            ("NASTYA", "SO"),
            metric="loss",
            kind="final",
        ),
    )
}


def main(argv: Sequence[str] | None = None) -> int:
    return compare.main(COMPARISONS, "experiments/generalized_smoothness/run.py", HERE, argv)


if __name__ == "__main__":
    sys.exit(main())
