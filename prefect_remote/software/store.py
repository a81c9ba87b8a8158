"""Content-addressed storage for software environments: blobs by SHA-256, environment specs by name.

Every read is verified against its address, so a changed or corrupted store is detected, never
installed. :func:`prefect_remote.software.stores.open_store` picks the implementation: a local directory (the default, under
``$PREFECT_REMOTE_HOME/store``, owner-only), ``s3://bucket/prefix`` (:mod:`.s3store`) or
``gs://bucket/prefix`` (:mod:`.gcsstore`). The base class does the addressing and the checks; a
store only moves bytes (``_write``, ``_read``, ``_exists``, ``_delete``, ``_keys``) and says how a
machine reads them before prefect-remote is there (``_machine_fetch``). Standard
library only (boto3 or google-cloud-storage is loaded for an ``s3://`` or ``gs://`` store alone):
machines read the store while booting.

>>> store = LocalStore("/tmp/example-store")
>>> digest = store.put_bytes(b"hello")
>>> store.get_bytes(digest)
b'hello'
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from prefect_remote.errors import RemoteError

CHUNK = 1 << 20


class StoreError(RemoteError):
    """The store cannot be reached, or does not hold what was asked for."""


class NotInStore(StoreError):
    """The store is reachable but does not hold the key asked for."""


class TamperedBlob(StoreError):
    """A blob's content does not match its address."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Store(ABC):
    """Blobs addressed by their SHA-256, and named environment specs (``senv-…``)."""

    url: str

    @abstractmethod
    def _write(self, key: str, source: Path) -> None: ...

    @abstractmethod
    def _read(self, key: str, destination: Path) -> None:
        """Copies ``key`` to ``destination``; raises :class:`NotInStore` if it is missing, :class:`StoreError`
        if the store cannot be reached."""

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _keys(self, prefix: str) -> list[str]: ...

    @abstractmethod
    def _machine_fetch(self, key: str) -> str:
        """Python lines that copy ``key`` to the file named by the variable ``target`` on a machine
        (see :meth:`machine_fetch`)."""

    # -- blobs ------------------------------------------------------------------------------------
    def put_file(self, path: Path) -> str:
        """Stores a file; returns its SHA-256 (its address). Storing it again is free."""
        digest = sha256_file(path)
        if not self._exists(f"blobs/{digest}"):
            self._write(f"blobs/{digest}", path)
        return digest

    def put_bytes(self, data: bytes) -> str:
        """Stores ``data`` as a blob; returns its SHA-256 (its address)."""
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(data)
            handle.flush()
            return self.put_file(Path(handle.name))

    def get_file(self, digest: str, destination: Path) -> Path:
        """Fetches a blob to ``destination`` after checking it matches ``digest``."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
        try:
            self._read(f"blobs/{digest}", partial)
            actual = sha256_file(partial)
            if actual != digest:
                # Removed, so that building the environment again stores a good copy (puts skip blobs
                # that exist, and other environments may share this one).
                self._delete(f"blobs/{digest}")
                raise TamperedBlob(
                    f"blob {digest[:12]}… in {self.url} had content hashing to {actual[:12]}…: the store was changed "
                    "or corrupted, and the bad copy was removed. Build the environment again (`prefect-remote env build`)."
                )
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
        return destination

    def get_bytes(self, digest: str) -> bytes:
        """A blob's content, checked against ``digest`` as :meth:`get_file` checks it."""
        with tempfile.TemporaryDirectory() as scratch:
            return self.get_file(digest, Path(scratch, "blob")).read_bytes()

    def machine_fetch(self, digest: str) -> str:
        """Python lines that copy the blob ``digest`` to the file named by the variable ``target``, as
        a stock-image machine runs them before prefect-remote is there (the boot script fetches the
        agent's wheel with them): the standard library and the library its provider's runtime needs
        (boto3, google-cloud-storage) only, with the machine's own credentials; unchecked.

        >>> print(LocalStore("/tmp/store").machine_fetch("abc"), end="")
        import shutil
        shutil.copyfile('/tmp/store/blobs/abc', target)
        """
        return self._machine_fetch(f"blobs/{digest}")

    def has_blob(self, digest: str) -> bool:
        """Whether the store holds the blob ``digest`` (unchecked)."""
        return self._exists(f"blobs/{digest}")

    def blobs(self) -> list[str]:
        """The SHA-256 of every blob in the store."""
        return self._keys("blobs/")

    def delete_blob(self, digest: str) -> None:
        """Removes the blob ``digest`` (environments that use it can no longer be rebuilt)."""
        self._delete(f"blobs/{digest}")

    # -- environment specs ------------------------------------------------------------------------
    def put_env(self, name: str, data: bytes) -> None:
        """Stores the spec of environment ``name`` (JSON), replacing any spec of that name."""
        with tempfile.NamedTemporaryFile() as handle:
            handle.write(data)
            handle.flush()
            self._write(f"envs/{name}.json", Path(handle.name))

    def get_env(self, name: str) -> bytes:
        """The spec of environment ``name``; raises :class:`NotInStore`, saying how to build it, if missing."""
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch, "env.json")
            try:
                self._read(f"envs/{name}.json", path)
            except NotInStore:
                raise NotInStore(
                    f"software environment {name!r} is not in the store {self.url}; build it with "
                    "`prefect-remote env build` or the build_package_sync_senv deploy step (`prefect-remote env ls` lists the store)"
                ) from None
            return path.read_bytes()

    def has_env(self, name: str) -> bool:
        """Whether the store holds environment ``name``."""
        return self._exists(f"envs/{name}.json")

    def envs(self) -> list[str]:
        """The names of the environments in the store, sorted."""
        return sorted(key.removesuffix(".json") for key in self._keys("envs/"))

    def delete_env(self, name: str) -> None:
        """Removes the spec of environment ``name`` (not its blobs, which others may share)."""
        self._delete(f"envs/{name}.json")


class LocalStore(Store):
    """A store in a local directory, readable by its owner only."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _write(self, key: str, source: Path) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.root, 0o700)
        except OSError as error:
            raise StoreError(f"store {self.url} is not writable: {error}; check PREFECT_REMOTE_STORE") from None
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.copyfile(source, partial)
        os.chmod(partial, 0o600)
        os.replace(partial, target)

    def _read(self, key: str, destination: Path) -> None:
        if not self.root.is_dir():
            raise StoreError(f"store {self.url} is unreachable: no such directory; check PREFECT_REMOTE_STORE")
        try:
            shutil.copyfile(self._path(key), destination)
        except FileNotFoundError:
            raise NotInStore(f"{key} is not in the store {self.url}") from None
        except OSError as error:
            raise StoreError(f"store {self.url} is unreachable: {error}") from None

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []

    def _machine_fetch(self, key: str) -> str:
        return f"import shutil\nshutil.copyfile({str(self._path(key))!r}, target)\n"  # the machine shares this computer's folders


class BucketStore(Store):
    """A store under a prefix of a cloud bucket, ``<scheme>://bucket/prefix``: a subclass names its
    scheme and bucket naming rule, and moves the bytes. ``client`` is the cloud library's client to
    use instead of one the subclass makes on first use from the cloud's default credentials chain.

    >>> from prefect_remote.software.gcsstore import GCSStore
    >>> GCSStore("my-bucket", "/team/envs/").key("blobs/abc")
    'team/envs/blobs/abc'
    """

    scheme: ClassVar[str]  # "s3", "gs"
    service: ClassVar[str]  # "S3", "Cloud Storage": for errors
    bucket_rule: ClassVar[re.Pattern[str]]
    bucket_rule_text: ClassVar[str]  # the rule in words

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None) -> None:
        if not self.bucket_rule.fullmatch(bucket) or ".." in bucket:
            raise StoreError(
                f"store {self.scheme}://{bucket}/{prefix}: {bucket!r} is not a valid {self.service} bucket name "
                f"({self.bucket_rule_text}); expected {self.scheme}://bucket/prefix"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"{self.scheme}://{bucket}/{self.prefix}" if self.prefix else f"{self.scheme}://{bucket}"
        self._bucket_checked = False  # once the bucket is known to exist, a "not found" means a missing key
        self._client = client

    def key(self, key: str) -> str:
        """The object name of ``key`` in the bucket: ``<prefix>/<key>``."""
        return f"{self.prefix}/{key}" if self.prefix else key
