"""Quality gates on several generated programmes, through the training protocol `segments train` runs.

Three seeds (the suite's shared programme, seed 11, and 12 and 14), 4,000 customers each; margins set from the
observed spread on seeds 11-15:
- churn must be at least as good as its best baseline (BG/NBD on this data): `bench/churn_seeds.py` saw margins
  +0.0003 to +0.0116 ROC-AUC, each with a paired-bootstrap 95% half-width of ~0.005, so a model more than 0.005
  behind on any seed fails, as does one that is not ahead on average;
- the `best_members` look-alike's headline (entry lift in the top 10%, out of time) must stay level with its best
  baseline, the rule's near-misses, which sits at the ceiling (~10: every entrant in its top 10%): `bench/
  gate_seeds.py` saw the model 0 to 0.71 behind, so more than 1.0 behind fails; and the grade must say it is not
  better than the rule;
- clusters must recover the planted personas better than plain KMeans with the same k (standardized features):
  adjusted Rand index 0.737-0.778 against 0.646-0.708, margins +0.065 to +0.105, so a lead under 0.03 fails.
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


LOOKALIKE_BEHIND_AT_MOST = 1.0  # entry lift: the worst seed was 0.71 behind the rule's near-misses
CLUSTER_LEAD_AT_LEAST = 0.03  # ARI over plain KMeans: the smallest lead seen was 0.065


@pytest.fixture(scope="module")
def programmes(generated_validation, generated, tmp_path_factory) -> dict:
    """seed -> (training data as `segments train` builds it, the generated tables with their ground truth)."""
    out = {11: (training.TrainingData(generated_validation, AS_OF, str(generated[1])), generated[0])}
    for seed in SEEDS:
        folder = tmp_path_factory.mktemp(f"seed{seed}")
        tables = generate_tables(4000, 24, seed=seed, end="2026-07-01")
        write_tables(tables, folder)
        out[seed] = (training.TrainingData(load_validated(folder), AS_OF, str(folder)), tables)
    return out


@pytest.fixture(scope="module")
def runs(programmes):
    out = {}
    for seed, (data, _) in programmes.items():
        record = training.train_churn(data, {}, horizon_days=90)
        out[seed] = {"metrics": record.evaluation.metrics, "baselines": record.evaluation.baselines}
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


def test_the_lookalike_headline_stays_level_with_the_rule_and_says_so(programmes):
    for seed, (data, _) in programmes.items():
        evaluation = training.train_lookalike(data, {}, "best_members").evaluation
        lift = evaluation.metrics["entry_lift_at_10"]
        near_miss = evaluation.baselines["rule_near_miss"]["entry_lift_at_10"]
        random = evaluation.baselines["random"]["entry_lift_at_10"]
        assert lift >= near_miss - LOOKALIKE_BEHIND_AT_MOST, (seed, lift, near_miss)
        assert lift >= 4 * max(random, 1.0), (seed, lift, random)  # far above a random ranking
        graded = grade_model("lookalike", evaluation.metrics, evaluation.baselines)
        assert graded.best_baseline == "rule near-miss" and graded.verdict != "better", (seed, graded.sentence)
        assert graded.grade != "Excellent", (seed, graded.sentence)


def test_clusters_recover_the_personas_better_than_plain_kmeans(programmes):
    from training.estimators.clusters import label_agreement

    for seed, (data, tables) in programmes.items():
        record = training.train_clusters(data, {"bootstrap_rounds": 2})  # stability is not judged here
        personas = tables.ground_truth.set_index("customer_id")["persona"]
        agreement = label_agreement(record.model, data.current_features, personas)
        assert agreement["ari"] >= agreement["plain_kmeans_ari"] + CLUSTER_LEAD_AT_LEAST, (seed, agreement)
