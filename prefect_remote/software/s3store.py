"""The store in S3: ``s3://bucket/prefix``, content-addressed and verified like the local store.

Only moving bytes lives here (put, get, exists, list, delete); addressing by SHA-256 and the check
of every read are :class:`~prefect_remote.software.store.Store`'s, shared with the local store.
Credentials, region and endpoint come from boto3's usual chain (``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``,
an instance profile, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``…); boto3 is imported on first use,
from the ``aws`` extra. The credentials need ``s3:GetObject``, ``s3:PutObject``, ``s3:DeleteObject``
on ``arn:aws:s3:::bucket/prefix/*`` and ``s3:ListBucket`` on ``arn:aws:s3:::bucket``.

>>> store = S3Store("my-team-envs", "prefect-remote")      # doctest: +SKIP
>>> store.get_bytes(store.put_bytes(b"hello"))              # doctest: +SKIP
b'hello'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_remote.software.store import BucketStore, NotInStore, StoreError

if TYPE_CHECKING:
    from botocore.client import BaseClient

INSTALL_HINT = "pip install 'prefect-remote[aws]'"
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html (general purpose buckets)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Error codes that mean "these credentials may not do this", as S3 and STS spell them.
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise StoreError(f"s3:// stores need boto3, which is not installed: {INSTALL_HINT}") from None
    return boto3


class S3Store(BucketStore):
    """Blobs and environment specs under ``s3://bucket/prefix/`` (``blobs/<sha256>``, ``envs/<name>.json``).

    ``client`` is an S3 client to use instead of one from boto3's default chain (a provider passes
    the one made from its own session).
    """

    scheme, service = "s3", "S3"
    bucket_rule, bucket_rule_text = _BUCKET, "3-63 lowercase letters, digits, '.' or '-'"

    @property
    def client(self) -> BaseClient:
        """The S3 client, made on first use so that opening a store costs nothing."""
        if self._client is None:
            boto3 = _boto3()
            from botocore.config import Config

            # Standard retries back off on throttling and 5xx; the defaults wait minutes on a dead endpoint.
            config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
            # A session of its own: boto3's default one keeps the credentials it first found.
            self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    # -- what differs from the local store --------------------------------------------------------
    def _write(self, key: str, source: Path) -> None:
        with self._translated("s3:PutObject", key):
            # upload_file switches to parallel multipart uploads for large wheels and bundles.
            self.client.upload_file(str(source), self.bucket, self.key(key))

    def _read(self, key: str, destination: Path) -> None:
        with self._translated("s3:GetObject", key):
            self.client.download_file(self.bucket, self.key(key), str(destination))

    def _exists(self, key: str) -> bool:
        try:
            with self._translated("s3:GetObject", key):
                self.client.head_object(Bucket=self.bucket, Key=self.key(key))
        except NotInStore:
            return False
        return True

    def _delete(self, key: str) -> None:
        with self._translated("s3:DeleteObject", key):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(key))  # absent keys are fine

    def _keys(self, prefix: str) -> list[str]:
        folder = self.key(prefix)
        names: list[str] = []
        with self._translated("s3:ListBucket", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder, Delimiter="/")
            for page in pages:
                names.extend(item["Key"][len(folder) :] for item in page.get("Contents", []))
        return sorted(name for name in names if name and not name.startswith("."))

    def _machine_fetch(self, key: str) -> str:
        """A download with boto3's default client (the machine's instance profile).

        >>> print(S3Store("my-bucket", "envs").machine_fetch("abc"), end="")
        import boto3
        boto3.client("s3").download_file('my-bucket', 'envs/blobs/abc', target)
        """
        return f'import boto3\nboto3.client("s3").download_file({self.bucket!r}, {self.key(key)!r}, target)\n'

    # -- errors that say what to do ---------------------------------------------------------------
    @contextmanager
    def _translated(self, action: str, key: str) -> Iterator[None]:
        """Turns boto3's errors inside the block into :class:`StoreError`s that name the fix."""
        _boto3()
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as error:
            raise self._error(error, action, key) from None

    def _error(self, error: Exception, action: str, key: str) -> StoreError:
        """``error`` as the store error that says what to do: :class:`NotInStore` for a missing key."""
        from botocore.exceptions import EndpointConnectionError, NoCredentialsError, PartialCredentialsError

        if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
            return self._no_credentials()
        if isinstance(error, EndpointConnectionError):
            return StoreError(f"store {self.url} is unreachable: {error}; check the network, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL")
        code = _error_code(error)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in _BAD_CREDENTIALS:
            return StoreError(
                f"AWS refused the credentials used for the store {self.url} ({code}); check AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or log in again (`aws sso login`)"
            )
        if code in _DENIED:
            return self._denied(action, key)
        if code in _MISSING:
            # A 404 does not say whether the key or the whole bucket is missing: the bucket says.
            return self._bucket_problem() or NotInStore(f"{key} is not in the store {self.url}")
        return self._bucket_problem() or StoreError(f"store {self.url}: {action} on {key} failed: {error}")

    def _bucket_problem(self) -> StoreError | None:
        """Why the bucket cannot be used (missing, out of reach), or ``None``; asked once it was found."""
        if self._bucket_checked:
            return None
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (NoCredentialsError, PartialCredentialsError):
            return self._no_credentials()
        except ClientError as error:
            code = _error_code(error)
            if code in ("404", "NoSuchBucket", "NotFound"):
                return self._no_bucket()
            if code in _DENIED:
                return self._denied("s3:ListBucket", "the bucket")
            return StoreError(f"store {self.url} is unreachable: {error}")
        except BotoCoreError as error:
            return StoreError(f"store {self.url} is unreachable: {error}")
        self._bucket_checked = True
        return None

    def _region(self) -> str:
        return self.client.meta.region_name or "us-east-1"

    def _no_bucket(self) -> StoreError:
        region = self._region()
        return StoreError(
            f"bucket {self.bucket} does not exist in region {region} (store {self.url}); create it "
            f"(`aws s3 mb s3://{self.bucket} --region {region}`) or run "
            "`prefect work-pool create --type remote:push --provision-infra POOL` with PREFECT_REMOTE_STORE set to it"
        )

    def _no_credentials(self) -> StoreError:
        return StoreError(
            f"no AWS credentials found for the store {self.url}; set AWS_PROFILE (after `aws configure` or "
            "`aws sso login`) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an instance profile or role provides them"
        )

    def _denied(self, action: str, key: str) -> StoreError:
        objects = f"arn:aws:s3:::{self.bucket}/{self.prefix + '/' if self.prefix else ''}*"
        return StoreError(
            f"access denied: {action} on {key} in {self.url}; the AWS identity in use needs s3:GetObject, "
            f"s3:PutObject and s3:DeleteObject on {objects} and s3:ListBucket on arn:aws:s3:::{self.bucket}"
        )


def _error_code(error: Exception) -> str:
    """The AWS error code of ``error``; boto3's upload wrapper keeps it only in its message."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    found = re.search(r"An error occurred \((\w+)\)", str(error))
    return found.group(1) if found else ""
