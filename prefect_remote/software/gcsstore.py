"""The store in Cloud Storage: ``gs://bucket/prefix``, content-addressed and verified like the local store.

Only moving bytes lives here (upload, download, exists, list, delete); addressing by SHA-256 and the
check of every read are :class:`~prefect_remote.software.store.Store`'s. Credentials and project come
from Google's usual chain (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default
login``, a VM's or Cloud Run's service account through the metadata server); the endpoint from
``STORAGE_EMULATOR_HOST`` when set (google-cloud-storage reads it itself). google-cloud-storage is
imported on first use, from the ``gcp`` extra. The identity needs ``roles/storage.objectAdmin`` on
the bucket (objects get, create, delete and list).

Other parts keep small objects beside the store's blobs (the gcp provider's machine records, under
``<prefix>/machines/``): :meth:`GCSStore.blob`, :attr:`GCSStore.client` and :meth:`GCSStore.translated`
are theirs too.

>>> store = GCSStore("my-team-envs", "prefect-remote")        # doctest: +SKIP
>>> store.get_bytes(store.put_bytes(b"hello"))                 # doctest: +SKIP
b'hello'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_remote import google_auth_lookups
from prefect_remote.software.store import BucketStore, NotInStore, StoreError

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

INSTALL_HINT = "pip install 'prefect-remote[gcp]'"
ROLE = "roles/storage.objectAdmin"
# https://cloud.google.com/storage/docs/buckets#naming (names without dots; dotted ones need domain verification)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


# google-cloud-storage (3.x) reads a bucket's metadata (buckets.get) in a background thread on a
# client's first call that names the bucket, to label OpenTelemetry spans, and swallows the 403 of an
# identity without storage.buckets.get: the machines' account (roles/storage.objectViewer and
# objectUser, in its pool's folder) and the docs' launcher (roles/storage.objectAdmin) have no such
# permission, so each client would leave a refused call in the project's audit log. The library's own
# switch turns that read off.
NO_BUCKET_METADATA = ("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")


def storage_library() -> Any:
    """``google.cloud.storage``, whose clients read no bucket's metadata (:data:`NO_BUCKET_METADATA`):
    every storage client prefect-remote makes comes from here."""
    import importlib
    import os

    os.environ.setdefault(*NO_BUCKET_METADATA)  # read on each call, so it holds for clients already made
    google_auth_lookups.quiet()
    try:
        return importlib.import_module("google.cloud.storage")
    except ImportError:
        raise StoreError(f"gs:// stores need google-cloud-storage, which is not installed: {INSTALL_HINT}") from None


class GCSStore(BucketStore):
    """Blobs and environment specs under ``gs://bucket/prefix/`` (``blobs/<sha256>``, ``envs/<name>.json``).

    ``client`` is a google-cloud-storage client to use instead of one from the default chain.
    """

    scheme, service = "gs", "Cloud Storage"
    bucket_rule, bucket_rule_text = _BUCKET, "3-63 lowercase letters, digits, '-', '_' or '.', starting and ending with a letter or digit"

    @classmethod
    def from_url(cls, url: str) -> GCSStore:
        """The store at ``gs://bucket/prefix`` (as machines get it in their configuration).

        >>> GCSStore.from_url("gs://my-bucket/team/envs").prefix
        'team/envs'
        """
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme != "gs":
            raise StoreError(f"store {url!r}: expected gs://bucket/prefix")
        return cls(parts.netloc, parts.path)

    @property
    def client(self) -> Client:
        """The storage client, made on first use so that opening a store costs nothing. No project:
        objects need none, and a machine's credentials may not name one."""
        if self._client is None:
            storage = storage_library()
            with self.translated("storage.objects.get", "the store"):
                self._client = storage.Client(project=None)
        return self._client

    def blob(self, key: str) -> Blob:
        """The object ``key`` (under the prefix), as a google-cloud-storage ``Blob`` (no request made)."""
        return self.client.bucket(self.bucket).blob(self.key(key))

    # -- what differs from the local store --------------------------------------------------------
    def _write(self, key: str, source: Path) -> None:
        with self.translated("storage.objects.create", key):
            # Resumable (chunked) above 8 MiB, checksummed by the client: large wheels and bundles too.
            self.blob(key).upload_from_filename(str(source))

    def _read(self, key: str, destination: Path) -> None:
        with self.translated("storage.objects.get", key):
            self.blob(key).download_to_filename(str(destination))

    def _exists(self, key: str) -> bool:
        with self.translated("storage.objects.get", key):
            found = self.blob(key).exists()
        if not found:
            problem = self._bucket_problem()  # "not found" is also what a missing bucket answers
            if problem is not None:
                raise problem
        return found

    def _delete(self, key: str) -> None:
        try:
            with self.translated("storage.objects.delete", key):
                self.blob(key).delete()
        except NotInStore:  # absent keys are fine
            pass

    def _keys(self, prefix: str) -> list[str]:
        folder = self.key(prefix)
        with self.translated("storage.objects.list", prefix):
            names = [blob.name[len(folder) :] for blob in self.client.list_blobs(self.bucket, prefix=folder, delimiter="/")]
        return sorted(name for name in names if name and not name.startswith("."))

    def _machine_fetch(self, key: str) -> str:
        """A download with the default client (the machine's service account; objects need no project),
        which reads no bucket metadata (:data:`NO_BUCKET_METADATA`).

        >>> print(GCSStore("my-bucket", "envs").machine_fetch("abc"), end="")
        import os
        os.environ.setdefault('DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA', 'true')
        from google.cloud import storage
        storage.Client(project=None).bucket('my-bucket').blob('envs/blobs/abc').download_to_filename(target)
        """
        return (
            f"import os\nos.environ.setdefault{NO_BUCKET_METADATA!r}\n"
            "from google.cloud import storage\n"
            f"storage.Client(project=None).bucket({self.bucket!r}).blob({self.key(key)!r}).download_to_filename(target)\n"
        )

    # -- errors that say what to do ---------------------------------------------------------------
    @contextmanager
    def translated(self, action: str, key: str) -> Iterator[None]:
        """Turns Google's errors inside the block into :class:`StoreError`s that name the fix
        (:class:`NotInStore` for a missing object). ``action`` is the permission it needs."""
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from requests import RequestException

        try:
            yield
        except auth.InvalidOperation as error:  # (a DefaultCredentialsError) anonymous credentials the endpoint refused
            raise self._bad_credentials(error) from None
        except auth.DefaultCredentialsError:
            raise self._no_credentials() from None
        except auth.RefreshError as error:
            raise self._bad_credentials(error) from None
        except api.Unauthorized as error:
            raise self._bad_credentials(error) from None
        except api.Forbidden as error:
            raise self._denied(action, key, error) from None
        except api.NotFound:
            raise self._bucket_problem() or NotInStore(f"{key} is not in the store {self.url}") from None
        except (api.GoogleAPIError, auth.TransportError, RequestException) as error:  # an unreachable endpoint, a DNS failure…
            raise self._bucket_problem() or StoreError(
                f"store {self.url}: {action} on {key} failed: {error}; check the network (and STORAGE_EMULATOR_HOST, if set)"
            ) from None

    def _bucket_problem(self) -> StoreError | None:
        """Why the bucket cannot be used (missing, refused, out of reach), or ``None``; asked until
        it was found once. Listing objects needs only what the store needs anyway (getting the
        bucket itself needs storage.buckets.get, which objectAdmin lacks)."""
        if self._bucket_checked:
            return None
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from requests import RequestException

        try:
            next(iter(self.client.list_blobs(self.bucket, prefix=self.key(""), max_results=1)), None)
        except auth.InvalidOperation as error:
            return self._bad_credentials(error)
        except auth.DefaultCredentialsError:
            return self._no_credentials()
        except (auth.RefreshError, api.Unauthorized) as error:
            return self._bad_credentials(error)
        except api.NotFound:
            return self._no_bucket()
        except api.Forbidden as error:
            return self._denied("storage.objects.list", "the bucket", error)
        except (api.GoogleAPIError, auth.TransportError, RequestException) as error:
            return StoreError(f"store {self.url} is unreachable: {error}; check the network (and STORAGE_EMULATOR_HOST, if set)")
        self._bucket_checked = True
        return None

    def _no_bucket(self) -> StoreError:
        return StoreError(
            f"bucket {self.bucket} does not exist (store {self.url}); create it (`gcloud storage buckets create gs://{self.bucket} "
            "--location=REGION --uniform-bucket-level-access`) or run `prefect work-pool create --type remote:push --provision-infra POOL` "
            "with PREFECT_REMOTE_STORE set to it"
        )

    def _no_credentials(self) -> StoreError:
        return StoreError(
            f"no Google Cloud credentials found for the store {self.url}; run `gcloud auth application-default login`, "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run where a service account provides them"
        )

    def _bad_credentials(self, error: Exception) -> StoreError:
        return StoreError(
            f"Google Cloud refused the credentials used for the store {self.url} ({_message(error)}); log in again "
            "(`gcloud auth application-default login`) or check GOOGLE_APPLICATION_CREDENTIALS"
        )

    def _denied(self, action: str, key: str, error: Exception) -> StoreError:
        return StoreError(
            f"access denied: {action} on {key} in {self.url} ({_message(error)}); the identity in use needs {ROLE} on the bucket: "
            f"`gcloud storage buckets add-iam-policy-binding gs://{self.bucket} --member=MEMBER --role={ROLE}`"
        )


def _message(error: Exception) -> str:
    """Google's own message, without the request line google-cloud-storage puts first.

    >>> from google.api_core.exceptions import Forbidden
    >>> _message(Forbidden("GET http://storage/b/x/o/y?fields=name: x@y does not have storage.objects.get access"))
    'x@y does not have storage.objects.get access'
    """
    return re.sub(r"^[A-Z]+ \S+: ", "", str(getattr(error, "message", None) or error))
