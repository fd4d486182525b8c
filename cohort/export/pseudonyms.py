"""Keyed pseudonyms: HMAC-SHA256 of DICOM identifiers with a secret kept outside the outputs.

The same identifier and key always give the same pseudonym (reruns keep ``series_id`` and
``subject_id``), and without the key a pseudonym cannot be traced back, even by hashing guessed
patient IDs. The key is 32 random bytes, created on first use with file mode 0600 at
``--key FILE``, else ``$COHORT_PSEUDONYM_KEY``, else ``~/.config/cohort/pseudonym.key``. Keep it
(and back it up) on the input side: losing it means new pseudonyms for every series.

>>> key = PseudonymKey(b"0" * 32)
>>> key.pseudonym("sub", "PID-1") == key.pseudonym("sub", "PID-1") != key.pseudonym("sub", "PID-2")
True
>>> key.pseudonym("sub", "PID-1")[:4]
'sub-'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cohort.errors import RunCannotStart

KEY_ENV = "COHORT_PSEUDONYM_KEY"
DEFAULT_KEY = Path("~/.config/cohort/pseudonym.key")
KEY_BYTES = 32
PSEUDONYM_HEX = 16  # 64 bits: no collision expected below ~10^9 series


@dataclass(frozen=True, repr=False)
class PseudonymKey:
    """The secret of the keyed hashes (never printed: ``repr`` hides it)."""

    secret: bytes

    def pseudonym(self, kind: str, value: str) -> str:
        """``<kind>-<16 hex digits>``: HMAC-SHA256 of ``value`` in the namespace ``kind``."""
        digest = hmac.new(self.secret, f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
        return f"{kind}-{digest[:PSEUDONYM_HEX]}"

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it (the crawl cache is valid for one key only)."""
        return self.pseudonym("key", "fingerprint")

    def __repr__(self) -> str:
        return f"PseudonymKey({self.fingerprint})"


def key_path(explicit: Path | None = None) -> Path:
    """Where the key is: ``explicit``, else ``$COHORT_PSEUDONYM_KEY``, else the per-user default."""
    return Path(explicit or os.environ.get(KEY_ENV) or DEFAULT_KEY).expanduser()


def load_or_create_key(path: Path, outputs: Path) -> PseudonymKey:
    """The key at ``path``, created (mode 0600) when absent; refused inside the ``outputs`` folder,
    which is shared with collaborators while the key must not be."""
    path = path.expanduser()
    if path.resolve().is_relative_to(outputs.resolve()):
        raise RunCannotStart(f"pseudonym key {path} lies inside the output folder {outputs}; keep it elsewhere "
                             f"(--key FILE or ${KEY_ENV})")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read that one
        else:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(KEY_BYTES) + "\n")
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise RunCannotStart(f"pseudonym key {path} cannot be read as hex digits ({type(exc).__name__})") from None
    if len(secret) < KEY_BYTES // 2:
        raise RunCannotStart(f"pseudonym key {path} holds {len(secret)} bytes; at least {KEY_BYTES // 2} are needed")
    return PseudonymKey(secret)
