"""The notebooks run end to end on small generated data, show what the packages compute, and are committed clean.

Each notebook is executed with nbclient in this environment's `python3` kernel (ipykernel from the same venv) with
its default parameters and a temporary work folder. A check cell appended after the last cell prints, as JSON, the
results the notebook left in its variables; the test compares them with what the packages compute independently
here (the feature table from freshly generated data, the membership store and the MLflow registry the notebook
wrote). One test per notebook, so pytest-xdist runs them side by side.
"""

from __future__ import annotations

import ast
import json
import math
import os
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = ("01_data_and_features.ipynb", "02_segments_and_clusters.ipynb",
            "03_churn_and_lookalike_explanations.ipynb")
CELL_TIMEOUT_S = 300
# The notebooks' defaults (their parameters cell): what CI runs.
CUSTOMERS, MONTHS, SEED, END = 600, 24, 7, "2026-07-01"
CHECK_PREFIX = "NOTEBOOK_CHECK "


def run_notebook(name: str, tmp_path: Path, monkeypatch, checks: str) -> tuple[dict, nbformat.NotebookNode, Path]:
    """Execute `name` with its default parameters in a temp folder, then `checks` (an expression over the notebook's
    variables giving a JSON-ready dict). Returns (that dict, the executed notebook, the work folder)."""
    for variable in list(os.environ):
        if variable.startswith("NOTEBOOK_"):
            monkeypatch.delenv(variable)  # a developer's overrides must not change what the test checks
    work = tmp_path / "work"
    monkeypatch.setenv("NOTEBOOK_WORK_DIR", str(work))  # the kernel inherits this process's environment
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import json as _json, os as _os, sys as _sys\n"
        f"_checks = {checks}\n"
        "_checks.update(executable=_sys.executable, cwd=_os.getcwd())\n"
        f"print({CHECK_PREFIX!r} + _json.dumps(_checks, default=str))"))
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors, errors
    printed = "".join(o.get("text", "") for o in notebook.cells[-1].outputs if o.output_type == "stream")
    line = next(line for line in printed.splitlines() if line.startswith(CHECK_PREFIX))
    result = json.loads(line[len(CHECK_PREFIX):])
    # The kernel is this environment's Python, and the notebook worked in its temp folder.
    assert Path(result["executable"]).resolve() == Path(sys.executable).resolve()
    assert Path(result["cwd"]).resolve() == work.resolve()
    return result, notebook, work


def text_of(notebook: nbformat.NotebookNode) -> str:
    """Everything the notebook printed or displayed as text."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", "") if output.output_type == "stream"
                         else output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def images_of(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_01_data_and_features(tmp_path, monkeypatch):
    checks = """{
        "parameters": [CUSTOMERS, MONTHS, SEED, END],
        "clean_quarantined": len(validation.quarantine),
        "quarantine": {r.reason: int(r.rows) for r in messy_validation.counts.itertuples()},
        "quarantine_tables": sorted(set(messy_validation.quarantine["table"])),
        "feature_file": str(feature_file),
        "shape": list(features.shape),
        "catalog_size": len(catalog),
        "later_rows": later_rows,
        "leak_rows": len(features_from_the_past),
        "leak_equal": features_from_everything.equals(features_from_the_past),
        "axes": [[ax.get_title(), ax.get_xlabel(), ax.get_ylabel()] for ax in fig.axes],
    }"""
    result, notebook, work = run_notebook(EXPECTED[0], tmp_path, monkeypatch, checks)
    assert result["parameters"] == [CUSTOMERS, MONTHS, SEED, END]

    # Validation: the generated data is clean; the rows broken on purpose are quarantined for their reasons.
    assert result["clean_quarantined"] == 0
    assert result["quarantine"] == {"duplicate_id": 2, "unknown_customer": 1, "missing_key": 1,
                                    "non_numeric_amount": 1}
    assert result["quarantine_tables"] == ["transactions"]
    assert (work / "quarantine" / "quarantine.parquet").exists()

    # The feature table the notebook wrote is the package's for these parameters, computed independently here.
    from features.catalog import FEATURES
    from features.pipeline import build_feature_table, load_validated, read_feature_table, write_feature_table
    from features.synthetic.generator import generate_tables, write_tables

    data = generate_tables(CUSTOMERS, MONTHS, seed=SEED, end=END)
    write_tables(data, tmp_path / "independent")
    as_of = datetime.fromisoformat(END)
    run = build_feature_table(load_validated(tmp_path / "independent", run_time=as_of), as_of)
    expected, expected_meta = read_feature_table(write_feature_table(run, tmp_path / "independent.parquet"))
    shown, shown_meta = read_feature_table(Path(result["feature_file"]))
    assert Path(result["feature_file"]).resolve().is_relative_to(work.resolve())
    pd.testing.assert_frame_equal(shown, expected)
    assert shown_meta == expected_meta
    assert result["shape"] == [CUSTOMERS, len(FEATURES) + 1]  # every generated customer signed up before END
    assert result["catalog_size"] == len(FEATURES)

    # Leakage: later rows were really added, and the two tables as of the earlier date are the same.
    assert result["later_rows"] > 0 and result["leak_rows"] > 0 and result["leak_equal"]
    assert "is identical" in text_of(notebook)

    # The distribution plots have titles and axis labels with units.
    assert len(result["axes"]) == 4 and images_of(notebook) >= 1
    for title, xlabel, ylabel in result["axes"]:
        assert title and xlabel.endswith(")") and "(" in xlabel and ylabel == "Customers (count)"


def test_02_segments_and_clusters(tmp_path, monkeypatch):
    checks = """{
        "first": FIRST_REFRESH, "second": SECOND_REFRESH, "customers_first": len(features_first),
        "preview_sizes": {k: int(v) for k, v in sizes_first["members"].items()},
        "vip_preview": vip_size,
        "sizes_first": report_first.sizes.set_index("segment")["members"].to_dict(),
        "sizes_second": report_second.sizes.set_index("segment")["members"].to_dict(),
        "changes_first": report_first.changes, "changes_second": report_second.changes,
        "skipped": sorted(report_first.skipped),
        "again_written": report_again.written, "again_changes": report_again.changes,
        "k": cluster_model.k_, "cluster_names": list(cluster_model.names_),
        "profile_names": list(cluster_evaluation.tables["profiles"]["cluster_name"]),
        "moves": len(moves), "moves_without_cause": int((moves["why"].str.len() == 0).sum()),
        "flows": flows.fillna("(none)").to_dict(orient="records"),
        "lifecycle": LIFECYCLE,
    }"""
    result, notebook, work = run_notebook(EXPECTED[1], tmp_path, monkeypatch, checks)
    first, second = (datetime.fromisoformat(result[k]) for k in ("first", "second"))
    assert second == datetime.fromisoformat(END) and first < second

    # Without models the model-output segments are skipped with a reason; with the cluster bundle, one segment per
    # cluster appears, named from the fitted profiles.
    assert result["skipped"] == ["at_risk_vip", "best_members_lookalike", "likely_to_churn", "persuadable"]
    clusters = sorted(s for s in result["sizes_first"] if s.startswith("cluster_"))
    assert clusters == [f"cluster_{i}" for i in range(result["k"])]
    assert result["profile_names"] == result["cluster_names"]
    assert sum(result["sizes_first"][c] for c in clusters) == result["customers_first"]  # each in one cluster
    # Rule segments: the refresh stored the sizes the preview computed, and preview agrees for one segment.
    for segment, members in result["preview_sizes"].items():
        assert result["sizes_first"][segment] == members, segment
    assert result["vip_preview"] == result["preview_sizes"]["vip"]

    # The store the notebook wrote, read here: current sizes, the log with a cause for every change, flows.
    from serving.segments.store import SegmentStore

    store = SegmentStore(f"sqlite:///{work / 'segments.db'}")
    try:
        for segment, members in result["sizes_second"].items():
            assert store.current.segment_size(segment) == members, segment
        log = store.changes.log()
        assert len(log) == result["changes_first"] + result["changes_second"]
        assert (log["at"] == first).sum() == result["changes_first"] and set(log[log["at"] == first]["change"]) == {
            "entered"}
        later = log[log["at"] == second]
        assert len(later) == result["moves"] == result["changes_second"] > 0
        assert set(later["change"]) == {"entered", "exited"}
        assert all(cause and all(c["text"] for c in cause) for cause in later["cause"])
        assert result["moves_without_cause"] == 0
        flows = store.changes.flows(first, second, result["lifecycle"]).fillna("(none)")
        assert flows.to_dict(orient="records") == result["flows"] and len(flows) > 0
    finally:
        store.close()
    assert result["again_written"] is False and result["again_changes"] == 0
    assert images_of(notebook) >= 4


def test_03_churn_and_lookalike_explanations(tmp_path, monkeypatch):
    checks = """{
        "tracking_uri": os.environ["MLFLOW_TRACKING_URI"],
        "churn_columns": list(churn_evaluation.comparison().columns),
        "churn_metrics": churn_evaluation.metrics, "churn_baselines": churn_evaluation.baselines,
        "churn_figures": sorted(churn_evaluation.figures),
        "lookalike_metrics": lookalike_evaluation.metrics, "lookalike_baselines": lookalike_evaluation.baselines,
        "excluded": list(lookalike_record.model.excluded_features_),
        "versions": bundle.versions,
        "registry": registry,
        "same_scores": bool(np.allclose(scores["churn_probability"],
                                        churn_record.model.predict(current)["churn_probability"])),
        "exactness_gap": exactness_gap,
        "chosen": [[r.customer_id, r.churn_probability] for r in chosen.itertuples()],
        "churn_reasons": [[reason["sentence"] for reason in e["churn"]] for e in explained],
        "seed_groups": list(lookalike_evaluation.tables["seed_shap_groups"]["group"]),
        "n_seed": len(seed_ids),
        "prospects_in_seed": int(prospects["customer_id"].isin(seed_ids).sum()),
    }"""
    result, notebook, work = run_notebook(EXPECTED[2], tmp_path, monkeypatch, checks)
    assert result["tracking_uri"] == f"sqlite:///{work / 'mlflow.db'}"

    # The out-of-time comparison has the model beside the three baselines; it beats random and ranks churners well.
    assert result["churn_columns"] == ["model", "recency", "bgnbd", "pnbd"]
    assert set(result["churn_figures"]) >= {"calibration", "gains", "lift", "shap_summary"}
    assert all(math.isfinite(v) for v in result["churn_metrics"].values())
    assert result["churn_metrics"]["roc_auc"] > 0.7  # planted signal; 600 customers are enough for this much
    # Look-alike: the extra exclusions took effect, and held-out best members are found far above random.
    assert {"points_earned_365d", "points_balance", "max_order_value_365d"} <= set(result["excluded"])
    assert result["lookalike_metrics"]["recall_at_10"] > 2 * result["lookalike_baselines"]["random"]["recall_at_10"]

    # What the notebook showed is what MLflow holds: read the registry and runs it wrote, from here.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", result["tracking_uri"])
    from training.tracking import client, registered_names

    mlflow_client = client()
    assert registered_names() == ["segments-churn", "segments-lookalike-best_members"]
    assert result["versions"] == {"segments-churn": "1", "segments-lookalike-best_members": "1"}
    assert {(r["registered model"], r["alias"]) for r in result["registry"]} == {
        (name, alias) for name in registered_names() for alias in ("champion", "challenger")}
    for name, shown, baselines in (("segments-churn", "churn_metrics", "churn_baselines"),
                                   ("segments-lookalike-best_members", "lookalike_metrics", "lookalike_baselines")):
        logged = mlflow_client.get_run(mlflow_client.get_model_version_by_alias(name, "champion").run_id).data.metrics
        for metric, value in result[shown].items():
            assert logged[metric] == pytest.approx(value), (name, metric)
        for baseline, metrics in result[baselines].items():
            for metric, value in metrics.items():
                if math.isfinite(value):
                    assert logged[f"baseline.{baseline}.{metric}"] == pytest.approx(value), (name, baseline, metric)
    assert (work / "mlruns").is_dir()  # artifacts stayed in the work folder

    # Explanations: the registry's champion scores like the trained model; TreeSHAP adds up to the margin; the
    # reasons are sentences about churn risk, for the highest, median and lowest churn probability.
    assert result["same_scores"]
    assert result["exactness_gap"] < 1e-9
    probabilities = [p for _, p in result["chosen"]]
    assert probabilities == sorted(probabilities, reverse=True) and probabilities[0] > probabilities[-1]
    for sentences in result["churn_reasons"]:
        assert len(sentences) == 3 and all("(typical " in s and ": churn risk " in s for s in sentences)
    assert "likeness to best_members" in text_of(notebook)
    assert result["seed_groups"] and result["n_seed"] > 0 and result["prospects_in_seed"] == 0
    assert images_of(notebook) >= 6


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_notebook_is_clean(name):
    """Outputs stripped, execution counts null, parameters first, and no logic of its own (no def or class)."""
    path = NOTEBOOKS / name
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    parameters = code[0]
    assert "parameters" in parameters.metadata.get("tags", [])
    assert 'os.environ.get("NOTEBOOK_CUSTOMERS", "600")' in parameters.source
    assert "NOTEBOOK_WORK_DIR" in parameters.source and "tempfile.mkdtemp" in parameters.source
    for cell in code:
        source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))  # magics
        defined = [node for node in ast.walk(ast.parse(source))
                   if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]
        assert not defined, f"{name}: logic belongs in the packages, not in the notebook: {cell.source[:80]}"
    assert any(cell.cell_type == "markdown" for cell in notebook.cells[:1])


def test_the_notebooks_folder_holds_the_three_notebooks():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)
