# The two commands: `make quickstart` and `make test`. Both create or refresh .venv first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test quickstart lint bench clean

# Reinstall only when the dependency list or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@# torch must be the pinned CPU build: nothing may have pulled another one or CUDA wheels.
	$(BIN)/python -c "import torch,sys; v=torch.__version__; sys.exit(0 if v.startswith('2.13.0') else 'torch '+v+' is not 2.13.0')"
	@! $(BIN)/pip list --disable-pip-version-check 2>/dev/null | grep -iE '^(nvidia-|torchvision|timm) ' || (echo "unwanted GPU/vision packages installed" && false)
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(BIN)/python -m pytest

quickstart: venv
	$(BIN)/ace-ray quickstart --workload workloads/quickstart.yaml

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: venv
	$(BIN)/python benchmarks/synth_throughput.py

clean:
	rm -rf $(VENV) data mlruns runs
