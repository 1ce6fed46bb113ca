"""The test server answers as OpenAI's API does: every body it sends, success or error, is
valid under the schemas of OpenAI's published spec (``fixtures/openai_spec_schemas.json``,
from github.com/openai/openai-openapi), driven with the real ``openai`` client and, for the
bodies that client would never send, with raw HTTP.

https://platform.openai.com/docs/api-reference/embeddings/create
https://platform.openai.com/docs/api-reference/models
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import numpy as np
import openai
import pytest
import tiktoken

from polars_embed.testing import EmbeddingServer
from polars_embed.testing.vectors import TOKENIZER, server_vector

SCHEMAS = json.loads((Path(__file__).parent / "fixtures" / "openai_spec_schemas.json").read_text())["schemas"]
MODEL = "text-embedding-3-small"
ENC = tiktoken.get_encoding(TOKENIZER)
INVALID_INPUT = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
OUTSIDE_VOCABULARY = ([[200000]], [100256], [1, -2])  # integers to the spec: the tokenizer refuses them


def conforms(body: dict, schema: str) -> dict:
    jsonschema.Draft202012Validator(SCHEMAS[schema]).validate(body)
    return body


def spec_refuses(request: dict) -> str | None:
    """The spec validator's own message for a request body, or None if the spec allows it."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SCHEMAS["CreateEmbeddingRequest"])
                                             .iter_errors(request))
    return None if error is None else error.message


@pytest.fixture(scope="module")
def server():
    with EmbeddingServer() as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="test", max_retries=0)


def call(server, path: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    """A raw request: a POST of ``body`` (JSON-encoded unless bytes), or a GET without one."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data,
                                 headers={"authorization": "Bearer test", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def embed(server, body: dict) -> dict:
    """A 200 of the raw API, checked against CreateEmbeddingResponse (base64 vectors decoded
    first: the spec types ``embedding`` as floats only, though the API answers base64 as a string)."""
    status, answer = call(server, "/embeddings", body)
    assert status == 200, answer
    assert spec_refuses(body) is None
    if body.get("encoding_format") == "base64":
        for item in answer["data"]:
            item["embedding"] = np.frombuffer(base64.b64decode(item["embedding"]), "<f4").tolist()
    return conforms(answer, "CreateEmbeddingResponse")


def vectors(answer: dict) -> np.ndarray:
    return np.array([d["embedding"] for d in sorted(answer["data"], key=lambda d: d["index"])], dtype=np.float32)


# -- the four shapes of `input`, float and base64 ------------------------------------------------

@pytest.mark.parametrize("fmt", ["float", "base64"])
def test_string_list_of_strings_flat_and_nested_token_arrays(server, fmt):
    ids = ENC.encode("tokens as ids")
    cases = [("one text", ["one text"], 2), (["a b", "c d e"], ["a b", "c d e"], 5),
             (ids, [ids], len(ids)), ([ids, ids[:1]], [ids, ids[:1]], len(ids) + 1)]
    for given, each, billed in cases:
        answer = embed(server, {"model": MODEL, "input": given, "dimensions": 64, "encoding_format": fmt})
        np.testing.assert_array_equal(vectors(answer), np.stack([server_vector(MODEL, 64, x) for x in each]))
        assert answer["usage"] == {"prompt_tokens": billed, "total_tokens": billed}


def test_the_openai_client_reads_every_shape(server, client):
    ids = ENC.encode("tokens as ids")
    for given in ["one text", ["a b", "c d e"], ids, [ids, ids[:1]]]:
        got = client.embeddings.create(model=MODEL, input=given, dimensions=32)  # base64 on the wire
        assert got.usage.prompt_tokens == got.usage.total_tokens > 0 and len(got.data[0].embedding) == 32
    floats = client.embeddings.create(model=MODEL, input="x", encoding_format="float")
    assert len(floats.data[0].embedding) == 1536


def test_a_token_array_of_a_text_has_the_texts_vector(server):
    """Callers who split a text with tiktoken and callers who send the text agree, as with the API."""
    text = "日本語の文章 and more"
    ids = ENC.encode(text)
    as_tokens, as_text = (vectors(embed(server, {"model": MODEL, "input": x, "dimensions": 16})) for x in (ids, text))
    np.testing.assert_array_equal(as_tokens, as_text)
    np.testing.assert_array_equal(as_tokens[0], server_vector(MODEL, 16, ids))


def test_a_token_array_cut_inside_a_character_has_a_vector_of_its_own(server):
    ids = ENC.encode("日本語の文章")
    cut = ids[:3]  # 日, 本 and the first two of 語's three bytes
    decoded = ENC.decode(cut)
    assert decoded.endswith("\ufffd") and ENC.encode_ordinary(decoded) != cut
    server.reset_log()
    answer = embed(server, {"model": MODEL, "input": [cut, ids[3:]], "dimensions": 16})
    got = vectors(answer)
    np.testing.assert_array_equal(got, np.stack([server_vector(MODEL, 16, cut), server_vector(MODEL, 16, ids[3:])]))
    for text in (decoded, "日本語", "日本", ENC.decode(ids[3:])):
        assert not np.array_equal(got[0], server_vector(MODEL, 16, text))
        assert not np.array_equal(got[1], server_vector(MODEL, 16, text))
    assert answer["usage"]["prompt_tokens"] == len(ids)  # billed as sent, not as the decoded text re-encodes
    assert server.log[-1].texts == [decoded, ENC.decode(ids[3:])]


def test_token_arrays_that_decode_alike_keep_their_own_vectors(server):
    """"hello" split as "hel" + "lo" is not tiktoken's encoding of "hello": its own vector, and
    deterministic."""
    split = ENC.encode("hel") + ENC.encode("lo")
    assert ENC.decode(split) == "hello" and ENC.encode("hello") != split
    first, again = (vectors(embed(server, {"model": MODEL, "input": [split], "dimensions": 8})) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[0], server_vector(MODEL, 8, split))
    assert not np.array_equal(first[0], server_vector(MODEL, 8, "hello"))


def test_an_input_of_8192_tokens_is_taken_and_8193_is_not(server):
    ids = ENC.encode("word " * 9000)
    answer = embed(server, {"model": MODEL, "input": [ids[:8192]], "dimensions": 8})
    assert answer["usage"]["prompt_tokens"] == 8192
    status, error = call(server, "/embeddings", {"model": MODEL, "input": ids[:8193], "dimensions": 8})
    assert status == 400 and "maximum context length is 8192 tokens" in conforms(error, "ErrorResponse")["error"]["message"]


# -- what the API refuses, in its words ---------------------------------------------------------

REFUSED = [
    pytest.param({"input": [[200000]]}, INVALID_INPUT, id="token id outside cl100k_base"),
    pytest.param({"input": [100256]}, INVALID_INPUT, id="token id in a hole of the vocabulary"),
    pytest.param({"input": [1, -2]}, INVALID_INPUT, id="negative token id"),
    pytest.param({"input": [[]]}, INVALID_INPUT, id="empty token array"),
    pytest.param({"input": []}, INVALID_INPUT, id="empty list"),
    pytest.param({"input": ["text", [1, 2]]}, INVALID_INPUT, id="strings and token arrays mixed"),
    pytest.param({"input": [1, [2]]}, INVALID_INPUT, id="ids and token arrays mixed"),
    pytest.param({"input": [[1, "2"]]}, INVALID_INPUT, id="a string in a token array"),
    pytest.param({"input": {"text": "x"}}, INVALID_INPUT, id="an object"),
    pytest.param({"input": "x", "dimensions": "256"}, "'256' is not of type 'integer' - 'dimensions'", id="dimensions as a string"),
    pytest.param({"input": "x", "dimensions": True}, "True is not of type 'integer' - 'dimensions'", id="dimensions true"),
    pytest.param({"input": "x", "dimensions": None}, "None is not of type 'integer' - 'dimensions'", id="dimensions null"),
    pytest.param({"input": "x", "dimensions": 0}, "0 is less than the minimum of 1 - 'dimensions'", id="dimensions 0"),
    pytest.param({"input": "x", "encoding_format": "int8"}, "'int8' is not one of ['float', 'base64'] - 'encoding_format'", id="int8"),
    pytest.param({"input": "x", "encoding_format": None}, "None is not of type 'string' - 'encoding_format'", id="encoding_format null"),
    pytest.param({"input": "x", "user": 5}, "5 is not of type 'string' - 'user'", id="user as a number"),
    pytest.param({"input": "x", "model": ["m"]}, "['m'] is not valid under any of the given schemas - 'model'", id="model as a list"),
    pytest.param({"input": "x", "temperature": 1}, "Unrecognized request argument supplied: temperature", id="unknown field"),
    pytest.param({"input": "x", "top_k": 1, "stream": True}, "Unrecognized request arguments supplied: top_k, stream", id="unknown fields"),
    pytest.param({"input": "x", "model": None}, "you must provide a model parameter", id="no model"),
    pytest.param({"model": MODEL}, "'input' is a required property", id="no input"),
]


@pytest.mark.parametrize(("fields", "message"), REFUSED)
def test_bad_requests_get_a_400_in_openais_words(server, fields, message):
    body = {"model": MODEL, **fields}
    status, answer = call(server, "/embeddings", body)
    assert status == 400
    assert conforms(answer, "ErrorResponse")["error"] == {"message": message, "type": "invalid_request_error",
                                                            "param": None, "code": None}
    spec_says = spec_refuses(body)
    if fields.get("input") in OUTSIDE_VOCABULARY:
        assert spec_says is None
    elif " - '" in message:  # the API's validator: the spec's words, then the field
        assert message == f"{spec_says} - '{message.rpartition(' - ')[2][1:-1]}'"
    else:
        assert spec_says is not None


def test_the_openai_client_raises_bad_request_for_them(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=[[200000]])
    assert info.value.status_code == 400 and "'$.input' is invalid" in info.value.message
    with pytest.raises(openai.BadRequestError, match="'256' is not of type 'integer' - 'dimensions'"):
        client.embeddings.create(model=MODEL, input="x", extra_body={"dimensions": "256"})


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000],
                         ids=["not json", "not an object", "nested too deep"])
def test_a_body_that_is_not_a_request_is_a_400_not_a_dropped_connection(server, body):
    status, answer = call(server, "/embeddings", body)
    assert status == 400 and conforms(answer, "ErrorResponse")["error"]["message"].startswith("We could not parse")


def test_an_unknown_model_is_a_404(server):
    status, answer = call(server, "/embeddings", {"model": "no-such-model", "input": "x"})
    assert status == 404 and conforms(answer, "ErrorResponse")["error"]["code"] == "model_not_found"


def test_a_bug_in_the_server_is_a_500_in_openais_shape(server, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "handle", broken)
    status, answer = call(server, "/embeddings", {"model": MODEL, "input": "x"})
    assert status == 500 and conforms(answer, "ErrorResponse")["error"]["type"] == "server_error"
    assert "RuntimeError: a bug" in capsys.readouterr().err  # and the traceback is not lost


# -- /v1/models ---------------------------------------------------------------------------------

def test_models_are_listed_and_retrieved_as_the_spec_says(server, client):
    status, listing = call(server, "/models")
    assert status == 200
    conforms(listing, "ListModelsResponse")
    assert [m["id"] for m in listing["data"]] == list(server.models)
    for card in listing["data"]:
        conforms(card, "Model")
        status, one = call(server, f"/models/{card['id']}")
        assert status == 200 and conforms(one, "Model") == card
    assert [m.id for m in client.models.list()] == list(server.models)
    got = client.models.retrieve(MODEL)
    assert (got.id, got.object, got.owned_by, got.created) == (MODEL, "model", "system", 1705948997)


def test_an_unknown_model_id_is_a_404_model_not_found(server, client):
    status, answer = call(server, "/models/gpt-nothing")
    assert status == 404
    assert conforms(answer, "ErrorResponse")["error"] == {"message": "The model 'gpt-nothing' does not exist",
                                                           "type": "invalid_request_error", "param": "model",
                                                           "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nothing")
