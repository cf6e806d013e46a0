# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
# On a CPU-only machine torch must come first, pinned, so no resolver pulls a multi-GB CUDA wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-gpu wheel clean redis-server

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf .avo-demo-cache
	TRITON_INTERPRET=$${TRITON_INTERPRET:-$$($(PY) -c "import torch; print(0 if torch.cuda.is_available() else 1)")} AVO_CACHE_DIR=$${AVO_CACHE_DIR:-.avo-demo-cache} $(PY) -m avo_inductor.demo

# One pytest worker per core (pytest-xdist): the interpreter-bound CPU suite took 13.4 minutes serially on CI's two
# cores, 6.8 in parallel. Every test has its own kernel store (tests/conftest.py), so workers share nothing.
# Static checks first (seconds): the layer contract, lint and types of the package, then the tests.
# The remote-cache tests start a real redis-server: installed from Debian's packages when missing (root only;
# otherwise a note, and those tests skip saying why).
test: install redis-server
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check avo_inductor
	$(VENV)/bin/mypy avo_inductor
	$(PY) -m pytest -q -n auto --dist loadgroup

REDIS_APT := apt-get install -y --no-install-recommends redis-server >/dev/null
redis-server:
	@command -v redis-server >/dev/null || { [ "$$(id -u)" = 0 ] && { $(REDIS_APT) 2>&1 || { apt-get update >/dev/null && $(REDIS_APT); }; }; } \
		|| echo "note: redis-server is missing and cannot be installed here (needs root and apt-get); the remote-cache tests will skip"

test-gpu: install
	$(PY) -m pytest -q -m gpu

# The wheel carries the shipped kernel bundles: setup.py's build step copies cache/<gpu>/ to avo_inductor/shipped/.
wheel: install
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) .avo-demo-cache build *.egg-info
