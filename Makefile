# The two commands: `make demo` (train tiny → export → real Triton → chat) and `make test`.
# Each creates or updates .venv by itself; a second run only re-checks a stamp file.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv system-deps demo lint test bench clean

$(STAMP): requirements/bot.txt requirements/dev.txt requirements/triton.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip wheel
	$(PY) -m pip install -q -r requirements/dev.txt
	# Only the tritonserver binary of nvidia-pytriton is used; its numpy<2 pin is not wanted.
	$(PY) -m pip install -q --no-deps nvidia-pytriton==0.7.0
	# Triton's python backend runs model.py in its own env: the 2.51 stub needs numpy<2 there.
	test -x .venv-triton/bin/python || $(PYTHON) -m venv .venv-triton
	.venv-triton/bin/pip install -q -r requirements/triton.txt
	touch $(STAMP)

venv: $(STAMP)

# Debian's packages for the tests; needs root to install. Prometheus and promtool for the
# monitoring checks; the PostgreSQL server for the history and replica tests (tests/conftest.py
# starts a throwaway cluster, as the `postgres` user when run as root).
system-deps:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) || echo "note: install Debian's 'prometheus' package for the monitoring tests (they skip without it)"; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null) || echo "note: install Debian's 'postgresql' package for the PostgreSQL tests (they skip without it)"; }

demo: $(STAMP)
	$(PY) -m demo

# ruff (lint and format, pyproject.toml) and mypy (strict for contract/, bot/, serve/).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint system-deps
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) -m bench --shape small

clean:
	rm -rf $(VENV) .venv-triton output/* model_repository/*/ results/
