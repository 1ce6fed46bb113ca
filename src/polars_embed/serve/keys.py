"""Proxy keys: clients present one, the proxy keeps only its SHA-256 hash in a JSON file."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .accounts import KeyLimits

if TYPE_CHECKING:
    import os


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Keys:
    """Proxy keys by name, stored as SHA-256 hashes in a JSON file, with each key's limits
    (``accounts.KeyLimits``): ``{"keys": {name: hash}, "limits": {name: {"usd_per_day": ..}}}``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text()) if self.path.exists() else {"keys": {}}
            self.hashes: dict[str, str] = dict(data["keys"])
            limits = dict(data.get("limits") or {})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            msg = f"cannot read the proxy keys file {self.path} ({exc}); it holds {{\"keys\": {{name: hash}}}}"
            raise ConfigurationError(msg) from None
        unknown = sorted(set(limits) - set(self.hashes))
        if unknown:
            msg = f"{self.path} sets limits for {', '.join(map(repr, unknown))}, which it holds no key of"
            raise ConfigurationError(msg)
        self.limits = {name: KeyLimits.from_dict(name, value) for name, value in limits.items()}

    @property
    def spend_path(self) -> Path:
        """Where the keys' spending is kept (beside the keys file)."""
        return self.path.with_name(f"{self.path.stem}.spend.sqlite")

    def add(self, name: str, limits: KeyLimits | None = None) -> str:
        """A new key for ``name`` (returned once, only its hash is written)."""
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            msg = f"a key name is letters, digits, '-' and '_', got {name!r}"
            raise ConfigurationError(msg)
        key = "pe-" + secrets.token_urlsafe(32)
        self.hashes[name] = hash_key(key)
        if limits is not None:
            self.limits[name] = limits
        self._save()
        return key

    def set_limits(self, name: str, limits: KeyLimits) -> None:
        """Replace the limits of key ``name``."""
        if name not in self.hashes:
            msg = f"{self.path} holds no key named {name!r}"
            raise ConfigurationError(msg)
        self.limits[name] = limits
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, object] = {"keys": self.hashes}
        limits = {n: v.to_dict() for n, v in self.limits.items() if v.to_dict()}
        if limits:
            data["limits"] = limits
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.path)

    def name_of(self, key: str) -> str | None:
        """The name of ``key``, or None for a key this file does not hold."""
        digest = hash_key(key)
        found = None
        for name, stored in self.hashes.items():  # every entry compared, in constant time each
            if hmac.compare_digest(stored, digest):
                found = name
        return found
