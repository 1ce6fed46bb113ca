"""Reliability suite: figures each test measures go to $POLARS_EMBED_RELIABILITY_REPORT
(JSON lines) when set; docs/reliability.md quotes them."""

from __future__ import annotations

import json
import os

import pytest


@pytest.fixture
def report(request):
    def record(**figures: object) -> None:
        path = os.environ.get("POLARS_EMBED_RELIABILITY_REPORT")
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps({"test": request.node.name, **figures}) + "\n")

    return record
