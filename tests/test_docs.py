"""The README says what the code does: its example runs as printed, every command is listed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from polars_embed.cli import build_parser

README = (Path(__file__).parent.parent / "README.md").read_text()


def block_after(marker: str) -> str:
    m = re.search(rf"<!-- example: {marker} -->\s*```\w+\n(.*?)```", README, re.DOTALL)
    assert m, marker
    return m.group(1)


def test_readme_starts_with_the_two_setup_commands():
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1)
    assert first_block.splitlines()[0].startswith("make demo")
    assert first_block.splitlines()[1].startswith("make test")


def test_readme_python_example_runs_as_printed(server, tmp_path):
    env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "test",
           "POLARS_EMBED_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", block_after("python")], capture_output=True, text=True, env=env,
                          check=True)
    assert proc.stdout == block_after("output")


def test_every_cli_command_is_in_the_readme():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"polars-embed {name}" in README
        for action in p._actions:
            if action.dest == "action":
                for child in action.choices:
                    assert f"polars-embed {name} {child}" in README
            for opt in action.option_strings:
                if opt.startswith("--") and opt not in ("--help",):
                    assert opt in README, f"{name} {opt} is not documented"


def test_readme_reuse_example_runs(server, tmp_path):
    """The second example, from a directory holding the shipped sample."""
    import shutil

    (tmp_path / "data").mkdir()
    shutil.copy(Path(__file__).parent.parent / "data" / "sample.parquet", tmp_path / "data" / "sample.parquet")
    env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "test",
           "POLARS_EMBED_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", block_after("reuse")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, check=True)
    assert "last run" in proc.stdout and "total" in proc.stdout
    assert (tmp_path / "data" / "out" / "sample_3small.parquet").exists()  # the demo's output is left alone


def demo_command() -> list[str]:
    """What `make demo` runs."""
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()
    m = re.search(r"^demo:.*\n\t\$\(BIN\)/(polars-embed run [^\n]+)", makefile, re.MULTILINE)
    assert m, "the demo target"
    return m.group(1).split()


def cli_transcript() -> tuple[list[str], str]:
    """The README's `polars-embed run` command and what it prints (``test_walkthrough.py`` runs
    it as written on the shipped sample after `make demo`, as a reader does)."""
    m = re.search(r"```console\n\$ (polars-embed run [^\n]+)\n(.*?)```", README, re.DOTALL)
    assert m, "console block"
    return m.group(1).split(), m.group(2)


def normal_transcript(text: str) -> str:
    """A transcript without what is this machine's: the seconds and the cache directory."""
    text = re.sub(r"in [\d.]+ s\b", "in N s", text)
    return re.sub(r"(  cache {10})\S+", r"\1DIR", text)


def test_readme_server_command_starts_the_server():
    import socket

    m = re.search(r"python -m polars_embed\.testing\.server --port (\d+) &", README)
    assert m
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "polars_embed.testing.server", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert f"http://127.0.0.1:{port}/v1" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(10)
