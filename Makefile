# make demo: set up .venv and run the end-to-end digits compression demo.
# make test: set up .venv, lint, and run the whole test suite (CI runs this).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the pin (a CPU wheel); an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .

test: $(STAMP) lint
	$(PY) -m pytest -q

# The documentation site (mkdocs-material + mkdocstrings); warnings are errors. make test builds it too.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

demo: $(STAMP)
	$(PY) examples/prune_digits.py
	$(PY) examples/speedup_digits.py
	$(PY) examples/quantize_digits.py
	$(PY) examples/keras_digits.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
