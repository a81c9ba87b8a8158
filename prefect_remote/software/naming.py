"""Software environment names: ``senv-`` and 16 hex digits of the SHA-256 of the environment's spec.
Standard library only, and nothing else imported: every spec check and every machine boot reads it.

>>> env_name(b"{}")
'senv-44136fa355b3678a'
"""

from __future__ import annotations

import hashlib
import re

NAME_PATTERN = re.compile(r"senv-[0-9a-f]{16}")


def env_name(spec_bytes: bytes) -> str:
    """The content address of an environment spec (its canonical JSON bytes)."""
    return f"senv-{hashlib.sha256(spec_bytes).hexdigest()[:16]}"
