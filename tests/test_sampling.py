"""Training on a stratified customer sample (issue 14): whole customers, equal shares per group, recorded."""

from __future__ import annotations

import math
from datetime import datetime

import pandas as pd

from training.sampling import customer_count, draw_sample

AS_OF = datetime(2026, 7, 1)


def _ids(con, table: str) -> set[str]:
    return set(con.execute(f"SELECT DISTINCT customer_id FROM {table}").df()["customer_id"])


def test_a_sample_keeps_whole_customers_and_equal_shares_per_group(generated_validation):
    full = generated_validation
    total = customer_count(full)
    sample = draw_sample(full, AS_OF, 1000)
    share = 1000 / total
    assert sample.customers == total and 1000 <= sample.kept <= 1000 + len(sample.strata) <= 1020
    assert (sample.strata["kept"] == [math.ceil(n * share) for n in sample.strata["customers"]]).all()
    assert len(sample.strata) >= 6  # recency x orders groups present in a generated programme
    kept = _ids(sample.validation.con, "customers")
    assert len(kept) == sample.kept
    zone = "SELECT current_setting('TimeZone')"  # the sample is read in the working database's session zone
    assert sample.validation.con.execute(zone).fetchone() == full.con.execute(zone).fetchone() == ("UTC",)
    for table in full.tables:  # every record of a kept customer, none of the others
        counts = full.con.execute(f"SELECT customer_id, count(*) AS n FROM {table} GROUP BY ALL").df()
        sampled = sample.validation.con.execute(f"SELECT customer_id, count(*) AS n FROM {table} GROUP BY ALL").df()
        expected = counts[counts["customer_id"].isin(kept)].sort_values("customer_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(sampled.sort_values("customer_id").reset_index(drop=True), expected)
        assert sample.validation.rows_clean[table] == expected["n"].sum()
    # the same data and budget draw the same customers; the full tables are untouched
    assert _ids(draw_sample(full, AS_OF, 1000).validation.con, "customers") == kept
    assert customer_count(full) == total and full.con.execute("SELECT count(*) FROM customers").fetchone()[0] == total


def test_no_sample_at_or_under_the_budget(generated_validation):
    total = customer_count(generated_validation)
    assert draw_sample(generated_validation, AS_OF, total) is None
    assert draw_sample(generated_validation, AS_OF, 0) is None


def test_train_records_its_sample_and_the_model_scores_everyone(generated, tmp_path, monkeypatch):
    import mlflow
    from typer.testing import CliRunner

    from serving.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "clusters", "--data", str(generated[1]), "--as-of", "2026-07-01",
                                 "--max-customers", "1500"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long notes
    assert "stratified sample of 1,5" in said and "of 4,000 customers (--max-customers 1,500" in said
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert '"max_customers": 1500' in run.data.params["data.customer_sample"]
    strata = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                             artifact_path="tables/customer_sample.csv"))
    assert strata["kept"].sum() >= 1500 and strata["customers"].sum() == 4000
    scored = runner.invoke(app, ["score", "--data", str(generated[1]), "--as-of", "2026-07-01", "--out", "s.parquet"])
    assert scored.exit_code == 0, scored.output
    assert len(pd.read_parquet(tmp_path / "s.parquet")) == 4000
