"""Partner API keys, kept only as SHA-256 hashes (keys are 256-bit random, so no slow KDF is needed)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_PREFIX = "hk_"
HASH_PREFIX = "sha256:"


@dataclass(frozen=True)
class ApiKey:
    id: str  # short public id derived from the hash, safe to log
    digest: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyRing:
    """Checks presented keys against stored hashes in constant time."""

    def __init__(self, entries: list[str] | None = None) -> None:
        self._keys: list[ApiKey] = []
        for entry in entries or []:
            self.add(entry)

    def add(self, entry: str) -> ApiKey:
        """Add a plain key or a 'sha256:<hex>' hash."""
        digest = entry[len(HASH_PREFIX):].lower() if entry.startswith(HASH_PREFIX) else hash_key(entry)
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("API key hash must be 64 hex digits")
        key = ApiKey(id="key_" + digest[:8], digest=digest)
        self._keys.append(key)
        return key

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        found = None
        for key in self._keys:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


def load_or_create_dev_key(data_dir: Path) -> tuple[str | None, str]:
    """Return (new plain key or None, stored hash entry). A key is generated once per data dir;
    only its hash is written, so the plain key is shown on that first start only."""
    path = data_dir / "dev_api_key.json"
    if path.exists():
        return None, json.loads(path.read_text())["hash"]
    key = generate_key()
    data_dir.mkdir(parents=True, exist_ok=True)
    entry = HASH_PREFIX + hash_key(key)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"hash": entry}, handle)
    return key, entry
