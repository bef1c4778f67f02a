"""Shared test setup: no outside network calls, quiet thread pools on 2 cores."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # 2 BLAS threads on 2 busy cores made GMM fits 40x slower
# One thread per model fit (training.runtime.fit_threads): the two workers share two cores, and the training-heavy
# modules took 158 s instead of 196 s with 2 threads a fit
os.environ.setdefault("SEGMENTS_THREADS", "1")
# Compiled feature SQL, shared by the workers and the commands they start, outside the user's own cache
os.environ.setdefault("SEGMENTS_SQL_CACHE", str(Path(tempfile.gettempdir()) / f"segments-test-feature-sql-{os.getuid()}"))

sys.path.insert(0, str(Path(__file__).parent))  # lets test modules share fixtures data (e.g. test_features)

import pytest

# One generated loyalty programme per test session, big enough for the model tests and small enough for 2 cores:
# 24 months so that personas are well formed (lapsing customers need time to lapse).
GENERATED_CUSTOMERS = 4000
GENERATED_MONTHS = 24
GENERATED_END = "2026-07-01"


# Modules whose module fixtures are slow to build (models trained and served, a Spark session, generated programmes):
# pytest-xdist sends each of them to one worker, which builds its fixtures once instead of once per worker.
SHARED_FIXTURE_MODULES = {"test_serving_http", "test_serving", "test_reports", "test_report_models",
                          "test_counterfactual", "test_spark", "test_quality_gates", "test_monitoring", "test_churn",
                          "test_clusters", "test_lift", "test_lookalike", "test_value"}


def pytest_xdist_make_scheduler(config, log):
    """`-n 2`: like xdist's `load`, each test to the next free worker, except that the tests of a
    SHARED_FIXTURE_MODULES module go together. xdist's own `--dist loadgroup` does the same from marks, but with
    pytest 9.2 its marks no longer reach the scheduler (it renames nodes through `item._nodeid`, which pytest no longer
    reads). Modules are queued before single tests, most tests first, so that no worker ends on a long module."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixturesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if Path(module).stem in SHARED_FIXTURE_MODULES else nodeid

    return SharedFixturesTogether(config, log)


@pytest.fixture(scope="session", autouse=True)
def prediction_log(tmp_path_factory):
    """`segments score` and `segments refresh` log their predictions (serving.predictions, default ./predictions):
    in tests, into a temp folder, never into the checkout (a test that reads the log sets its own folder)."""
    if not os.environ.get("SEGMENTS_PREDICTION_LOG"):
        os.environ["SEGMENTS_PREDICTION_LOG"] = str(tmp_path_factory.mktemp("predictions"))


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """The generated tables (features.synthetic.generator.GeneratedData) and the folder they are written to."""
    from features.synthetic.generator import generate_tables, write_tables

    data = generate_tables(GENERATED_CUSTOMERS, GENERATED_MONTHS, seed=11, end=GENERATED_END)
    folder = tmp_path_factory.mktemp("generated")
    write_tables(data, folder)
    return data, folder


@pytest.fixture(scope="session")
def generated_validation(generated):
    """The generated folder loaded and validated (clean tables in a DuckDB connection)."""
    from features.pipeline import load_validated

    return load_validated(generated[1])


@pytest.fixture(scope="session")
def small_models(generated_validation, generated):
    """The five model kinds trained small on the generated programme (tests/serving_setup.py): once per test process,
    registered and built into one serve folder per process (`serving_setup.build_served`)."""
    from serving_setup import train_small

    return train_small(generated_validation, generated[1])


# The segment store's tests run against both backends. PostgreSQL comes from SEGMENTS_TEST_PG_URL (`.ci/run` starts a
# throwaway server and sets it); each test gets a database of its own, so pytest-xdist workers never share rows.
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A URL of an empty segment store database: a SQLite file, or a fresh PostgreSQL database dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'segments.db'}"
        return
    admin_url = os.environ.get("SEGMENTS_TEST_PG_URL")
    if not admin_url:
        reason = (
            "SEGMENTS_TEST_PG_URL is not set (a PostgreSQL URL whose role may CREATE DATABASE, e.g. "
            "postgresql://segments:PASSWORD@127.0.0.1:55432/postgres; `.ci/run postgres` starts one)"
        )
        if os.environ.get("SEGMENTS_REQUIRE_PG") == "1":
            pytest.fail(f"SEGMENTS_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)

    import uuid

    from sqlalchemy import create_engine

    from serving.segments.store import sqlalchemy_url

    admin = create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs autocommit
    name = f"test_{uuid.uuid4().hex}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield admin.url.set(database=name).render_as_string(hide_password=False)
    finally:
        _drop_database(admin, name)
        admin.dispose()


def _drop_database(admin, name: str) -> None:
    """DROP DATABASE ... WITH (FORCE) (FORCE: stores left open). A role without pg_signal_backend may not end an
    autovacuum worker that is in the database; that worker is gone within seconds, so try again for a while."""
    import time

    from sqlalchemy.exc import ProgrammingError

    for attempt in range(40):
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except ProgrammingError as exc:
            if "pg_signal_backend" not in str(exc) or attempt == 39:
                raise
            time.sleep(0.25)
