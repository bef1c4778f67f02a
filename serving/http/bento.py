"""Package the service as a bento: our code, the serve folder and the pinned models, built with no network.

`segments build --bento` calls this after writing the serve folder. The build context is a temporary copy of the
three packages (Python files and their data files) and the serve folder, so the serve folder can live anywhere. Its
requirements are the project's runtime dependencies pinned to the installed versions (`training.packaging`); package
locking is off (`lock_packages: false`): locking would ask the package index, and the bento must build offline.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import import_module
from pathlib import Path

import yaml

from training.packaging import service_requirements

PACKAGES = ("features", "training", "serving")
BENTO_SERVE_DIR = "serve"  # the serve folder's path inside the bento, read through SEGMENTS_SERVE_DIR
DATA_FILES = ("features/*.yaml", "serving/reports/templates/*.j2")  # the shipped segments, the report templates


def build_bento(serve_dir: Path, manifest: dict) -> str:
    """Build the bento `segments` in the BentoML store (BENTOML_HOME); returns its tag."""
    import bentoml

    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        for package in PACKAGES:
            source = Path(import_module(package).__file__).parent
            shutil.copytree(source, ctx / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copytree(serve_dir, ctx / BENTO_SERVE_DIR)
        bentofile = {
            "service": "serving.http.service:SegmentsService",
            "labels": {"feature_set_version": manifest["feature_set_version"], "as_of": manifest["as_of"][:10]},
            "include": [f"{p}/**/*.py" for p in PACKAGES] + [*DATA_FILES, f"{BENTO_SERVE_DIR}/**"],
            "envs": [{"name": "SEGMENTS_SERVE_DIR", "value": BENTO_SERVE_DIR},
                     {"name": "OMP_NUM_THREADS", "value": "1"}],  # as `segments serve` (serve_commands.serve)
            "python": {"packages": service_requirements(), "lock_packages": False},
            "models": [entry["bento_tag"] for entry in manifest["models"].values()],
        }
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), name="segments", build_ctx=str(ctx))
    return str(bento.tag)
