# Two commands matter: `make demo` and `make test`. Both create the environment first (uv, from uv.lock).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
UV := python3 -m uv
DEMO := demo
PYTEST_ARGS ?=

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export BENTOML_DO_NOT_TRACK := 1
export OMP_WAIT_POLICY := PASSIVE
export OPENBLAS_NUM_THREADS := 1
export UV_PYTHON_DOWNLOADS := never

.PHONY: env demo test lint bench clean

env: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock Makefile
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet "uv>=0.5"
	# Bytecode compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set (CI, many Docker images) every
	# command would otherwise compile ~2,500 modules from source at start, ~4 s (bench/README.md, "Start-up").
	$(UV) sync --frozen --all-extras --compile-bytecode
	@echo "environment $(VENV): $$($(BIN)/python --version) (Python 3.11, 3.12 and 3.13 are supported; uv took the first it found)"
	@touch $@

demo: env
	$(BIN)/segments generate --out $(DEMO)/data --customers 5000 --months 24 --seed 7
	$(BIN)/segments validate --data $(DEMO)/data --quarantine $(DEMO)/quarantine
	$(BIN)/segments features --data $(DEMO)/data --as-of 2026-07-01 --out $(DEMO)/features.parquet
	cd $(DEMO) && ../$(BIN)/segments train all --data data --as-of 2026-07-01 \
		--seed-segment best_members --seed-segment loyalty_members
	cd $(DEMO) && ../$(BIN)/segments score --data data --as-of 2026-07-01 --out scores.parquet
	cd $(DEMO) && ../$(BIN)/segments build --data data --as-of 2026-07-01
	cd $(DEMO) && ../$(BIN)/segments score --data data --as-of 2026-07-01 --serve-dir serve --explain \
		--out scores_explained.parquet
	rm -f $(DEMO)/segments.db $(DEMO)/cdnow_segments.db
	cd $(DEMO) && ../$(BIN)/segments refresh --data data --as-of 2026-06-01
	cd $(DEMO) && ../$(BIN)/segments refresh --data data --as-of 2026-07-01
	cd $(DEMO) && ../$(BIN)/segments flows --from 2026-06-02 --to 2026-07-02
	cd $(DEMO) && ../$(BIN)/segments campaign create --name june-winback --segment lifecycle_lapsing \
		--from 2026-06-01 --to 2026-07-01 --channel email --goal conversion_rate
	cd $(DEMO) && ../$(BIN)/segments campaign measure june-winback --data data
	cd $(DEMO) && ../$(BIN)/segments export --segment at_risk_vip --out exports/at_risk_vip.csv \
		--fields churn_band,lookalike_best_members_percentile
	$(BIN)/segments import-cdnow --out $(DEMO)/cdnow
	$(BIN)/segments features --data $(DEMO)/cdnow --as-of 1997-10-01 --out $(DEMO)/cdnow_features.parquet
	cd $(DEMO) && for d in 1997-09-01 1997-10-01; do ../$(BIN)/segments refresh --data cdnow --as-of $$d \
		--no-models --db sqlite:///cdnow_segments.db || exit 1; done
	cd $(DEMO) && ../$(BIN)/segments report --out reports
	@echo
	@echo "Demo outputs:"
	@echo "  synthetic data        $(DEMO)/data/ (ground truth in ground_truth.parquet)"
	@echo "  quarantine report     $(DEMO)/quarantine/"
	@echo "  feature table         $(DEMO)/features.parquet"
	@echo "  models (MLflow)       $(DEMO)/mlflow.db, artifacts in $(DEMO)/mlruns/"
	@echo "  scores                $(DEMO)/scores.parquet, with reasons: $(DEMO)/scores_explained.parquet"
	@echo "  campaign audience     $(DEMO)/exports/at_risk_vip.csv (holdout left out; position in .export.json)"
	@echo "  serve folder          $(DEMO)/serve/ (models in $(DEMO)/bentoml/)"
	@echo "  segment membership    $(DEMO)/segments.db (refreshed 2026-06-01 and 2026-07-01; CDNOW: cdnow_segments.db)"
	@echo "  CDNOW (real data)     $(DEMO)/cdnow/ and $(DEMO)/cdnow_features.parquet"
	@echo
	@echo "Browse runs and registered models:  cd $(DEMO) && ../$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"
	@echo "Start the scoring service:          cd $(DEMO) && ../$(BIN)/segments serve   (README: Scoring service)"
	@echo "Who moved and why:                  cd $(DEMO) && ../$(BIN)/segments segment loyal --members 5   (README: Segments)"
	@echo "Reports, also served at http://127.0.0.1:3000/reports/ (customer pages: /reports/customers/ID):"
	@echo "$(abspath $(DEMO))/reports/index.html"

test: env
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

lint: env
	$(BIN)/ruff check features training serving tests bench
	$(BIN)/lint-imports
	$(BIN)/deptry .

bench: env
	$(BIN)/python bench/run.py

clean:
	rm -rf $(DEMO) .pytest_cache
