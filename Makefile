# The two commands: `make run` (the whole stack locally) and `make test` (the suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sluice-installed
PROTOS := $(wildcard protos/*/v1/*.proto)

.PHONY: run test model protos lint bench soak clean browser

run: model
	$(PY) -m services.cli up

test: model browser
	SLUICE_TEST_PG_DSN="$$(scripts/ensure_postgres.sh)" \
		SLUICE_TEST_REDIS_URL="$$(scripts/ensure_redis.sh)" $(PY) -m pytest -q

model: protos
	$(PY) -m services.cli model export

protos: services/pb/.generated

# The console's browser tests drive Debian's Chromium (installed when missing), never a browser
# that Playwright would download.
browser:
	scripts/ensure_chromium.sh

bench: model
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run

# Ten minutes of mixed traffic against a real stack, then memory, descriptors, open reservations
# and the ledger against what was sent (docs/RELIABILITY.md). Not part of `make test`.
# `make soak SOAK_ARGS="--duration 120 --postgres"` for a shorter run on PostgreSQL.
soak: model
	$(PY) -m bench.soak $(SOAK_ARGS)

lint: protos
	$(VENV)/bin/ruff check services tests bench scripts
	$(VENV)/bin/ruff format --check services tests bench scripts
	$(VENV)/bin/mypy services

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,export]'
	touch $@

# Stubs are generated once into one importable package, services.pb (git-ignored).
services/pb/.generated: $(PROTOS) $(STAMP)
	rm -rf services/pb
	$(PY) -m grpc_tools.protoc -Iservices/pb=protos --python_out=. --pyi_out=. \
		--grpc_python_out=. $(PROTOS)
	find services/pb -type d -exec touch {}/__init__.py \;
	touch $@

clean:
	rm -rf services/pb $(VENV)
