"""Who calls the sandbox AWS when it enforces IAM: IAM users with access keys (the identity a shell
or a test uses, with exactly the permissions the docs list for launching and provisioning; an
administrator only the sandbox itself holds) and the STS sessions an instance's metadata service
hands out for its instance profile's role, renewed well before they expire, as EC2 does.

All of it is made in this process, through moto's backends: no API call, no permission needed.

>>> keys = make_user("someone", {"read": {"Version": "2012-10-17", "Statement": []}})   # doctest: +SKIP
>>> os.environ.update(keys.environ())                                                  # doctest: +SKIP
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_remote.sandbox.iam_identity import handed_to_instance

# The buckets the sandbox's launcher may use as stores: its own and those provisioning makes
# (``prefect-remote-<account>-<region>``), as a user's policy would name their store's bucket.
STORE_BUCKETS = "prefect-remote-*"
SESSION_DURATION = datetime.timedelta(hours=6)  # an instance profile's credentials, as EC2 issues them
SESSION_RENEWAL = datetime.timedelta(hours=1)  # EC2 hands out new ones about hourly, long before expiry


def policies(account: str) -> dict[str, dict[str, Any]]:
    """The docs' identity policies, by name: ``launcher`` (on the sandbox's store buckets),
    ``provisioning`` and ``teardown``, as :mod:`prefect_remote.providers.aws.permissions` makes them."""
    from prefect_remote.providers.aws import permissions

    return {
        "launcher": permissions.launcher_policy(account=account, bucket=STORE_BUCKETS, prefix=""),
        "provisioning": permissions.provisioning_policy(),
        "teardown": permissions.teardown_policy(),
    }


ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


@dataclass(frozen=True)
class Keys:
    """Credentials, as boto3 takes them."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    arn: str = ""

    def environ(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            **({"AWS_SESSION_TOKEN": self.session_token} if self.session_token else {}),
        }

    def session_kwargs(self) -> dict[str, str | None]:
        return {
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            "aws_session_token": self.session_token,
        }


def _iam(account: str, partition: str = "aws") -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[account][partition]


def make_user(
    name: str, policies: Mapping[str, Mapping[str, Any]], *, account: str, region: str = "us-east-1", unique: bool = True
) -> Keys:
    """An IAM user with ``policies`` (inline, by name) and an access key. ``unique`` adds a suffix
    to the name: moto's account is shared by every sandbox of this process."""
    import json

    backend = _iam(account)
    name = f"{name}-{uuid.uuid4().hex[:8]}" if unique else name
    user = backend.create_user(region, name)
    for policy_name, document in policies.items():
        backend.put_user_policy(name, policy_name, json.dumps(document))
    key = backend.create_access_key(name)
    return Keys(key.access_key_id, key.secret_access_key, None, user.arn)


class MachineCredentials:
    """The credentials EC2 gives instances for their instance profile's role (through IMDS): an STS
    session named after the instance, assumed in this process (EC2 itself assumes the role; no
    principal of the account could, with the machines' trust policy), renewed once it is
    :data:`SESSION_RENEWAL` old, valid :data:`SESSION_DURATION`."""

    def __init__(self, account: str, *, clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)) -> None:
        self.account, self.clock = account, clock
        self._sessions: dict[str, tuple[datetime.datetime, Any]] = {}  # instance id -> (issued, moto's AssumedRole)
        self._lock = threading.Lock()

    def role_of(self, profile_name: str) -> Any:
        """The role of instance profile ``profile_name``, or None (a profile with no role gives no credentials)."""
        profile = _iam(self.account).instance_profiles.get(profile_name)
        return profile.roles[0] if profile is not None and profile.roles else None

    def for_instance(self, instance_id: str, region: str, profile_name: str) -> dict[str, str] | None:
        """What ``iam/security-credentials/<role>`` serves: the instance's current session."""
        from moto.sts.models import sts_backends

        role = self.role_of(profile_name)
        if role is None:
            return None
        now = self.clock()
        with self._lock:
            held = self._sessions.get(instance_id)
            if held is None or held[1].role_arn != role.arn or now - held[0] >= SESSION_RENEWAL:
                session = sts_backends[self.account]["aws"].assume_role(
                    region_name=region,
                    role_session_name=instance_id,
                    role_arn=role.arn,
                    policy=None,
                    duration=int(SESSION_DURATION.total_seconds()),
                    external_id=None,
                )
                session.expiration = (now + SESSION_DURATION).replace(tzinfo=None)  # on the same clock as the renewal
                handed_to_instance(session.access_key_id)
                held = (now, session)
                self._sessions[instance_id] = held
        issued, session = held
        return {
            "Code": "Success",
            "Type": "AWS-HMAC",
            "AccessKeyId": session.access_key_id,
            "SecretAccessKey": session.secret_access_key,
            "Token": session.session_token,
            "LastUpdated": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Expiration": session.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._sessions.pop(instance_id, None)
