# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pip on these machines warns about every local index it skips; keep real errors visible.
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: install postgres browser haproxy demo test lint unit integration fuzz bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(QUIET)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]' $(QUIET)
	$(PY) -c "import ncloud, cluster, jobs, serve, ray, torch"
	touch $(STAMP)

install: $(STAMP)

# The local cluster's front door (cluster/control/front.py): Debian's HAProxy. Without it
# the server still runs, with Serve's own proxy on the API's port (slower).
haproxy:
	@command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -q haproxy >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q haproxy >/dev/null; }; }; } || \
	  { echo "ncloud's front needs HAProxy: apt-get install haproxy"; exit 1; }

demo: install
	@$(MAKE) -s haproxy || echo "warning: no HAProxy; the demo runs behind Serve's own proxy"
	$(PY) -m examples.demo

# The strict run keeps its own cache: its results must not leak into the other runs'.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy ncloud cluster jobs serve
	$(VENV)/bin/mypy tests bench examples
	$(VENV)/bin/mypy --strict --cache-dir .mypy_cache/strict ncloud

# The tests run the store on a real PostgreSQL server too (tests/pg.py starts it); Debian's
# package where it is missing and we may install it.
postgres: install
	@$(PY) -c "from tests.pg import server_bin; raise SystemExit(server_bin() is None)" || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    apt-get install -y -q postgresql >/dev/null; } || \
	  { echo "the tests need a PostgreSQL server: apt-get install postgresql"; exit 1; }

# The dashboard's tests drive a real browser: Debian's Chromium and its driver (no browser
# download at install time).
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    { apt-get install -y -q chromium chromium-driver >/dev/null || \
	      { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; }; } || \
	  { echo "the tests need Chromium: apt-get install chromium chromium-driver"; exit 1; }

test: install lint postgres browser haproxy
	$(PY) -m pytest -q -p no:cacheprovider --durations=50 tests

unit: install postgres
	$(PY) -m pytest -q tests/unit

integration: install browser haproxy
	$(PY) -m pytest -q tests/integration

# schemathesis against a live server, longer than the suite's run and with a new seed each time.
fuzz: install
	NCLOUD_FUZZ_EXAMPLES=$${NCLOUD_FUZZ_EXAMPLES:-100} NCLOUD_FUZZ_SEED=$${NCLOUD_FUZZ_SEED:-$$RANDOM} \
	  $(PY) -m pytest -q -s tests/integration/test_fuzz.py

bench: install haproxy
	$(PY) -m bench.serve
	$(PY) -m bench.loader
	$(PY) -m bench.train
	$(PY) -m bench.queue
	$(PY) -m bench.sandbox
	$(PY) -m bench.upload

clean:
	rm -rf $(VENV) build *.egg-info
