# Two entry points for users: `make demo` and `make test`. Both create the project
# virtual environment (.venv) on first use and are idempotent afterwards.
# `make bench` / `make bench-quick`: every benchmark in sequence (JSON in outputs/bench/).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ms_optim-installed
PYTEST_ARGS ?=

.PHONY: demo test test-all docs bench bench-quick clean-venv

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test,examples,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_digits.py

# Default suite (CPU, < ~15 min on 2 cores). Tests marked `slow` are excluded here.
test: $(STAMP)
	$(PY) -m pytest tests -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

docs: $(STAMP)
	$(MAKE) -C docs html doctest PYTHON=$(abspath $(PY))

# Benchmarks, one after the other (they time things: never run two at once). Each prints its
# numbers and what it leaves out, and writes outputs/bench/<name>.json (large_batch also a PNG).
# `make bench`: default ("full") settings, tens of minutes on 2 CPU cores; `make bench-quick`:
# every script with --quick, a few minutes. bench_lars_peers.py needs torch, timm, jax and optax,
# which must not go into .venv: it runs with PEERS_PY (a python of a separate venv, see the
# script's docstring) when that exists, and is skipped with a message otherwise.
BENCH_SCRIPTS := bench_lars_step bench_lars_e2e bench_thor_step profile_thor_refresh bench_thor_sink \
                 thor_checkpoint_size bench_large_batch bench_thor_accuracy
PEERS_PY ?= $(firstword $(wildcard /work/peers-venv/bin/python))

define run_benchmarks
	@mkdir -p outputs/bench
	@set -e; for s in $(BENCH_SCRIPTS); do \
	  echo "== benchmarks/$$s.py $(1)"; \
	  PYTHONPATH=$(CURDIR) $(PY) benchmarks/$$s.py $(1); \
	done
	@if [ -n "$(PEERS_PY)" ] && [ -x "$(PEERS_PY)" ]; then \
	  echo "== benchmarks/bench_lars_peers.py $(1) (with $(PEERS_PY))"; \
	  $(PEERS_PY) benchmarks/bench_lars_peers.py $(1); \
	else \
	  echo "== skipping benchmarks/bench_lars_peers.py: no peer venv (PEERS_PY unset or not" \
	       "executable; it needs torch, timm, jax, optax, see the script's docstring)"; \
	fi
	@ls -l outputs/bench
endef

bench: $(STAMP)
	$(call run_benchmarks,)

bench-quick: $(STAMP)
	$(call run_benchmarks,--quick)

clean-venv:
	rm -rf $(VENV)

# Headless Chromium (Debian's package) for tests/test_docs_render.py; needs root / apt.
.PHONY: docs-browser
docs-browser:
	apt-get update && apt-get install -y --no-install-recommends chromium fonts-noto-cjk
