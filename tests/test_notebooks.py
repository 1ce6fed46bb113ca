"""The notebooks run offline top to bottom, and compute what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def run(name: str, tmp_path: Path, monkeypatch) -> tuple[dict, object]:
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    last = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    return json.loads(last[-1].text), nb


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_cost_and_cache_notebook(tmp_path, monkeypatch):
    checks, nb = run("01_cost_and_cache.ipynb", tmp_path, monkeypatch)
    assert checks["second_hit_rate"] == 1.0 and checks["first_hit_rate"] < 0.5
    assert checks["first_cost"] == pytest.approx(checks["billed_cost"])
    assert checks["second_cost"] == 0 and checks["second_requests"] == 0
    assert checks["second_saved"] > checks["first_cost"]  # the repeats of the first run are saved too
    assert images(nb) == 1


def test_ledger_notebook(tmp_path, monkeypatch):
    checks, nb = run("02_ledger.ipynb", tmp_path, monkeypatch)
    assert checks["runs"] == 4
    assert checks["hit_rates"][-1] == 1.0 and checks["hit_rates"][0] < 0.5
    assert checks["ledger_cost"] == pytest.approx(checks["billed_cost"])
    assert checks["top_tokens"] == checks["max_tokens_in_paid"] > 0
    assert images(nb) == 2


def test_vectors_notebook(tmp_path, monkeypatch):
    checks, nb = run("03_use_the_vectors.ipynb", tmp_path, monkeypatch)
    assert checks["rows"] == 2000
    assert 0.999 < checks["norm_min"] <= checks["norm_max"] < 1.001
    assert any("break" in t for t in checks["top_texts"][:2])  # the debugger's breakpoint help
    assert checks["near_duplicate_pairs"] > 0 and checks["pair_min_score"] > 0.95
    assert checks["pairs_distinct_texts"]
    assert images(nb) == 1
