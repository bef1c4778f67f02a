"""The `segments` command as a user runs it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.catalog import FEATURE_SET_VERSION

SEGMENTS = shutil.which("segments", path=str(Path(sys.executable).parent)) or "segments"
COMMANDS = ["generate", "import-cdnow", "validate", "features", "catalog", "train", "retrain", "score", "promote",
            "build", "monitor", "serve"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([SEGMENTS, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False)


def test_the_installed_command_lists_every_command():
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout and all(c in result.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    """In process: the installed command's start (~1.4 s a subprocess, 5-16 s on a loaded machine) is tested above."""
    from typer.testing import CliRunner

    from serving.cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and command in result.output


def test_generate_validate_features_round_trip(tmp_path):
    data = tmp_path / "data"
    generated = run("generate", "--out", str(data), "--customers", "300", "--months", "6", "--seed", "5")
    assert generated.returncode == 0, generated.stderr
    assert {p.name for p in data.iterdir()} == {"customers.parquet", "transactions.parquet", "events.parquet",
                                                "ground_truth.parquet"}

    validated = run("validate", "--data", str(data), "--quarantine", str(tmp_path / "q"))
    assert validated.returncode == 0, validated.stderr
    assert "transactions" in validated.stdout and (tmp_path / "q" / "quarantine.csv").exists()

    out = tmp_path / "features.parquet"
    built = run("features", "--data", str(data), "--as-of", "2026-06-01", "--out", str(out))
    assert built.returncode == 0, built.stderr
    table = pq.read_table(out)
    assert table.schema.metadata[b"feature_set_version"].decode() == FEATURE_SET_VERSION
    assert table.schema.metadata[b"as_of"].decode() == "2026-06-01T00:00:00"
    frame = table.to_pandas()
    customers = pd.read_parquet(data / "customers.parquet")
    transactions = pd.read_parquet(data / "transactions.parquet")
    known = set(customers.loc[customers["signup_date"] < "2026-06-01", "customer_id"]) | set(
        transactions.loc[transactions["timestamp"] < "2026-06-01", "customer_id"])
    assert set(frame["customer_id"]) == known and frame["customer_id"].is_unique
    assert frame.shape[1] - 1 >= 60


def test_bad_rows_are_reported_and_good_rows_kept(tmp_path):
    (tmp_path / "transactions.csv").write_text(
        "transaction_id,customer_id,timestamp,amount\n"
        + "".join(f"t{i},c{i % 7},2024-01-{1 + i % 28:02d},{i}.5\n" for i in range(60))
        + "t99,c1,yesterday,3\n")
    result = run("validate", "--data", str(tmp_path), "--quarantine", str(tmp_path / "q"))
    assert result.returncode == 0, result.stderr
    assert "unparseable_timestamp 1" in result.stdout
    quarantine = pd.read_csv(tmp_path / "q" / "quarantine.csv", dtype=str)
    assert quarantine[["row_number", "reason", "column", "value"]].values.tolist() == [
        ["61", "unparseable_timestamp", "timestamp", "yesterday"]]

    out = tmp_path / "f.parquet"
    built = run("features", "--data", str(tmp_path), "--as-of", "2024-02-01", "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert pd.read_parquet(out)["orders_count_total"].sum() == 60


def test_too_many_bad_rows_stop_with_a_message_naming_file_and_column(tmp_path):
    (tmp_path / "transactions.csv").write_text(
        "transaction_id,customer_id,timestamp,amount\nt1,c1,2024-01-01,abc\nt2,c1,2024-01-02,5\n")
    result = run("validate", "--data", str(tmp_path), "--quarantine", str(tmp_path / "q"))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "transactions.csv" in message and "'amount'" in message and "--max-bad-share" in message
    assert "Traceback" not in result.stderr
    assert (tmp_path / "q" / "quarantine.parquet").exists()  # the bad rows are still there to inspect


def test_missing_input_and_bad_dates_are_clear_errors(tmp_path):
    missing = run("features", "--data", str(tmp_path / "nope"), "--as-of", "2024-01-01", "--out", "x.parquet")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad_date = run("features", "--data", str(tmp_path), "--as-of", "2024-13-01", "--out", "x.parquet")
    assert bad_date.returncode == 2 and "is not a date" in bad_date.stderr


@pytest.mark.parametrize("command", [["features", "--as-of", "2024-01-01"], ["score", "--as-of", "2024-01-01"],
                                     ["export", "--segment", "loyal"]])
def test_an_output_file_that_is_a_folder_is_refused_before_any_work(command, tmp_path):
    """`--out` of a file-writing command given an existing folder, or a file under a path that cannot be a folder:
    exit 2 naming it before any work, not a traceback after it."""
    from typer.testing import CliRunner

    from serving.cli import app

    folder = tmp_path / "out"
    folder.mkdir()
    data = ["--data", str(tmp_path)] if command[0] != "export" else []
    result = CliRunner().invoke(app, [*command, *data, "--out", str(folder)], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "Invalid value for '--out'" in said and "is a directory" in said and "Traceback" not in said
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    result = CliRunner().invoke(app, [*command, *data, "--out", str(a_file / "x.parquet")], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"{a_file} is a file, not a folder" in said and "Traceback" not in said
    later = tmp_path / "new" / "folder"  # a run refused for another reason leaves no folder behind
    result = CliRunner().invoke(app, [command[0], "--out", str(later / "x.parquet"), "--as-of", "nope", *data])
    assert result.exit_code == 2 and not (tmp_path / "new").exists(), result.output


def test_a_bad_duckdb_memory_setting_is_a_clear_error(generated):
    env = {**os.environ, "COLUMNS": "200", "SEGMENTS_DUCKDB_MEMORY": "lots"}
    bad = subprocess.run([SEGMENTS, "validate", "--data", str(generated[1])], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "SEGMENTS_DUCKDB_MEMORY='lots' is not a memory size" in " ".join(bad.stderr.split())


def test_cdnow_import_and_features(tmp_path):
    imported = run("import-cdnow", "--out", str(tmp_path / "cdnow"))
    assert imported.returncode == 0, imported.stderr
    out = tmp_path / "cdnow.parquet"
    built = run("features", "--data", str(tmp_path / "cdnow"), "--as-of", "1997-10-01", "--out", str(out))
    assert built.returncode == 0, built.stderr
    frame = pd.read_parquet(out)
    # every CDNOW customer made a first purchase in 1997-01..03, so all 23,570 are known by 1997-10-01
    assert len(frame) == 23570
    assert "email_open_count_90d" not in frame.columns  # no events table: engagement features absent


def test_catalog_writes_markdown(tmp_path):
    result = run("catalog", "--markdown", str(tmp_path / "FEATURES.md"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "FEATURES.md").read_text()
    assert "`days_since_last_order`" in text and FEATURE_SET_VERSION in text


def test_train_config_errors_are_clear(tmp_path):
    data = tmp_path / "data"
    assert run("generate", "--out", str(data), "--customers", "200", "--months", "6").returncode == 0
    missing = run("train", "churn", "--data", str(data), "--as-of", "2026-07-01", "--config", "nope.yaml")
    assert missing.returncode == 2 and "cannot read the config file nope.yaml" in " ".join(missing.stderr.split())
    (tmp_path / "bad.yaml").write_text("churn:\n  bogus_field: 1\n")
    bad = run("train", "churn", "--data", str(data), "--as-of", "2026-07-01", "--config", str(tmp_path / "bad.yaml"),
              cwd=tmp_path)
    assert bad.returncode == 1 and "unknown ChurnConfig fields ['bogus_field']" in " ".join(bad.stderr.split())
    assert "Traceback" not in missing.stderr + bad.stderr
