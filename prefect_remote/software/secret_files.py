"""Files that hold credentials, which package sync leaves out of a code bundle: machines get their
credentials from their own identity and the secret channel, never from the project folder.

The detectors are detect-secrets' (Yelp's) that know a credential by its exact shape: private keys
(SSH, TLS, a service account's JSON), AWS access keys, and tokens with a vendor's prefix. Its entropy
and keyword guesses are left off on purpose: they flag ordinary code (a hash, a variable named
``token``), and a code file left out breaks the flow that imports it. Two detectors of ours
(:mod:`.secret_rules`) cover what detect-secrets has none for: a kubeconfig's client key, and
Google credential files with no private key in them.

Each file's verdict is cached by its (mtime, size) stamp under the home's cache, so a capture
reads only the files that changed since the last one.

>>> find_secret_files(Path("."), ["flow.py", ".aws/credentials"])  # doctest: +SKIP
{'.aws/credentials': 'AWS Access Key'}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from prefect_remote.atomic_files import write_json

DETECTORS = (
    "AWSKeyDetector",
    "AzureStorageKeyDetector",
    "DiscordBotTokenDetector",
    "GitHubTokenDetector",
    "GitLabTokenDetector",
    "JwtTokenDetector",
    "NpmDetector",
    "OpenAIDetector",
    "PrivateKeyDetector",
    "PypiTokenDetector",
    "SendGridDetector",
    "SlackDetector",
    "SquareOAuthDetector",
    "StripeDetector",
    "TwilioKeyDetector",
)
MAX_SCANNED = 2**20  # credential files are small; a larger file is data, not read
_BINARY_PROBE = 8192


def _detectors() -> list:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    from prefect_remote.software.secret_rules import OUR_DETECTORS

    by_name = {cls.__name__: cls for cls in get_mapping_from_secret_type_to_class().values()}
    return [by_name[name]() for name in DETECTORS] + [cls() for cls in OUR_DETECTORS]


def credential_kind(path: Path, detectors: Iterable | None = None) -> str | None:
    """What credential ``path`` holds (a detector's name for it), or None: also for a file too large
    or binary to be a credential file, or one that cannot be read."""
    try:
        if path.stat().st_size > MAX_SCANNED:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:_BINARY_PROBE]:
        return None
    text = data.decode("utf-8", errors="replace")
    for detector in detectors if detectors is not None else _detectors():
        for _ in detector.analyze_string(text):
            return detector.secret_type
    return None


def find_secret_files(
    root: Path, files: list[str], stamps: dict[str, tuple[int, int]] | None = None, cache: Path | None = None
) -> dict[str, str]:
    """The files among ``files`` (relative to ``root``) that hold credentials, each with its kind.
    ``stamps`` (absolute path -> (mtime_ns, size), as :func:`~.bundle.select_files` records them)
    and ``cache`` (a folder) let unchanged files keep their last verdict without being read."""
    verdicts: dict[str, str | None] = {}
    cache_file = None
    if cache is not None:
        cache_file = cache / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"
        try:
            verdicts = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            verdicts = {}
    detectors = None
    found: dict[str, str] = {}
    fresh: dict[str, str | None] = {}
    for relative in files:
        stamp = (stamps or {}).get(str(root / relative))
        key = f"{relative}\0{stamp[0]}\0{stamp[1]}" if stamp else None
        if key is not None and key in verdicts:
            kind = verdicts[key]
        else:
            detectors = detectors if detectors is not None else _detectors()
            kind = credential_kind(root / relative, detectors)
        if key is not None:
            fresh[key] = kind
        if kind:
            found[relative] = kind
    if cache_file is not None and fresh != verdicts:
        write_json(cache_file, fresh, make_folder=True)
    return found
