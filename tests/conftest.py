from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest

from polars_embed import Embedder
from polars_embed.testing import EmbeddingServer

API_KEY = "sk-test-0123456789"
_HOME: str | None = None


def pytest_configure(config):
    """The suite never touches the user's home: HOME and the XDG directories point at a
    temporary one for this process and every process it starts (onnxruntime writes a device
    id under $XDG_CACHE_HOME on import, a Jupyter kernel its profile under $HOME)."""
    global _HOME
    _HOME = tempfile.mkdtemp(prefix="polars-embed-tests-home-")
    for name, sub in (("HOME", ""), ("XDG_CACHE_HOME", ".cache"), ("XDG_CONFIG_HOME", ".config"),
                      ("XDG_DATA_HOME", ".local/share"), ("IPYTHONDIR", ".ipython")):
        os.environ[name] = os.path.join(_HOME, sub) if sub else _HOME


def pytest_unconfigure(config):
    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_home(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache or ledger: the default directory is a
    temporary one (a test that needs another sets its own)."""
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path_factory.mktemp("default-cache")))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("matplotlib")))  # the notebooks' font cache


@pytest.fixture
def server():
    with EmbeddingServer() as srv:
        yield srv


@pytest.fixture
def make_embedder(server, tmp_path):
    """An Embedder pointed at the local server with a fresh cache; kwargs override."""
    made: list[Embedder] = []

    def make(**kwargs: Any) -> Embedder:
        kwargs.setdefault("base_url", server.url)
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("cache", tmp_path / "cache")
        kwargs.setdefault("dimensions", 64)
        kwargs.setdefault("timeout", 5.0)
        emb = Embedder(kwargs.pop("model", "text-embedding-3-small"), **kwargs)
        made.append(emb)
        return emb

    yield make
    for emb in made:
        emb.close()
