# Two entry points: `make test` and `make demo`. Both create .venv and install everything on first use.
# torch comes from PyTorch's CPU wheel index (a few hundred MB, not the multi-GB CUDA build a plain `pip install torch`
# gives on Linux); where that index cannot be reached, the plain pin is installed instead (from PyPI or a local mirror).
# A GPU user overrides the torch pin, e.g. `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
PYTHON    ?= python3
TORCH     ?= torch==2.13.0
CPU_INDEX ?= https://download.pytorch.org/whl/cpu
ifeq ($(origin TORCH),file)
INSTALL_TORCH = $(PY) -m pip install --quiet --retries 1 --timeout 20 $(TORCH) --index-url $(CPU_INDEX) \
	|| { echo "$(CPU_INDEX) cannot be reached: installing $(TORCH) from the default index"; \
	     $(PY) -m pip install --quiet $(TORCH); }
else
INSTALL_TORCH = $(PY) -m pip install --quiet $(TORCH)
endif
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test measure demo experiment clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(INSTALL_TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The tests that reproduce a published figure (minutes each): the realistic simulator's difficulty band.
measure: $(STAMP)
	$(PY) -m pytest -q -m measurement

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# The main job on built-in data: simulate 8 people, train a VAE and an ID-conditioned LDM, sample, evaluate.
# Writes runs/demo/report.md and runs/demo/samples_grid.png. DEVICE=cuda runs the 128x128 full-size profile.
DEVICE ?= cpu
demo: $(STAMP)
	$(PY) scripts/demo.py --device $(DEVICE)

# The full few-shot protocol (docs/augmentation.md): 32 simulated people of the realistic profile (24 base, 8 novel),
# 3 generator seeds, 20 shot draws, k = 1, 2, 4, 8, at 32x32 on the CPU, one worker process per core. Resumable: run
# it again and it continues where it stopped. Writes runs/fewshot/fewshot.{json,md,png}.
PROCESSES ?= 2
experiment: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) fewshot.py --out runs/fewshot --processes $(PROCESSES)
