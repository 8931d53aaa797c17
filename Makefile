# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and install the
# pinned stack first. torch is pinned in the same pip command as everything else so nothing can pull a
# CUDA build (the CPU wheel torch==2.13.0 is what this machine serves).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[dev]"
	$(PY) tools/torchvision_cpu.py install  # CPU torch + PyPI's CUDA torchvision: see docs/vlm.md
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/taxonomist train --config configs/demo.yaml --output runs/demo

test: install
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n 2 $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/attributes.py

clean:
	rm -rf $(VENV) runs .pytest_cache
