"""The README and pipelines/, followed in one shell in the order a reader does: `make demo`,
the Python examples against the local server (with the README's exports), the command line,
the scheduled pipeline. What the demo left (its cache, its output) serves every later step."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
from test_docs import README, block_after, cli_transcript, demo_command, normal_transcript

REPO = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


def readme_exports() -> dict[str, str]:
    """The variables the README's shell block exports, as that shell would hold them."""
    m = re.search(r"^export (.+)$", README, re.MULTILINE)
    assert m, "the README exports the server's address"
    return dict(pair.split("=", 1) for pair in m.group(1).split())


def test_the_readme_in_one_shell_keeps_the_demos_cache_and_output(tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(REPO / "data" / "sample.parquet", tmp_path / "data" / "sample.parquet")
    # a reader's machine: no POLARS_EMBED_CACHE, the user cache directory under their home
    shell = {k: v for k, v in os.environ.items() if k not in ("POLARS_EMBED_CACHE", "OPENAI_BASE_URL", "OPENAI_API_KEY")}
    shell["XDG_CACHE_HOME"] = str(tmp_path / "home-cache")

    def run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, env=shell, cwd=tmp_path, check=True, **kw)

    demo_out = tmp_path / "data" / "out" / "sample_embedded.parquet"
    run([str(BIN / "polars-embed"), *demo_command()[1:]])  # make demo
    demo = pl.read_parquet(demo_out)

    m = re.search(r"^python -m (polars_embed\.testing\.server) --port (\d+) &$", README, re.MULTILINE)
    assert m
    server = subprocess.Popen([sys.executable, "-m", m.group(1), "--port", "0"], stdout=subprocess.PIPE, text=True,
                              env=shell)
    try:
        url = re.search(r"http://\S+/v1", server.stdout.readline()).group(0)  # the port this machine had free
        shell.update({**readme_exports(), "OPENAI_BASE_URL": url})
        printed = run([sys.executable, "-c", block_after("python")]).stdout  # as printed: test_docs.py
        assert printed.startswith("shape: (4, 5)") and "embedding_cost_usd" in printed
        assert "last run" in run([sys.executable, "-c", block_after("reuse")]).stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)

    # the command line, after the Python section, in the same shell: all hits
    command, expected = cli_transcript()
    cli = run([str(BIN / "polars-embed"), *command[1:]])
    assert normal_transcript(cli.stderr + cli.stdout) == normal_transcript(expected)  # as printed

    # the scheduled pipeline: the same cache, every text found there
    out = tmp_path / "pipeline-out"
    pipeline = subprocess.run(["bash", str(REPO / "pipelines" / "embed_sample.sh")], capture_output=True, text=True,
                              env={**shell, "POLARS_EMBED_OUT": str(out), "POLARS_EMBED_EXE": str(BIN / "polars-embed")},
                              check=False)
    assert pipeline.returncode == 0, (out / "pipeline.log").read_text()
    events = [json.loads(line) for line in (out / "pipeline.log").read_text().splitlines()]
    summary = next(e for e in events if e.get("event") == "summary")
    assert summary["new_texts"] == 0 and summary["hits"] == 6000, summary

    after = pl.read_parquet(demo_out)  # the demo's output: the same vectors, not the test server's
    assert after["embedding"].dtype == demo["embedding"].dtype == pl.Array(pl.Float32, 384)
    np.testing.assert_array_equal(after["embedding"].to_numpy(), demo["embedding"].to_numpy())
