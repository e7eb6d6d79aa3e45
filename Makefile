# people-counter: two commands.
#   make run    create the environment, fetch the demo models and video, run the app on them
#               (the window when a display exists, else headless with a summary)
#   make test   lint, import contracts, and the test suite (GPU tests skip without a GPU)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
ARGS ?=

.PHONY: run test soak env assets bench clean-cache

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

env: $(STAMP)

assets: $(STAMP)
	$(BIN)/python main.py fetch-assets

# Without an NVIDIA GPU the demo is the light one a laptop runs live (config/laptop.yaml: vtest.avi,
# the global YOLO pass only); the 4K demo: make run ARGS="--config config/pipeline.yaml" (a later
# --config wins).
RUN_CONFIG ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo config/pipeline.yaml || echo config/laptop.yaml)

run: assets
	$(BIN)/python main.py run --config $(RUN_CONFIG) $(ARGS)

test: assets
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy app pipeline gpu models storage ui config
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m "not soak" $(ARGS)

soak: assets
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -s -m soak tests/test_soak.py $(ARGS)

bench: assets
	$(BIN)/python main.py bench --config config/pipeline.yaml $(ARGS)

clean-cache:
	rm -rf .cache/assets
