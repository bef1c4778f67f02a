"""Quality gates on several generated programmes, through the training protocol `segments train churn` runs.

The churn model must be at least as good as its best baseline (BG/NBD on this data) on each of three seeds. The
margin is set from the observed spread (`bench/churn_seeds.py`, 4,000 customers, seeds 11-15: margins +0.0003 to
+0.0116 ROC-AUC, each with a paired-bootstrap 95% half-width of ~0.005): a model more than 0.005 behind the best
baseline on any seed fails, as does one that is not ahead on average. The suite's shared programme (seed 11, the
tightest of the five) is one of the three.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from features.pipeline import load_validated
from features.synthetic.generator import generate_tables, write_tables
from training import train as training
from training.grading import grade_model

AS_OF = datetime(2026, 7, 1)
BEHIND_AT_MOST = 0.005  # the bootstrap half-width of one seed's margin: a tie within noise passes, a loss does not
SEEDS = (12, 14)  # with the shared seed 11: three programmes


def churn_run(validation, source) -> dict:
    record = training.train_churn(training.TrainingData(validation, AS_OF, str(source)), {}, horizon_days=90)
    return {"metrics": record.evaluation.metrics, "baselines": record.evaluation.baselines}


@pytest.fixture(scope="module")
def runs(generated_validation, generated, tmp_path_factory):
    out = {11: churn_run(generated_validation, generated[1])}
    for seed in SEEDS:
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        write_tables(generate_tables(4000, 24, seed=seed, end="2026-07-01"), folder)
        out[seed] = churn_run(load_validated(folder), folder)
    return out


def test_churn_is_at_least_as_good_as_its_best_baseline_on_three_programmes(runs):
    margins = {}
    for seed, run in runs.items():
        best = max(m["roc_auc"] for m in run["baselines"].values())
        margins[seed] = run["metrics"]["roc_auc"] - best
        assert margins[seed] == pytest.approx(run["metrics"]["margin_vs_best_baseline"])
        assert margins[seed] >= -BEHIND_AT_MOST, (seed, margins)
    assert sum(margins.values()) / len(margins) > 0, margins


def test_the_grade_never_reads_excellent_without_a_clear_lead(runs):
    for seed, run in runs.items():
        graded = grade_model("churn", run["metrics"], run["baselines"])
        clear_lead = run["metrics"]["margin_ci_low"] > 0
        assert (graded.grade == "Excellent") <= clear_lead, (seed, graded.sentence)
        assert graded.grade in {"Good", "Excellent"}, (seed, graded.sentence)  # ROC-AUC ~0.89 and not behind
