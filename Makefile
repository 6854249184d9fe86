# lrtune: `make run` and `make test` create .venv and install everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv run tune test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[worker,dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	bash examples/tour.sh

tune: $(STAMP)
	$(BIN)/lrtune tune --task digits-mlp --trials 20 --epochs 5 --baseline

lint: $(STAMP)
	$(BIN)/ruff check lrtune service worker tests bench
	mkdir -p .typecheck && ln -sfn ../lrtune .typecheck/lrtune \
		&& ln -sfn ../service .typecheck/lrtune_service && ln -sfn ../worker .typecheck/lrtune_worker
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two test files at a time: most tests wait on real servers, workers and databases.
test: $(STAMP) lint
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) lrtune.db .pytest_cache .typecheck
