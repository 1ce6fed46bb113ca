"""Regenerate data/sample.parquet: real English text that ships with Python, no download.

Paragraphs of the pydoc_data help topics and of standard-library docstrings (modules,
classes, functions, methods), in a fixed order. Docstrings repeat naturally (inherited
methods, "Return self==value.", shared boilerplate), so the sample has real duplicates.

    python data/make_sample.py [--rows 6000]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
from pathlib import Path

import polars as pl

MODULES = [
    "builtins", "os", "os.path", "sys", "re", "json", "csv", "collections", "itertools", "functools",
    "pathlib", "datetime", "decimal", "fractions", "statistics", "random", "string", "textwrap",
    "argparse", "logging", "subprocess", "threading", "queue", "socket", "http.client", "urllib.parse",
    "email.message", "sqlite3", "zipfile", "tarfile", "shutil", "tempfile", "hashlib", "hmac", "secrets",
    "typing", "dataclasses", "enum", "abc", "contextlib", "inspect", "ast", "dis", "pickle", "copy",
    "heapq", "bisect", "array", "struct", "io", "codecs", "unicodedata", "difflib", "pprint", "calendar",
    "time", "uuid", "base64", "binascii", "gzip", "bz2", "lzma", "configparser", "unittest", "doctest",
    "asyncio", "concurrent.futures", "multiprocessing", "selectors", "signal", "weakref", "gc", "math",
    "cmath", "operator", "numbers", "xml.etree.ElementTree", "html", "html.parser", "mimetypes", "locale",
]


def paragraphs(text: object) -> list[str]:
    if not isinstance(text, str) or not text:
        return []
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(text)):
        para = " ".join(para.split())
        if len(para.split()) >= 3 and not para.startswith((">>>", "...")):
            out.append(para)
    return out


def docstrings() -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        rows += [(name, p) for p in paragraphs(module.__doc__)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or callable(obj)):
                continue
            rows += [(f"{name}.{attr}", p) for p in paragraphs(getattr(obj, "__doc__", None))]
            if inspect.isclass(obj):
                for meth, fn in sorted(vars(obj).items()):
                    if callable(fn) and (not meth.startswith("_") or meth in ("__eq__", "__hash__", "__init__", "__repr__")):
                        rows += [(f"{name}.{attr}.{meth}", p) for p in paragraphs(getattr(fn, "__doc__", None))]
    return rows


def topics() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics as t

    return [(f"pydoc:{k}", p) for k in sorted(t) for p in paragraphs(t[k])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--out", default=str(Path(__file__).with_name("sample.parquet")))
    args = parser.parse_args()
    rows = (topics()[: args.rows // 3] + docstrings())[: args.rows]
    df = pl.DataFrame({"source": [s for s, _ in rows], "text": [t for _, t in rows]}).with_row_index("id")
    df.write_parquet(args.out, compression="zstd")
    print(f"{df.height} rows, {df['text'].n_unique()} distinct texts -> {args.out} ({Path(args.out).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
