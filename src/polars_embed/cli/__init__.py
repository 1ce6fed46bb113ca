"""The ``polars-embed`` command: one module per command group; ``main.py`` only wires them."""

from __future__ import annotations

from .main import build_parser, main

__all__ = ["build_parser", "main"]
