# Two commands on a fresh machine: `make demo` (the local swarm) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyTorch's CPU-only wheels when the machine has no NVIDIA GPU (the default index's torch is the CUDA build, with
# gigabytes of NVIDIA packages); the default index when the machine has one, or when the CPU index is unreachable.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test bench bench-baselines install clean

# torch as requirements.txt pins it, into the virtualenv whose bin/ is $(1): PyTorch's CPU-only index when the
# machine has no NVIDIA GPU and that index answers, else the default index.
define install_torch
@torch="$$(grep -E '^torch==' requirements.txt)"; \
if ! command -v nvidia-smi >/dev/null 2>&1 && $(1)/python -c "import urllib.request as u; \
    u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
  echo "no NVIDIA GPU: $$torch from PyTorch's CPU-only index"; \
  $(1)/pip install --quiet --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple "$$torch"; \
else \
  echo "$$torch from the default index"; \
  $(1)/pip install --quiet "$$torch"; \
fi
endef

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, alone: anything that depends on it would otherwise pull the CUDA build.
	$(call install_torch,$(BIN))
	$(BIN)/pip install --quiet -r requirements.txt
	# the package itself, editable: `import mapreduce` and the console scripts work from any directory
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mapreduce swarm

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m bench

# The other systems `python -m bench` compares with, in their own virtualenv so that they never enter the project's
# requirements: torch exactly as requirements.txt pins it (CPU build, as above), then hivemind. The bench runs
# bench/hivemind_round.py under $(BASELINES)/bin/python and reports "skipped" when this venv is absent.
BASELINES := .venv-baselines
HIVEMIND ?= hivemind==1.1.12

$(BASELINES)/.installed: requirements.txt
	test -x $(BASELINES)/bin/python || $(PY) -m venv $(BASELINES)
	$(call install_torch,$(BASELINES)/bin)
	$(BASELINES)/bin/pip install --quiet "$(HIVEMIND)"
	$(BASELINES)/bin/python -c "import hivemind; print('hivemind', hivemind.__version__)"
	touch $@

bench-baselines: $(BASELINES)/.installed

clean:
	rm -rf $(VENV) $(BASELINES) runs
