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
COUNT_TAG = TAG_PREFIX + "count"  # how many instances the launch started, on launches with secrets
MANAGED_TAG = TAG_PREFIX + "managed"  # on what the provider or provisioning made (security groups, buckets, roles)
# On the instances a launch made from a machine starts: that machine's instance ARN, which alone (besides
# the instance itself) may then end or retag them (permissions.machine_policy).
PARENT_TAG = TAG_PREFIX + "parent"
# On a cluster's first workers, which its creator launches: the ARN of the cluster's scheduler machine,
# whose controller renews their leases and ends them (their parent is the creator's machine, if any).
CONTROLLER_TAG = TAG_PREFIX + "controller"

# Instance tags served by the metadata service may only use these characters (EC2 refuses others
# once InstanceMetadataTags is enabled).
IMDS_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
# Names the metadata service keeps for itself: EC2 refuses an instance tag named so ("must not be a
# reserved name ('.', '..', '_index')") once InstanceMetadataTags is enabled.
RESERVED_IMDS_TAG_KEYS = frozenset({".", "..", "_index"})


def imds_tag_key_error(key: str) -> str | None:
    """Why ``key`` (as :func:`tag_key` makes it) cannot name an instance tag the metadata service
    serves, or None.

    >>> imds_tag_key_error("_index")
    "'_index' is reserved by the instance metadata service"
    """
    if key in RESERVED_IMDS_TAG_KEYS:
        return f"{key!r} is reserved by the instance metadata service"
    if not IMDS_TAG_KEY.fullmatch(key):
        return f"{key!r} has characters other than letters, digits and + - = . , _ : @, or more than 128"
    if key.lower().startswith("aws:"):
        return f"{key!r} starts with aws:, which is AWS's"
    return None


def tag_key(key: str) -> str:
    """``key`` as an EC2 tag name the instance metadata service can serve: '/' becomes ':' and a
    space '_' (Prefect's labels, such as ``prefect.io/flow-run-id``, have '/')."""
    return key.replace("/", ":").replace(" ", "_")
