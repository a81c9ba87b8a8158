"""Which store a URL names: the one place that knows every store, so that the base
(:mod:`prefect_remote.software.store`) knows none. Standard library only: boto3 or
google-cloud-storage is loaded for an ``s3://`` or ``gs://`` store alone (machines open their store
while booting).

>>> store = open_store("/tmp/example-store")
>>> digest = store.put_bytes(b"hello")
>>> store.get_bytes(digest)
b'hello'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from prefect_remote.software.store import LocalStore, Store, StoreError

if TYPE_CHECKING:
    from prefect_remote.settings import RemoteSettings


def open_store(url: str | Path | None = None, *, settings: RemoteSettings | None = None) -> Store:
    """The store at ``url``: a path, a ``file://`` URL, ``s3://bucket/prefix`` or ``gs://bucket/prefix``; ``None`` means the
    ``PREFECT_REMOTE_STORE`` setting, else ``$PREFECT_REMOTE_HOME/store`` (of ``settings``, if the
    caller has them already)."""
    if url is None:
        if settings is None:
            from prefect_remote.settings import get_settings

            settings = get_settings()
        url = settings.store or settings.home / "store"
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file"):
        return LocalStore(parsed.path if parsed.scheme else text)
    if parsed.scheme == "s3":
        from prefect_remote.software.s3store import S3Store  # boto3 only for those who use S3

        return S3Store(parsed.netloc, parsed.path)
    if parsed.scheme == "gs":
        from prefect_remote.software.gcsstore import GCSStore  # google-cloud-storage only for those who use GCS

        return GCSStore(parsed.netloc, parsed.path)
    raise StoreError(f"store {text!r}: expected a local path, file:///path, s3://bucket/prefix or gs://bucket/prefix")
