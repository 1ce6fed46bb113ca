"""The proxy answers as OpenAI's API does where clients branch on it: token arrays of any
integers, a blank input, 8,192 tokens, 404 for an unknown model, ``param: null`` for a
request-level refusal; and no client can take it from the others (sizes, a failing cache)."""

from __future__ import annotations

import concurrent.futures
import json
import time
import urllib.request

import numpy as np
import openai
import pytest
from proxies import starter

from polars_embed.serve.keys import Keys
from polars_embed.testing import EmbeddingServer

MODEL = "text-embedding-3-small"
JAPANESE = [9080, 22656, 45918, 252, 16144, 83125]  # "日本語の文章" in cl100k_base


@pytest.fixture
def upstream():
    with EmbeddingServer(models={"listed-custom-model": 384}) as srv:
        yield srv


@pytest.fixture
def start(upstream, tmp_path):
    yield from starter(upstream, tmp_path)


def client(url: str, key: str = "any") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=20)


def post(url: str, body: dict, key: str = "any") -> tuple[int, dict, dict]:
    req = urllib.request.Request(url + "/embeddings", data=json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_token_arrays_of_any_integers_are_embedded_as_the_upstream_embeds_them(start, upstream):
    s = start()
    cut = [JAPANESE[2:3], JAPANESE[:3], [220], JAPANESE]  # mid-character twice, blank, a whole text
    direct = client(upstream.url).embeddings.create(model=MODEL, input=cut, dimensions=64)
    r = client(s.url).embeddings.with_raw_response.create(model=MODEL, input=cut, dimensions=64)
    through = r.parse()
    for a, b in zip(direct.data, through.data, strict=True):
        assert np.array_equal(np.float32(a.embedding), np.float32(b.embedding))
    assert through.usage.prompt_tokens == direct.usage.prompt_tokens == 1 + 3 + 1 + 6
    assert r.headers["x-polars-embed-cache"] == "MISS"
    sent = [t for rec in upstream.ok_records()[1:] for t in rec.texts]
    assert len(sent) == 4  # each once; the whole text as tokens or text, the rest as tokens
    # the cut arrays have keys of their own; the whole one shares the text's entry; " " is [220]
    for again, same in (([JAPANESE[2:3]], [0]), ([" ", "日本語の文章"], [2, 3])):
        r = client(s.url).embeddings.with_raw_response.create(model=MODEL, input=again, dimensions=64)
        assert r.headers["x-polars-embed-cache"] == "HIT"
        assert [d.embedding for d in r.parse().data] == [through.data[i].embedding for i in same]
    status, body, _ = post(s.url, {"model": MODEL, "input": ["ok", ""]})
    assert status == 400 and body["error"]["message"] == "'$.input[1]' is invalid: an input cannot be an empty string."


def test_an_input_of_8192_tokens_is_accepted_and_8193_is_not(start, upstream):
    s = start()
    text = "a" + " a" * 8191  # 8,192 tokens
    r = client(s.url).embeddings.create(model=MODEL, input=[text], dimensions=32)
    assert r.usage.prompt_tokens == 8192
    with pytest.raises(openai.BadRequestError) as info:
        client(s.url).embeddings.create(model=MODEL, input=["fine", " ", text + " a"], dimensions=32)
    assert info.value.code == "context_length_exceeded" and "8192" in info.value.message
    assert "'$.input[2]'" in info.value.message  # its place in the request, whichever way it was embedded


def test_another_models_token_arrays_go_as_they_came(start, upstream):
    """A model behind an OpenAI-compatible server has a vocabulary of its own: its arrays are
    never read as cl100k text (the array for "hello world" is not that text's entry there)."""
    s = start()
    hello = [15339, 1917]  # "hello world" in cl100k_base
    for model, shared in ((MODEL, True), ("listed-custom-model", False)):
        client(s.url).embeddings.create(model=model, input=[hello])
        r = client(s.url).embeddings.with_raw_response.create(model=model, input=["hello world"])
        assert r.headers["x-polars-embed-cache"] == ("HIT" if shared else "MISS")
    status, body, _ = post(s.url, {"model": "listed-custom-model", "input": ["a", "   "]})
    assert status == 400 and "only whitespace" in body["error"]["message"]


def test_unknown_models_are_404_model_not_found_and_listed_ones_are_sized_once(start, upstream):
    s = start()
    with pytest.raises(openai.NotFoundError) as info:
        client(s.url).embeddings.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found" and info.value.body["param"] is None
    with pytest.raises(openai.NotFoundError):
        client(s.url).embeddings.create(model="no-such-model", input="x", dimensions=8)  # the upstream says so
    r = client(s.url).embeddings.create(model="listed-custom-model", input=["one", "two"])
    assert len(r.data[0].embedding) == 384
    probes = len(upstream.ok_records())
    client(s.url).embeddings.create(model="listed-custom-model", input=["three"])
    assert len(upstream.ok_records()) == probes + 1  # the size was asked once


def test_a_request_level_refusal_has_param_null_and_is_not_counted_as_served(start, upstream):
    s = start()
    for model, dims in (("text-embedding-ada-002", 64), (MODEL, 4000)):
        status, body, _ = post(s.url, {"model": model, "input": ["a", "b"], "dimensions": dims})
        assert status == 400 and body["error"]["param"] is None, body
    assert upstream.requests == 0
    metrics = urllib.request.urlopen(s.url.replace("/v1", "/metrics")).read().decode()
    assert 'polars_embed_proxy_inputs_total{key="anonymous",result="miss"}' not in metrics


def test_the_default_size_and_the_explicit_default_size_are_fetched_once(start, upstream):
    upstream.latency = 0.3
    s = start()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(client(s.url).embeddings.create, model=MODEL, input=["same text"])
        b = pool.submit(client(s.url).embeddings.create, model=MODEL, input=["same text"], dimensions=1536)
        assert a.result().data[0].embedding == b.result().data[0].embedding
    assert upstream.requests == 1


def test_a_key_trying_every_size_never_keeps_another_from_being_served(start, upstream, tmp_path):
    keys = Keys(tmp_path / "keys.json")
    greedy, other = keys.add("greedy"), keys.add("other")
    s = start(keys=keys)
    for dims in range(1, 32):
        client(s.url, greedy).embeddings.create(model=MODEL, input="x", dimensions=dims)
    assert len(s.proxy.slots) <= 8  # its share, its own oldest given back
    for model, dims in ((MODEL, None), ("text-embedding-3-large", 256), (MODEL, 64)):
        extra = {"dimensions": dims} if dims else {}
        r = client(s.url, other).embeddings.create(model=model, input="y", **extra)
        assert len(r.data[0].embedding) == (dims or 1536)


def test_a_shared_cache_that_fails_is_a_503_at_once_never_a_500(start, upstream):
    from polars_embed.testing.redis import RedisServer

    with RedisServer() as redis:
        s = start(cache=redis.url)
        assert client(s.url).embeddings.create(model=MODEL, input=["kept"], dimensions=16).data
        redis.stop()
        for body in ({"model": MODEL, "input": ["kept"], "dimensions": 16}, {"model": MODEL, "input": ["new"]}):
            t = time.perf_counter()
            status, answer, headers = post(s.url, body)
            took = time.perf_counter() - t
            assert status == 503 and answer["error"]["type"] == "server_error", answer
            assert "retry-after" in {k.lower() for k in headers}
            assert took < 3.0, took
        redis.start()
        assert client(s.url).embeddings.create(model=MODEL, input=["kept"], dimensions=16).data


def test_every_answer_of_the_proxy_is_valid_under_openais_spec(start, upstream, tmp_path):
    """Successes and errors alike, against the schemas of OpenAI's published spec."""
    import base64
    from pathlib import Path

    import jsonschema

    schemas = json.loads((Path(__file__).parent / "fixtures" / "openai_spec_schemas.json").read_text())["schemas"]
    keys = Keys(tmp_path / "keys.json")
    key = keys.add("k")
    s = start(keys=keys)
    bodies = [
        {"model": MODEL, "input": "one text"},
        {"model": MODEL, "input": ["two", "texts"], "dimensions": 8, "encoding_format": "base64"},
        {"model": MODEL, "input": JAPANESE[2:4]},
        {"model": MODEL, "input": [JAPANESE, [220]], "dimensions": 8},
        {"model": MODEL, "input": []},
        {"model": MODEL, "input": [""]},
        {"model": MODEL, "input": "x", "encoding_format": "int8"},
        {"model": MODEL, "input": "x", "dimensions": "256"},
        {"model": MODEL, "input": "x", "temperature": 1},
        {"model": "no-such-model", "input": "x"},
        {"model": "text-embedding-ada-002", "input": "x", "dimensions": 8},
        {"model": MODEL, "input": [[200000]]},
        {"model": MODEL, "input": "a" + " a" * 8200},
    ]
    statuses = []
    for body in bodies:
        status, answer, _ = post(s.url, body, key=key)
        statuses.append(status)
        if status == 200:
            if body.get("encoding_format") == "base64":
                for item in answer["data"]:
                    item["embedding"] = np.frombuffer(base64.b64decode(item["embedding"]), "<f4").tolist()
            jsonschema.Draft202012Validator(schemas["CreateEmbeddingResponse"]).validate(answer)
        else:
            jsonschema.Draft202012Validator(schemas["ErrorResponse"]).validate(answer)
    status, answer, _ = post(s.url, bodies[0], key="not a key")
    jsonschema.Draft202012Validator(schemas["ErrorResponse"]).validate(answer)
    assert statuses == [200, 200, 200, 200, 400, 400, 400, 400, 400, 404, 400, 400, 400] and status == 401
    with urllib.request.urlopen(urllib.request.Request(s.url + "/models", headers={"authorization": f"Bearer {key}"})) as r:
        jsonschema.Draft202012Validator(schemas["ListModelsResponse"]).validate(json.loads(r.read()))
