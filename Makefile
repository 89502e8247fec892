# SimAM-Viz: `make run` starts the product, `make test` runs every check. Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501

.PHONY: install system-deps run test lint clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Debian packages the tests need (emoji font for the scene generator); skipped when present.
system-deps:
	bash scripts/system-deps.sh

run: install
	$(VENV)/bin/streamlit run app/streamlit_app.py --server.port $(PORT)

lint: install
	$(VENV)/bin/ruff check simam_viz app tests scripts benchmarks

test: install system-deps lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
