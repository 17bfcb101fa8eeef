# hazard-gateway: every target bootstraps .venv on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench venv clean catalogs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hazard-gateway demo $(DEMO_ARGS)

# Bytecode is cached (__pycache__, ignored by git) even where the environment sets PYTHONDONTWRITEBYTECODE:
# without the cache every worker and every daemon a test starts compiles the whole tree again (7 s per process).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest

# Most tests wait on real peers (sockets, ptys, timers), so four workers fit two cores; a file stays on one
# worker (module-scoped servers). PYTEST_ARGS="-n 0" runs serially.
test: $(STAMP)
	$(PYTEST) -q -n 4 --dist loadfile $(PYTEST_ARGS)

# The fast lane: everything but the tests marked e2e (a daemon, a server or a broker, the command line as a child
# process, or seconds of waiting; see tests/conftest.py). Under 30 s on two cores.
test-fast: $(STAMP)
	$(PYTEST) -q -n 2 -m "not e2e" $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m hil.bench.run $(BENCH_ARGS)

# The zh_CN message catalog (gateway/i18n.py): extract the msgids of gateway/ and drivers/ (babel.cfg) into
# build/hazard_gateway.pot (not kept in git), merge them into the .po, compile the .mo the package ships; commit
# the .po and the .mo. tests/ops/test_i18n.py fails on a msgid without a translation or a stale .mo.
CATALOG := gateway/locale/zh_CN/LC_MESSAGES/hazard_gateway

catalogs: $(STAMP)
	mkdir -p build
	$(BIN)/pybabel extract --mapping-file babel.cfg --keywords _ --keywords gettext --keywords ngettext:1,2 --keywords Explained \
		--no-default-keywords --sort-by-file --width 120 --project hazard-gateway --version '' \
		--copyright-holder 'hazard-gateway authors' --msgid-bugs-address '' --charset UTF-8 \
		--output-file build/hazard_gateway.pot gateway drivers
	if test -f $(CATALOG).po; then \
		$(BIN)/pybabel update --input-file build/hazard_gateway.pot --output-file $(CATALOG).po --locale zh_CN \
			--domain hazard_gateway --no-fuzzy-matching --ignore-obsolete --width 120; \
	else \
		$(BIN)/pybabel init --input-file build/hazard_gateway.pot --output-file $(CATALOG).po --locale zh_CN \
			--domain hazard_gateway; \
	fi
	$(BIN)/pybabel compile --input-file $(CATALOG).po --output-file $(CATALOG).mo --locale zh_CN --domain hazard_gateway

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
