"""Proxy keys with limits: a budget per day and per month, requests and tokens per minute,
a share of the requests in flight. Enforced before anything is paid, answered as OpenAI
answers (429 ``insufficient_quota`` or ``rate_limit_exceeded``, ``retry-after``), kept across
restarts, seen in ``/metrics``."""

from __future__ import annotations

import concurrent.futures
import json
import urllib.request

import openai
import pytest

from polars_embed.errors import ConfigurationError
from polars_embed.serve.accounts import KeyLimits
from polars_embed.serve.app import Serving
from polars_embed.serve.keys import Keys
from polars_embed.serve.proxy import ProxyConfig
from polars_embed.testing import EmbeddingServer

MODEL = "text-embedding-3-small"  # $0.02 per 1M tokens
PRICE = 0.02 / 1e6


@pytest.fixture
def upstream():
    with EmbeddingServer() as srv:
        yield srv


def serving(upstream, tmp_path, keys: Keys) -> Serving:
    return Serving(ProxyConfig(upstream_base_url=upstream.url, upstream_api_key="up", cache=tmp_path / "cache",
                               keys=keys))


def client(s: Serving, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url, api_key=key, max_retries=0, timeout=20)


def test_a_key_over_its_budget_is_refused_before_any_upstream_call_and_stays_so_after_a_restart(upstream, tmp_path):
    keys = Keys(tmp_path / "keys.json")
    small = keys.add("small", KeyLimits(usd_per_day=250 * PRICE))  # 250 tokens a day
    other = keys.add("other")
    texts = [f"text number {i} of a budget test" for i in range(60)]  # 8 tokens each
    with serving(upstream, tmp_path, Keys(tmp_path / "keys.json")) as s:
        spent = 0.0
        for i in range(0, 60, 10):
            try:
                r = client(s, small).embeddings.with_raw_response.create(model=MODEL, input=texts[i:i + 10])
                spent += float(r.headers["x-polars-embed-cost-usd"])
            except openai.RateLimitError as exc:
                assert exc.code == "insufficient_quota" and "per day" in exc.message
                assert int(exc.response.headers["retry-after"]) > 0
                break
        else:
            pytest.fail("the budget was never reached")
        billed, sent = upstream.billed_tokens, upstream.requests
        assert spent <= 250 * PRICE + 1e-12 and billed * PRICE == pytest.approx(spent)
        with pytest.raises(openai.RateLimitError):  # more than is left: refused before it is sent
            client(s, small).embeddings.create(model=MODEL, input=[t + " again" for t in texts[:10]])
        assert upstream.requests == sent
        assert client(s, other).embeddings.create(model=MODEL, input=texts).data  # other keys are served
        metrics = urllib.request.urlopen(urllib.request.Request(
            s.url.replace("/v1", "/metrics"), headers={"authorization": f"Bearer {other}"})).read().decode()
        assert 'polars_embed_proxy_key_spent_usd{key="small",period="day"}' in metrics
        before = upstream.requests
    with serving(upstream, tmp_path, Keys(tmp_path / "keys.json")) as s:  # restarted: the spending is kept
        with pytest.raises(openai.RateLimitError):
            client(s, small).embeddings.create(model=MODEL, input=[t + " restarted" for t in texts[:10]])
        assert upstream.requests == before
        hits = client(s, other).embeddings.with_raw_response.create(model=MODEL, input=texts[:5])
        assert hits.headers["x-polars-embed-cache"] == "HIT"


def test_requests_per_minute_and_the_share_in_flight_answer_429_with_retry_after(upstream, tmp_path):
    keys = Keys(tmp_path / "keys.json")
    paced = keys.add("paced", KeyLimits(rpm=2))
    narrow = keys.add("narrow", KeyLimits(concurrency=1))
    upstream.latency = 0.5
    with serving(upstream, tmp_path, Keys(tmp_path / "keys.json")) as s:
        client(s, paced).embeddings.create(model=MODEL, input=["a"])
        client(s, paced).embeddings.create(model=MODEL, input=["b"])
        with pytest.raises(openai.RateLimitError) as info:
            client(s, paced).embeddings.create(model=MODEL, input=["c"])
        assert info.value.code == "rate_limit_exceeded" and int(info.value.response.headers["retry-after"]) >= 1
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(client(s, narrow).embeddings.create, model=MODEL, input=[f"slow {i}"]) for i in range(2)]
            outcomes = [type(c.exception()).__name__ if c.exception() else "ok" for c in calls]
        assert sorted(outcomes) == ["RateLimitError", "ok"]


def test_limits_in_the_keys_file_are_checked(tmp_path):
    path = tmp_path / "keys.json"
    Keys(path).add("a", KeyLimits(usd_per_month=5.0, tpm=10_000))
    data = json.loads(path.read_text())
    assert data["limits"] == {"a": {"usd_per_month": 5.0, "tpm": 10000}}
    data["limits"]["a"]["rpm"] = -1
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match="rpm of proxy key 'a' must be a positive number"):
        Keys(path)
    data["limits"] = {"ghost": {"rpm": 5}}
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match="holds no key of"):
        Keys(path)


def test_a_budget_binds_only_where_there_is_a_price_and_settles_in_the_day_it_began(upstream, tmp_path):
    import calendar

    from polars_embed.serve.accounts import FileSpend, KeyBudget

    keys = Keys(tmp_path / "keys.json")
    capped = keys.add("capped", KeyLimits(usd_per_day=1.0))
    upstream.models["unpriced-model"] = 64
    with serving(upstream, tmp_path, Keys(tmp_path / "keys.json")) as s:
        with pytest.raises(openai.BadRequestError) as info:
            client(s, capped).embeddings.create(model="unpriced-model", input=["x"])
        assert "--price unpriced-model=USD_PER_1M" in info.value.message
        assert upstream.billed_tokens <= 2  # the size was asked (two tokens); nothing was embedded for the key

    spend = FileSpend(tmp_path / "spend.sqlite")
    midnight = calendar.timegm((2026, 1, 2, 0, 0, 0))
    budget = KeyBudget(spend, "k", KeyLimits(usd_per_day=1.0))
    budget.now = midnight - 1  # reserved at 23:59:59, answered after midnight
    budget.reserve(0.9)
    budget.settle(0.9, 0.0)
    assert spend.spent("k", midnight - 1)["day"] == 0.0 and spend.spent("k", midnight + 20)["day"] == 0.0


def test_spending_that_cannot_be_kept_sends_nothing_and_answers_503(upstream, tmp_path):
    keys = Keys(tmp_path / "keys.json")
    capped = keys.add("capped", KeyLimits(usd_per_day=1.0))
    with serving(upstream, tmp_path, Keys(tmp_path / "keys.json")) as s:
        keys.spend_path.write_bytes(b"not a database, " * 100)  # damaged under the running proxy
        with pytest.raises(openai.InternalServerError) as info:
            client(s, capped).embeddings.create(model=MODEL, input=["x"])
        assert info.value.status_code == 503 and "spending" in info.value.message
        assert upstream.requests == 0
