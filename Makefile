# Two commands on a fresh machine: `make demo` (the local swarm) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyTorch's CPU-only wheels when the machine has no NVIDIA GPU (the default index's torch is the CUDA build, with
# gigabytes of NVIDIA packages); the default index when the machine has one, or when the CPU index is unreachable.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test bench install clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first, alone: anything that depends on it would otherwise pull the CUDA build.
	@torch="$$(grep -E '^torch==' requirements.txt)"; \
	if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/python -c "import urllib.request as u; \
	    u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
	  echo "no NVIDIA GPU: $$torch from PyTorch's CPU-only index"; \
	  $(BIN)/pip install --quiet --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple "$$torch"; \
	else \
	  echo "$$torch from the default index"; \
	  $(BIN)/pip install --quiet "$$torch"; \
	fi
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

clean:
	rm -rf $(VENV) runs
