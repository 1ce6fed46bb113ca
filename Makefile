# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

# Embeds the shipped sample offline (no key, no network) and prints the cost/cache summary.
# Run it twice: the second run is all cache hits. The cache lives in .cache/ here.
demo: $(STAMP)
	POLARS_EMBED_CACHE=$${POLARS_EMBED_CACHE:-.cache/polars-embed} $(BIN)/polars-embed run data/sample.parquet data/out/sample_embedded.parquet --column text

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data/out
