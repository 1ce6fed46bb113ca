"""Answers decoded all at once (providers/b64.py, openai.parse_body): the same vectors as one
at a time, and every damaged answer refused, with or without pybase64."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest

from polars_embed.providers.b64 import decode_rows, encoded_width
from polars_embed.providers.openai import MalformedResponse, parse_body


def body(vectors: np.ndarray, *, order: list[int] | None = None, fmt: str = "base64", edit=None) -> bytes:
    items = [{"object": "embedding", "index": i,
              "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode() if fmt == "base64" else v.tolist()}
             for i, v in enumerate(vectors)]
    items = [items[i] for i in order] if order is not None else items
    if edit is not None:
        edit(items)
    return json.dumps({"object": "list", "data": items, "model": "m", "usage": {"prompt_tokens": 3}}).encode()


@pytest.mark.parametrize("dim", [256, 1536, 3072, 5])
@pytest.mark.parametrize("fmt", ["base64", "float"])
def test_vectors_come_back_exactly_in_index_order_whatever_the_answers_order(dim, fmt):
    vectors = np.random.default_rng(dim).standard_normal((7, dim)).astype(np.float32)
    for order in (None, [3, 0, 6, 1, 5, 2, 4]):
        out, billed = parse_body(body(vectors, order=order, fmt=fmt), 7, dim)
        assert billed == 3 and np.array_equal(out, vectors)


def _set(i: int, key: str, value: object):
    def edit(items: list[dict]) -> None:
        items[i][key] = value
    return edit


def _replace(i: int, old: str, new: str, count: int = 1):
    def edit(items: list[dict]) -> None:
        items[i]["embedding"] = items[i]["embedding"].replace(old, new, count)
    return edit


@pytest.mark.parametrize("dim", [256, 1536])
@pytest.mark.parametrize(("edit", "says"), [
    (_set(2, "index", 1), "repeated index"),
    (_set(2, "index", 9), "bad or repeated index"),
    (_set(2, "index", "x"), "malformed"),
    (_set(4, "embedding", "AAAAAAAAAAA="), "dimensions"),
    (_set(4, "embedding", "AAAA"), "malformed"),
    (_set(4, "embedding", [0.5] * 3), "dimensions"),
])
def test_a_damaged_answer_is_refused_naming_what_is_wrong(dim, edit, says):
    vectors = np.random.default_rng(0).standard_normal((6, dim)).astype(np.float32)
    with pytest.raises(MalformedResponse, match=says):
        parse_body(body(vectors, edit=edit), 6, dim)


@pytest.mark.parametrize("dim", [256, 1536])
@pytest.mark.parametrize("edit", [
    _replace(3, "A", "!"),  # outside the alphabet
    _replace(3, "A", "="),  # padding inside
    _replace(3, "A", "é"),  # not ASCII
    _replace(3, "A", " "),  # what a lenient decoder skips: the vector would shift
])
def test_a_vector_with_a_character_that_is_not_base64_is_never_read_shifted(dim, edit):
    vectors = np.ones((6, dim), dtype=np.float32)  # every float is 0x3f800000: plenty of "A"
    with pytest.raises(MalformedResponse):
        parse_body(body(vectors, edit=edit), 6, dim)


def test_decode_rows_refuses_anything_but_strings_of_one_vector():
    one = base64.b64encode(np.ones(5, "<f4").tobytes()).decode()
    assert encoded_width(5) == len(one) == 28 and one.endswith("D8=")
    assert decode_rows([one, one], 5).shape == (2, 5)
    assert decode_rows([one, one[:-1] + "A"], 5) is None  # 21 bytes' worth: padding is not optional
    assert decode_rows([one, 12], 5) is None
    assert decode_rows([one, one + "AAAA"], 5) is None
    assert decode_rows([], 5).shape == (0, 5)


def test_without_pybase64_the_same_answers_are_read_and_the_same_damage_refused():
    code = """
import sys; sys.modules["pybase64"] = None
import base64, numpy as np
from polars_embed.providers import b64
v = np.random.default_rng(1).standard_normal((5, 1536)).astype("<f4")
s = [base64.b64encode(r.tobytes()).decode() for r in v]
assert b64.decode.__doc__.startswith("Lenient")
assert np.array_equal(b64.decode_rows(s, 1536), v)
assert b64.decode_rows(s[:2] + [s[2].replace("A", " ", 1)] + s[3:], 1536) is None
assert b64.decode_rows(s[:2] + [s[2].replace("A", "=", 1)] + s[3:], 1536) is None
w = [base64.b64encode(r[:256].tobytes()).decode() for r in v]
assert np.array_equal(b64.decode_rows(w, 256), v[:, :256])
assert b64.decode_rows(w[:1] + [w[1].replace("A", "!", 1)], 256) is None
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("dim", [256, 1536])
@pytest.mark.parametrize("shape", ["pretty", "model named embedding", "escaped slashes", "key in usage", "key twice"])
def test_vectors_sliced_out_of_any_valid_body_are_the_items_own(dim, shape):
    """The base64 strings are cut out of the body rather than parsed: whatever valid JSON a
    server writes, each item gets its own vector, or the body is parsed whole."""
    vectors = np.random.default_rng(dim).standard_normal((5, dim)).astype(np.float32)
    vectors[:, 0] = 0.5  # some "/" in every base64 string
    items = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
             for i, v in enumerate(vectors)][::-1]
    doc = {"object": "list", "data": items, "model": "embedding" if shape == "model named embedding" else "m",
           "usage": {"prompt_tokens": 3, "total_tokens": 3}}
    if shape == "key in usage":
        doc["usage"]["embedding"] = "AAAA"
    text = json.dumps(doc, indent=2 if shape == "pretty" else None)
    if shape == "escaped slashes":
        assert "/" in text
        text = text.replace("/", "\\/")  # valid JSON: what some servers write
    if shape == "key twice":  # the last one counts, for json as for us
        text = text.replace('"index": 4,', '"embedding": "AAAA", "index": 4,')
    out, billed = parse_body(text.encode(), 5, dim)
    assert billed == 3 and np.array_equal(out, vectors)
