"""The EC2 tags the aws provider sets, finds its resources by, and reads back: prefect-remote's own,
under :data:`~prefect_remote.providers.base.TAG_PREFIX`, and the user's, named so that the instance
metadata service can serve them (:func:`tag_key`). The tags a machine itself writes (its lease, why
it ended) are its runtime's (:mod:`prefect_remote.providers.aws.runtime`).

>>> tag_key("prefect.io/flow-run-id")
'prefect.io:flow-run-id'
"""

from __future__ import annotations

import re

from prefect_remote.providers.base import TAG_PREFIX

OWNER_TAG = TAG_PREFIX + "owner"
LAUNCH_TAG = TAG_PREFIX + "launch"  # on every instance (and its volume) a launch starts, and its SSM parameter
KEEPALIVE_TAG = TAG_PREFIX + "keepalive"
SPEC_TAG = TAG_PREFIX + "spec"
SECRETS_TAG = TAG_PREFIX + "secrets"  # the launch's SSM parameter, on launches that have one
MANAGED_TAG = TAG_PREFIX + "managed"  # on what the provider or provisioning made (security groups, buckets, roles)

# Instance tags served by the metadata service may only use these characters (EC2 refuses others
# once InstanceMetadataTags is enabled).
IMDS_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")


def tag_key(key: str) -> str:
    """``key`` as an EC2 tag name the instance metadata service can serve: '/' becomes ':' and a
    space '_' (Prefect's labels, such as ``prefect.io/flow-run-id``, have '/')."""
    return key.replace("/", ":").replace(" ", "_")
