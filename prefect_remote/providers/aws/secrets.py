"""The aws provider's secret channel: one SSM SecureString parameter per launch,
``<secrets_prefix><launch id>``, whose value is the JSON of the launch's secret environment.

Its instances read it with their instance profile (:meth:`~prefect_remote.providers.aws.runtime.EC2Runtime.read_secrets`);
nothing secret goes into user-data, a tag or a log. The launcher deletes it when the launch fails or
its machines have ended, and the only machine of a launch as it ends (its owner may be gone:
:meth:`~prefect_remote.providers.aws.runtime.EC2Runtime.forget_secrets`); what an owner that died
left behind, its next launch with secrets sweeps
(:meth:`~prefect_remote.providers.base.Provider.sweep_secrets`, through :func:`stored_launches`).

>>> parameter_name("/prefect-remote/", "launch-0a1b2c3d4e5f")
'/prefect-remote/launch-0a1b2c3d4e5f'
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from prefect_remote.providers.aws.clients import AWSClients, translated
from prefect_remote.providers.aws.tags import LAUNCH_TAG

logger = logging.getLogger(__name__)

STANDARD_LIMIT = 4096  # bytes a Standard parameter holds; larger ones are Advanced
ADVANCED_LIMIT = 8192  # bytes an Advanced parameter holds, the most SSM keeps in one


def parameter_name(prefix: str, launch_id: str) -> str:
    """The SSM parameter that holds ``launch_id``'s secrets, under ``prefix`` (``secrets_prefix``)."""
    return f"{prefix}{launch_id}"


def store_secrets(clients: AWSClients, prefix: str, launch_id: str, secrets: Mapping[str, str]) -> None:
    """Keeps ``secrets`` as ``launch_id``'s SecureString parameter, tagged with the launch."""
    value = json.dumps(dict(secrets))
    size = len(value.encode())
    if size > ADVANCED_LIMIT:
        raise ValueError(
            f"the secret environment of this launch is {size:,} bytes as JSON, over the {ADVANCED_LIMIT:,} bytes an SSM parameter "
            "holds on aws; keep large secrets (certificates, key files) in a store the machine reads (S3, Secrets Manager) and pass "
            "only their name or a short token as a secret"
        )
    with translated():
        clients.client("ssm").put_parameter(
            Name=parameter_name(prefix, launch_id),
            Description=f"prefect-remote: secret environment of launch {launch_id}",
            Value=value,
            Type="SecureString",
            Tier="Advanced" if size > STANDARD_LIMIT else "Standard",
            Tags=[{"Key": LAUNCH_TAG, "Value": launch_id}],
        )


def forget_secrets(clients: AWSClients, prefix: str, launch_id: str) -> None:
    """Deletes ``launch_id``'s parameter (a missing one is fine)."""
    ssm = clients.client("ssm")
    with translated():
        try:
            ssm.delete_parameter(Name=parameter_name(prefix, launch_id))
        except ssm.exceptions.ParameterNotFound:
            pass


def stored_launches(clients: AWSClients, prefix: str, older_than: float) -> set[str]:
    """The launches whose parameter under ``prefix`` was last written more than ``older_than`` seconds
    ago. A tidy-up: an identity that may not list parameters finds none."""
    from botocore.exceptions import ClientError

    cutoff = time.time() - older_than
    with translated():
        try:
            pages = (
                clients.client("ssm")
                .get_paginator("get_parameters_by_path")
                .paginate(Path=prefix.rstrip("/") or "/", Recursive=False, WithDecryption=False)
            )
            names = [p["Name"] for page in pages for p in page["Parameters"] if p["LastModifiedDate"].timestamp() < cutoff]
        except ClientError as error:
            logger.debug("launch secrets not swept: %s", error)
            return set()
    return {name.rsplit("/", 1)[-1] for name in names if name.rsplit("/", 1)[-1].startswith("launch-")}
