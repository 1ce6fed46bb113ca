#!/usr/bin/env bash
# Scheduled pipeline: embed data/sample.parquet into data/out/ with the offline model.
#
# Safe under cron: works from any directory, holds the output's lock (an overlapping run
# exits 4 and leaves the running one alone), replaces the output atomically, resumes from
# the cache after a crash, and logs JSON lines to data/out/pipeline.log.
# Extra arguments go to `polars-embed run` (e.g. --model text-embedding-3-small).
# Environment: POLARS_EMBED_OUT (default data/out); the cache is the one `make demo` and the
# command use ($POLARS_EMBED_CACHE, else the user cache directory), so after `make demo` a run
# finds every text there. POLARS_EMBED_EXE: the command to run (default: the checkout's
# .venv/bin/polars-embed, which `make demo` installs; the tests name their own environment's).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${POLARS_EMBED_OUT:-$repo/data/out}"
mkdir -p "$out"
exec "${POLARS_EMBED_EXE:-$repo/.venv/bin/polars-embed}" run "$repo/data/sample.parquet" "$out/sample_embedded.parquet" \
    --column text --log-json "$@" 2>>"$out/pipeline.log"
