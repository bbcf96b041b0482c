# Two entry points for users: `make demo` and `make test`. Both create the project
# virtual environment (.venv) on first use and are idempotent afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ms_optim-installed
PYTEST_ARGS ?=

.PHONY: demo test test-all docs bench clean-venv

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

clean-venv:
	rm -rf $(VENV)

# Headless Chromium (Debian's package) for tests/test_docs_render.py; needs root / apt.
.PHONY: docs-browser
docs-browser:
	apt-get update && apt-get install -y --no-install-recommends chromium fonts-noto-cjk
