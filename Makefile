# The two commands: `make run` (the demo site) and `make test` (everything CI checks).
# Both do their own set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEBS := mosquitto victoria-metrics mbpoll chromium
RUN_SECONDS ?= 180

.PHONY: run test lint typecheck debs venv bench clean lean-check

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests need (real servers and an independent Modbus client).
debs:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v victoria-metrics >/dev/null || [ -x /usr/bin/victoria-metrics ] || missing="$$missing victoria-metrics"; \
	command -v mbpoll >/dev/null || missing="$$missing mbpoll"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	      || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else \
	    echo "missing Debian packages:$$missing (run as root or install them)"; \
	  fi; \
	fi

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy -p powerctl

test: venv debs lint typecheck
	@set +e; $(BIN)/python -m pytest -q -p no:cacheprovider --durations=25; rc=$$?; \
	if [ $$rc = 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

run: venv
	$(BIN)/powerctl demo examples/demo-site.toml --seconds $(RUN_SECONDS)

# The edge daemon's install from a wheel, without the [sim] extra (needs PyPI; README, Layout).
lean-check:
	bash .ci/lean-check

bench: venv
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
