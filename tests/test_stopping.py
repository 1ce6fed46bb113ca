"""A run stops when asked: SIGTERM, SIGINT and SIGHUP end it within seconds, the ledger says
`interrupted`, and the rerun pays only for what was not stored. The figures are printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from polars_embed import ledger
from polars_embed.testing import EmbeddingServer

REPO = Path(__file__).parent.parent
EXE = str(Path(sys.executable).parent / "polars-embed")


def start(args: list[str], tmp_path: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([EXE, "run", *args, "--cache", str(tmp_path / "cache")], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OPENAI_API_KEY": "sk-test", **env})


def wait_for_rows(tmp_path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:
    """Until the run's ledger record shows rows done (so it is mid-run, past start-up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        path = tmp_path / "cache" / "ledger.sqlite"
        if path.exists() and (df := ledger(path)).height and df["rows"][-1] > 0:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not start")


def stop(proc: subprocess.Popen[str], sig: int, *, twice: bool = False) -> tuple[float, str]:
    began = time.monotonic()
    proc.send_signal(sig)
    if twice:
        time.sleep(0.3)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return time.monotonic() - began, err


@pytest.mark.slow
def test_sigterm_stops_a_local_model_run_within_seconds(tmp_path):
    out = tmp_path / "out.parquet"
    proc = start([str(REPO / "data" / "sample.parquet"), str(out), "--partition-rows", "1000"], tmp_path)
    wait_for_rows(tmp_path, proc)
    seconds, err = stop(proc, signal.SIGTERM)
    print(f"\nlocal model: SIGTERM to exit {seconds:.2f} s, exit code {proc.returncode}")
    assert proc.returncode == 143 and seconds < 5.0, err
    assert "stopping (SIGTERM): waiting for" in err and "Traceback" not in err
    assert ledger(tmp_path / "cache" / "ledger.sqlite")["status"][-1] == "interrupted"
    assert not out.exists()


@pytest.mark.slow
def test_sigterm_during_network_requests_waits_only_for_those_in_flight(tmp_path):
    texts = [f"a text to embed, number {i}" for i in range(3000)]
    pl.DataFrame({"text": texts}).write_parquet(tmp_path / "in.parquet")
    args = [str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model", "text-embedding-3-small",
            "--dimensions", "8", "--workers", "2", "--partition-rows", "500", "--quiet"]
    with EmbeddingServer(latency=1.0) as server:
        args += ["--base-url", server.url]
        proc = start(args, tmp_path)
        wait_for_rows(tmp_path, proc)
        seconds, err = stop(proc, signal.SIGTERM)
        first = set(server.texts_seen())
        print(f"\nnetwork (1 s a request): SIGTERM to exit {seconds:.2f} s, {len(first):,} texts paid before the stop")
        assert proc.returncode == 143 and seconds < 1.0 + 2.0, err
        assert ledger(tmp_path / "cache" / "ledger.sqlite")["status"][-1] == "interrupted"
        server.reset_log()
        rerun = subprocess.run([EXE, "run", *args, "--cache", str(tmp_path / "cache")], capture_output=True,
                               text=True, env={**os.environ, "OPENAI_API_KEY": "sk-test"}, check=False)
        second = set(server.texts_seen())
    print(f"rerun: {len(second):,} texts paid, {len(first & second)} of them paid before")
    assert rerun.returncode == 0, rerun.stderr
    assert not first & second and first | second == set(texts)  # each text paid once across both


def test_a_second_signal_abandons_the_requests_in_flight(tmp_path):
    pl.DataFrame({"text": [f"text {i}" for i in range(400)]}).write_parquet(tmp_path / "in.parquet")
    with EmbeddingServer(latency=20.0) as server:
        proc = start([str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model",
                      "text-embedding-3-small", "--dimensions", "8", "--base-url", server.url], tmp_path)
        deadline = time.monotonic() + 30
        while server.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        seconds, err = stop(proc, signal.SIGINT, twice=True)
    print(f"\nCtrl-C twice with requests of 20 s in flight: exit after {seconds:.2f} s")
    assert proc.returncode == 130 and seconds < 5.0, err
    assert "abandoned" in err and "paid but lost" in err
    assert ledger(tmp_path / "cache" / "ledger.sqlite")["status"][-1] == "interrupted"


def test_sighup_records_the_run_as_interrupted(tmp_path):
    pl.DataFrame({"text": [f"text {i}" for i in range(400)]}).write_parquet(tmp_path / "in.parquet")
    with EmbeddingServer(latency=0.5) as server:
        proc = start([str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--model",
                      "text-embedding-3-small", "--dimensions", "8", "--workers", "1", "--partition-rows", "50",
                      "--base-url", server.url], tmp_path)
        wait_for_rows(tmp_path, proc)
        _, err = stop(proc, signal.SIGHUP)
    assert proc.returncode == 129, err
    assert ledger(tmp_path / "cache" / "ledger.sqlite")["status"][-1] == "interrupted"
