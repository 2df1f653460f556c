"""Local training, compression and partial participation: four comparisons, one command each.

Papers: Scaffnew/ProxSkip (arXiv 2202.09357), TAMUNA (arXiv 2302.09832), 5GCS (arXiv 2212.14370),
5GCS-CC and importance sampling (arXiv 2306.03240). Every run uses the inline engine and the
methods' default (``auto``) stepsizes unless a comparison says otherwise::

    .venv/bin/python experiments/local_training/run.py tamuna_vs_scaffnew
    .venv/bin/python experiments/local_training/run.py tamuna_s
    .venv/bin/python experiments/local_training/run.py fivegcs_cc
    .venv/bin/python experiments/local_training/run.py importance
    .venv/bin/python experiments/local_training/run.py gamma_tau     # 5GCS's default γτ

Options: ``--seeds 0,1,2``, ``--rounds N`` (scales every run), ``--set task.path=/data/a9a``
(any Hydra override, repeatable), ``--jobs J``, ``--out DIR``. Each command prints a table,
writes ``<name>.png`` and ``<name>.md`` next to this file (or under ``--out``) and exits with
status 1 when the comparison's claim (its ``claim`` line below) fails on the mean over seeds.

The problems (Hydra experiment configs): ``conf/experiment/local_training_a9a.yaml``,
L2-regularized logistic regression on LIBSVM a9a (λ = 1e-3, κ ≈ 1900), sorted by label and cut
into 100 clients (heterogeneous: most clients see one label only), cohorts of 10; and
``conf/experiment/local_training_quadratic.yaml``, 100 quadratic clients with L_m spread
geometrically from 1 to 1000.
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

A9A = ("+experiment=local_training_a9a",)  # conf/experiment/local_training_a9a.yaml
QUADRATIC = ("+experiment=local_training_quadratic",)


COMPARISONS = {
    c.name: c
    for c in (
        Comparison(
            "tamuna_vs_scaffnew",
            "(i) TAMUNA (c = 10, s and p auto) vs Scaffnew (all 100 clients) vs FedAvg (c = 10)",
            A9A,
            3000,
            (
                # auto picks s = 3, p = 0.196: ~3400 rounds to 1e-8 by its rate
                Arm("TAMUNA", ("method=tamuna", "num_rounds=5000")),
                # 100 clients x ~43 local steps per round: it converges in fewer rounds
                Arm("Scaffnew", ("method=scaffnew", "sampler=full", "num_rounds=1200")),
                Arm("FedAvg", ("method=fedavg", "method.local_steps=5")),
            ),
            ("round", "up_floats"),
            "TAMUNA reaches 1e-8·dist_sq(x0) with fewer uplink floats than Scaffnew; FedAvg "
            "(5 local steps ≈ TAMUNA's 1/p) never does",
            1e-8,
            "up_floats",
            "TAMUNA",
            ("Scaffnew", "FedAvg"),
        ),
        Comparison(
            "tamuna_s",
            "(ii) TAMUNA with s < c vs s = c (c = 10, p = 0.1 for all)",
            (*A9A, "method=tamuna", "method.p=0.1"),
            3000,
            (
                Arm("s = 10 (= c)", ("method.s=10",)),
                Arm("s = 5", ("method.s=5",)),
                Arm("s = 2", ("method.s=2",)),
            ),
            ("round", "up_floats"),
            "s = 5 reaches 1e-8·dist_sq(x0) with fewer uplink floats than s = c",
            1e-8,
            "up_floats",
            "s = 5",
            ("s = 10 (= c)",),
        ),
        Comparison(
            "tamuna_s_auto",
            "(ii-b) TAMUNA with p and η at auto for each s (c = 10)",
            (*A9A, "method=tamuna"),
            3000,
            (
                Arm("s = 10 (= c)", ("method.s=10",)),
                Arm("s = auto", ("num_rounds=5000",)),
                # 6000 rounds of s = 2 upload more floats than s = auto needs
                Arm("s = 2", ("method.s=2", "num_rounds=6000")),
            ),
            ("round", "up_floats"),
            "s = auto reaches 1e-8·dist_sq(x0) with fewer uplink floats than s = c and s = 2",
            1e-8,
            "up_floats",
            "s = auto",
            ("s = 10 (= c)", "s = 2"),
        ),
        Comparison(
            "fivegcs_cc",
            "(iii) 5GCS vs 5GCS-CC (compressed dual increments), in uplink bits",
            A9A,
            2500,
            (
                Arm("5GCS", ("method=fivegcs",)),
                Arm("5GCS-CC qsgd(4)", ("method=fivegcs_cc", "compressor=qsgd")),
                Arm("5GCS-CC natural", ("method=fivegcs_cc", "compressor=natural")),
                Arm(
                    "5GCS-CC rand_k(25%)",
                    ("method=fivegcs_cc", "compressor=rand_k", "compressor.ratio=0.25"),
                ),
            ),
            ("round", "up_bits"),
            "5GCS-CC with natural compression reaches 1e-8·dist_sq(x0) with fewer uplink bits "
            "than 5GCS",
            1e-8,
            "up_bits",
            "5GCS-CC natural",
            ("5GCS",),
        ),
        Comparison(
            "gamma_tau",
            "5GCS's default γτ: rounds to 1e-8 for γτ from 0.25 to 3 (the condition is γτ < 1)",
            (*A9A, "method=fivegcs"),
            2500,
            tuple(Arm(f"γτ = {v}", (f"method.gamma_tau={v}",)) for v in (0.25, 0.5, 0.9, 1.5, 3.0)),
            ("round",),
            "γτ = 0.9 reaches 1e-8·dist_sq(x0) in fewer rounds than γτ = 0.25 and 0.5",
            1e-8,
            "round",
            "γτ = 0.9",
            ("γτ = 0.25", "γτ = 0.5"),
        ),
        Comparison(
            "importance",
            "(iv) 5GCS: importance vs uniform cohorts, quadratic with L_max/L_min = 1000",
            QUADRATIC,
            1500,
            (
                Arm("uniform", ("sampler=uniform",)),
                Arm("importance from the bound", ("sampler=importance", "sampler.by=bound")),
                Arm("importance ∝ √L_m", ("sampler=importance", "sampler.by=sqrt_smoothness")),
                Arm("importance ∝ L_m", ("sampler=importance", "sampler.by=smoothness")),
            ),
            ("round",),
            "importance from the bound reaches 1e-6·dist_sq(x0) in fewer rounds than uniform "
            "and than the rule ∝ L_m",
            1e-6,
            "round",
            "importance from the bound",
            ("uniform", "importance ∝ L_m"),
        ),
    )
}


def main(argv: Sequence[str] | None = None) -> int:
    return compare.main(COMPARISONS, "experiments/local_training/run.py", HERE, argv)


if __name__ == "__main__":
    sys.exit(main())
