# Set-up, demo and tests. Both main targets work on a bare Debian machine as
# root and are idempotent: system packages are installed only when missing,
# and the virtual environment is rebuilt only when pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# pyfuse3 has no wheel, so pip builds it against libfuse3 with gcc.
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv git
# Extra pytest arguments, e.g. make test PYTEST_ARGS='-m "not fuse" -x'.
PYTEST_ARGS ?=

.PHONY: demo test lint system-packages venv bench bench-quick bench-install

# The demo's pipeline needs scikit-learn, from the demo extra.
DEMO_STAMP := $(VENV)/.demo-installed

demo: venv $(DEMO_STAMP)
	scripts/demo.sh $(VENV)/bin/expfs

$(DEMO_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev,demo]'
	touch $(DEMO_STAMP)

test: lint
	scripts/run-pytest.sh $(VENV)/bin/python $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Bytecode is compiled here because some machines set PYTHONDONTWRITEBYTECODE,
# and then every expfs command would recompile the editable package's
# modules at start-up (measured: tens of milliseconds per command).
venv: system-packages $(STAMP)
	$(VENV)/bin/python -m compileall -q expfs cli bench >/dev/null

# The benchmark suite (python -m bench). A full run needs about 45 GiB free
# and takes hours (47 minutes with BENCH_ARGS=--large-reps 1 on 2 busy
# cores); bench-quick is a smoke run of a minute or two. Both install DVC
# into bench/work/dvc-venv on first use.
#
# They measure expfs as users install it: `pip install .` into an
# environment of its own, BENCH_VENV, rebuilt from the working tree at each
# run. The editable install in $(VENV) adds an import hook that every
# program start pays (measured: `python -c pass` took 39 ms there against
# 16 ms in a plain environment on 2 busy cores), which would be most of a
# cache-hit restore's time.
BENCH_VENV := bench/work/venv
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

bench: bench-install
	$(BENCH_VENV)/bin/python -m bench $(BENCH_ARGS)

bench-quick: bench-install
	$(BENCH_VENV)/bin/python -m bench --quick $(BENCH_ARGS)

bench-install: system-packages $(BENCH_STAMP)
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall .

$(BENCH_STAMP): pyproject.toml
	@[ -x $(BENCH_VENV)/bin/python ] || $(PYTHON) -m venv $(BENCH_VENV) || { rm -rf $(BENCH_VENV); exit 1; }
	$(BENCH_VENV)/bin/pip install -q --disable-pip-version-check '.[dev,bench]'
	touch $(BENCH_STAMP)

system-packages:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'ok installed' || \
	    missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing </dev/null; \
	fi

$(STAMP): pyproject.toml
	@[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)
