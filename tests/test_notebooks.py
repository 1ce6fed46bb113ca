"""The notebooks run offline top to bottom, and compute what they claim: the test runs
each in a kernel, then reads its variables with one more cell (not saved in the notebook)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def run(name: str, probe: str, tmp_path: Path, monkeypatch) -> tuple[dict, object]:
    """Execute the notebook, then ``probe`` (an expression over its variables) in its kernel."""
    monkeypatch.setenv("POLARS_EMBED_CACHE", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint(_json.dumps({probe}))"))
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    last = [o for o in nb.cells[-1].outputs if o.output_type == "stream"]
    return json.loads(last[-1].text), nb


def images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def ends_with_a_conclusion(nb) -> bool:
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    return markdown[-1].source.startswith("## Conclusion")


def test_cost_and_cache_notebook(tmp_path, monkeypatch):
    checks, nb = run("01_cost_and_cache.ipynb", """{
        "first_hit_rate": first["embedding_cache_hit"].mean(), "second_hit_rate": second["embedding_cache_hit"].mean(),
        "first_cost": first["embedding_cost_usd"].sum(), "second_cost": second["embedding_cost_usd"].sum(),
        "billed_cost": billed, "second_requests": second_stats.requests, "second_saved": second_stats.cost_saved_usd}""",
        tmp_path, monkeypatch)
    assert checks["second_hit_rate"] == 1.0 and checks["first_hit_rate"] < 0.5
    assert checks["first_cost"] == pytest.approx(checks["billed_cost"])
    assert checks["second_cost"] == 0 and checks["second_requests"] == 0
    assert checks["second_saved"] > checks["first_cost"]  # the repeats of the first run are saved too
    assert images(nb) == 1 and ends_with_a_conclusion(nb)


def test_ledger_notebook(tmp_path, monkeypatch):
    checks, nb = run("02_ledger.ipynb", """{
        "runs": runs.height, "hit_rates": runs["hit_rate"].to_list(), "ledger_cost": runs["cost_usd"].sum(),
        "billed_cost": server.billed_tokens * 0.02 / 1e6, "top_tokens": int(top["tokens"][0]),
        "max_tokens_in_paid": int(paid.filter(pl.col("source") == top["source"][0])["embedding_tokens"].sum())}""",
        tmp_path, monkeypatch)
    assert checks["runs"] == 4
    assert checks["hit_rates"][-1] == 1.0 and checks["hit_rates"][0] < 0.5
    assert checks["ledger_cost"] == pytest.approx(checks["billed_cost"])
    assert checks["top_tokens"] == checks["max_tokens_in_paid"] > 0
    assert images(nb) == 2 and ends_with_a_conclusion(nb)


def test_vectors_notebook(tmp_path, monkeypatch):
    checks, nb = run("03_use_the_vectors.ipynb", """{
        "rows": out.height, "norm_min": float(np.linalg.norm(vectors, axis=1).min()),
        "norm_max": float(np.linalg.norm(vectors, axis=1).max()), "top_texts": hits["text"].to_list(),
        "near_duplicate_pairs": len(pairs), "pair_min_score": float(pairs["score"].min()) if len(pairs) else None,
        "pairs_distinct_texts": all(a != b for a, b in zip(pairs["a"], pairs["b"]))}""", tmp_path, monkeypatch)
    assert checks["rows"] == 2000
    assert 0.999 < checks["norm_min"] <= checks["norm_max"] < 1.001
    assert any("break" in t for t in checks["top_texts"][:2])  # the debugger's breakpoint help
    assert checks["near_duplicate_pairs"] > 0 and checks["pair_min_score"] > 0.95
    assert checks["pairs_distinct_texts"]
    assert images(nb) == 1 and ends_with_a_conclusion(nb)


def test_a_notebook_run_without_a_cache_setting_leaves_nothing_behind(tmp_path, monkeypatch):
    """Run as a reader would (no $POLARS_EMBED_CACHE): its temporary cache is removed."""
    import tempfile

    monkeypatch.delenv("POLARS_EMBED_CACHE", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None
    try:
        nb = nbformat.read(NOTEBOOKS / "01_cost_and_cache.ipynb", as_version=4)
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        tempfile.tempdir = None
    assert not list(tmp_path.glob("polars-embed-nb-*"))
