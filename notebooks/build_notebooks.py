import nbformat as nbf

def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c) for c in cells]
    return n

setup_server = '''import os, tempfile
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter
import polars as pl

from polars_embed import Embedder, ledger
from polars_embed.testing import EmbeddingServer

# Offline: the project's local OpenAI-compatible server stands in for the API, with the
# API's token counting, so the costs below are what text-embedding-3-small would bill.
server = EmbeddingServer(log_texts=False).start()
# The cache: $POLARS_EMBED_CACHE, else a temporary directory removed by the last cell.
scratch = None if os.environ.get("POLARS_EMBED_CACHE") else tempfile.TemporaryDirectory(prefix="polars-embed-nb-")
cache_dir = Path(os.environ.get("POLARS_EMBED_CACHE") or scratch.name)
dollars = FuncFormatter(lambda value, _: f"${value:.6f}")  # axis labels in US dollars
df = pl.read_parquet("../data/sample.parquet")
df.shape'''

cleanup = '''server.stop()
if scratch is not None:
    scratch.cleanup()'''

nb1 = nb([
"md:# 1. What did it cost, what did the cache save?\n\nEmbed the sample twice with one `Embedder`. The first run pays for every distinct text once; the second finds everything in the cache.",
setup_server,
'''emb = Embedder("text-embedding-3-small", base_url=server.url, api_key="offline-demo", dimensions=256,
               cache=cache_dir / "nb1", source="notebook 1")
first = df.with_columns(emb.expr("text"))
first_stats = emb.last_stats
second = df.with_columns(emb.expr("text"))
second_stats = emb.last_stats
emb.stats()''',
'''runs = pl.DataFrame({
    "run": ["first", "second"],
    # the mean of the cache-hit column is the hit rate emb.stats() shows (there in percent)
    "hit rate (%)": [round(first["embedding_cache_hit"].mean() * 100, 1), round(second["embedding_cache_hit"].mean() * 100, 1)],
    "cost (USD)": [first["embedding_cost_usd"].sum(), second["embedding_cost_usd"].sum()],
    "saved by the cache (USD)": [first_stats.cost_saved_usd, second_stats.cost_saved_usd],
    "requests": [first_stats.requests, second_stats.requests],
})
runs''',
'''fig, ax = plt.subplots(figsize=(6, 3.5))
x = range(runs.height)
ax.bar([i - 0.2 for i in x], runs["cost (USD)"], width=0.4, label="paid")
ax.bar([i + 0.2 for i in x], runs["saved by the cache (USD)"], width=0.4, label="saved by the cache")
ax.set_xticks(list(x), runs["run"].to_list())
ax.set_xlabel("run over data/sample.parquet")
ax.set_ylabel("US dollars (text-embedding-3-small prices)")
ax.yaxis.set_major_formatter(dollars)
ax.set_title("Cost of each run and what the cache saved")
ax.legend()
plt.tight_layout()''',
"md:The per-row cost column sums to exactly what the server billed (usage x price):",
'''billed = server.billed_tokens * 0.02 / 1e6
print(f"billed by the server: ${billed:.6f}; sum of the first run's cost column: ${first['embedding_cost_usd'].sum():.6f}")
print(f"the second run: {second_stats.requests} requests, ${second['embedding_cost_usd'].sum():.6f} paid, "
      f"${second_stats.cost_saved_usd:.6f} saved by the cache")''',
"md:## Conclusion\n\nThe first run pays once for each distinct text (its repeats are already free); the second pays nothing and makes no request, and what the cache saved it is the whole first bill and more (the repeats). The cost column is the bill, row by row.",
cleanup,
])

nb2 = nb([
"md:# 2. The run ledger: cost and cache over time, where the money goes\n\nEvery call appends a record to the ledger (`ledger.sqlite` beside the cache). Here four runs over a growing share of the sample build a small history.",
setup_server,
'''emb = Embedder("text-embedding-3-small", base_url=server.url, api_key="offline-demo", dimensions=256,
               cache=cache_dir / "nb2", source="notebook 2")
shares = [0.25, 0.5, 1.0, 1.0]
outputs = [df.head(int(df.height * s)).with_columns(emb.expr("text")) for s in shares]
runs = ledger(cache_dir / "nb2" / "ledger.sqlite")
runs.select("started_at", "rows", "hit_rate", "tokens_billed", "cost_usd", "cost_saved_usd", "requests")''',
'''fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
run_no = list(range(1, runs.height + 1))
a.bar(run_no, runs["cost_usd"])
a.set_xticks(run_no); b.set_xticks(run_no)
a.set_xlabel("run"); a.set_ylabel("cost (US dollars)"); a.set_title("Cost per run"); a.yaxis.set_major_formatter(dollars)
b.plot(run_no, runs["hit_rate"] * 100, marker="o")
b.set_ylim(0, 105); b.set_xlabel("run"); b.set_ylabel("hit rate (%): rows with a vector not paid for"); b.set_title("Cache hit rate per run")
plt.tight_layout()''',
"md:## Token lengths\n\nLong-tailed, as real text is: most paragraphs are short, a few are long.",
'''full = outputs[-2]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(full["embedding_tokens"].to_numpy(), bins=60, log=True)
ax.set_xlabel("tokens per row (cl100k_base)"); ax.set_ylabel("rows (log scale)")
ax.set_title("Token-length distribution of the sample")
plt.tight_layout()
full["embedding_tokens"].describe()''',
"md:## Where the money goes\n\nThe first full run paid for the texts the earlier runs had not seen; over all runs, the documents (sources) with the most tokens:",
'''paid = pl.concat(outputs).filter(~pl.col("embedding_cache_hit"))
top = (paid.group_by("source").agg(pl.len().alias("texts paid"), pl.col("embedding_tokens").sum().alias("tokens"),
                                   pl.col("embedding_cost_usd").sum().alias("cost_usd"))
       .sort("tokens", descending=True).head(10))
top''',
"md:## Conclusion\n\nEach run pays only for texts no earlier run saw, so the bill falls as the cache fills and the last run is free; the ledger's costs add up to the server's bill. A handful of long documents account for most of the tokens: they are where a cheaper model, or truncation, would save the most.",
cleanup,
])

nb3 = nb([
"md:# 3. Using the vectors: nearest neighbours and near-duplicates\n\nThe offline model (`local:all-MiniLM-L6-v2`) gives real semantic vectors with no key and no network.",
'''import os, tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from polars_embed import Embedder

# The cache: $POLARS_EMBED_CACHE, else a temporary directory removed by the last cell.
scratch = None if os.environ.get("POLARS_EMBED_CACHE") else tempfile.TemporaryDirectory(prefix="polars-embed-nb-")
cache_dir = Path(os.environ.get("POLARS_EMBED_CACHE") or scratch.name)
df = pl.read_parquet("../data/sample.parquet").head(2000)
emb = Embedder("local:all-MiniLM-L6-v2", cache=cache_dir / "nb3", source="notebook 3")
out = df.with_columns(emb.expr("text"))
vectors = out["embedding"].to_numpy()  # (rows, 384), unit length
vectors.shape''',
"md:## Nearest neighbours of a query",
'''def nearest(query: str, k: int = 5) -> pl.DataFrame:
    q = emb.embed(pl.Series("text", [query]))["embedding"].to_numpy()[0]
    scores = vectors @ q
    best = np.argsort(-scores)[:k]
    return pl.DataFrame({"score": scores[best], "source": out["source"].gather(best), "text": out["text"].gather(best)})

hits = nearest("stop the program at a breakpoint and step through it")
hits''',
"md:## Near-duplicates\n\nPairs of different texts whose vectors are almost the same (cosine > 0.95): reworded boilerplate that exact dedupe cannot see.",
'''unique = out.unique("text", keep="first", maintain_order=True)
u = unique["embedding"].to_numpy()
sims = u @ u.T
np.fill_diagonal(sims, -1)
i, j = np.nonzero(np.triu(sims > 0.95))
pairs = pl.DataFrame({"score": sims[i, j], "a": unique["text"].gather(i), "b": unique["text"].gather(j)}).sort("score", descending=True)
print(f"{len(pairs)} pairs of different texts with cosine > 0.95; the closest:")
pairs.head(8).with_columns(pl.col("a", "b").str.slice(0, 70))  # the start of each text is enough to compare''',
'''fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(sims.max(axis=1), bins=50)
ax.axvline(0.95, color="red", linestyle="--", label="near-duplicate threshold")
ax.set_xlabel("cosine similarity to the nearest other text"); ax.set_ylabel("distinct texts")
ax.set_title("How close is each text to its nearest neighbour?")
ax.legend()
plt.tight_layout()''',
"md:## Conclusion\n\nThe vectors are unit length, so a dot product is the cosine. A query in plain words finds the paragraphs that mean the same (here, the debugger's breakpoint help), and near-duplicates that exact dedupe cannot see -- reworded boilerplate -- stand out above 0.95.",
'''if scratch is not None:
    emb.close()
    scratch.cleanup()''',
])

# Run from the repository root: python notebooks/build_notebooks.py
for name, n in [("01_cost_and_cache", nb1), ("02_ledger", nb2), ("03_use_the_vectors", nb3)]:
    nbf.write(n, f"notebooks/{name}.ipynb")
