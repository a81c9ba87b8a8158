"""EC2 as strict as the real one, in front of moto, which answers at once, never runs out and never
says no. Each behaviour is on by default and is switched off for one test by setting its knob
(``monkeypatch.setattr(aws_sandbox.ec2, "profile_seconds", 0)``):

* **addresses** (``pending_seconds``): an instance is ``pending`` for a while after ``RunInstances``,
  and has no public IP until it runs. RunInstances' answer therefore never carries one, and an
  instance gets one only where its subnet maps public IPs on launch or the launch asks
  (``NetworkInterfaces[0].AssociatePublicIpAddress``), which moto already decides;
* **eventual consistency**: a new instance id is ``InvalidInstanceID.NotFound`` to the calls that
  name it (describe, tags, terminate) for ``unknown_seconds``; a new instance profile is refused by
  RunInstances ("Invalid IAM Instance Profile name") for ``profile_seconds``; a new security group
  is ``InvalidGroup.NotFound`` to the calls that name it for ``group_seconds``; a listing
  (DescribeInstances by filters, no ids) leaves out instances younger than ``unlisted_seconds``,
  longer than an id stays unknown (EC2 answers by id before its filtered listings catch up). AWS
  gives no figure for either ("a few seconds", "starting with a couple of seconds" of backoff);
* **names**: a launch with ``InstanceMetadataTags=enabled`` whose instance tags include a name the
  metadata service reserves (``.``, ``..``, ``_index``) is refused;
* **limits**: a fraction ``throttle`` of EC2 calls is answered ``RequestLimitExceeded`` (HTTP 503),
  and :meth:`StrictEC2.refuse` makes RunInstances fail with a capacity or quota code in one zone or
  subnet (``InsufficientInstanceCapacity``, ``VcpuLimitExceeded``…), on spot, on-demand or both.

It is a WSGI middleware around moto's app (the requests as EC2 receives them), plus two hooks on
moto's models that stamp what was just made. Anchors: "Eventual consistency in the Amazon EC2 API"
(EC2 developer guide); SkyPilot's 15 s wait after making an instance profile.

>>> strict = StrictEC2()                                                   # doctest: +SKIP
>>> strict.refuse("InsufficientInstanceCapacity", zone="us-east-1a", spot=True)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

# What EC2 says, word for word where known, for the codes a test injects.
CAPACITY_MESSAGES = {
    "InsufficientInstanceCapacity": (
        "We currently do not have sufficient {type} capacity in the Availability Zone you requested ({zone}). Our system will be "
        "working on provisioning additional capacity. You can currently get {type} capacity by not specifying an Availability "
        "Zone in your request or choosing another Availability Zone."
    ),
    "VcpuLimitExceeded": (
        "You have requested more vCPU capacity than your current vCPU limit of 0 allows for the instance bucket that the specified "
        "instance type belongs to. Please visit http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit."
    ),
    "InstanceLimitExceeded": "You have requested more instances than your current instance limit allows for the specified instance type.",
    "InsufficientFreeAddressesInSubnet": (
        "There are not enough free addresses in subnet '{subnet}' to satisfy the requested number of instances."
    ),
    "Unsupported": "Your requested instance type ({type}) is not supported in your requested Availability Zone ({zone}).",
    "SpotMaxPriceTooLow": "Your Spot request price is lower than the minimum required Spot request fulfillment price.",
    "MaxSpotInstanceCountExceeded": "Max spot instance count exceeded",
}
_INSTANCE_PARAM = re.compile(r"(InstanceId|ResourceId)\.\d+")
_TAG_KEY_PARAM = re.compile(r"TagSpecification\.\d+\.Tag\.\d+\.Key")
# What the instance metadata service keeps for itself: no instance tag serving it may be named so.
RESERVED_IMDS_TAG_KEYS = frozenset({".", "..", "_index"})
_GROUP_PARAM = re.compile(r"(SecurityGroupId\.\d+|NetworkInterface\.\d+\.SecurityGroupId\.\d+|GroupId(\.\d+)?)")


@dataclass
class Refusal:
    """RunInstances fails with ``code`` in ``zone`` and/or ``subnet`` (None: anywhere), for spot
    (``spot=True``), on-demand (False) or both (None) launches, ``times`` times (None: until
    :meth:`StrictEC2.clear`)."""

    code: str
    zone: str | None = None
    subnet: str | None = None
    spot: bool | None = None
    times: int | None = None

    def matches(self, zone: str | None, subnet: str | None, spot: bool) -> bool:
        return (
            (self.zone is None or self.zone == zone)
            and (self.subnet is None or self.subnet == subnet)
            and (self.spot is None or self.spot == spot)
            and (self.times is None or self.times > 0)
        )


class StrictEC2:
    """The knobs and the bookkeeping of a strict EC2 (see the module's docstring). ``subnet_zone``
    maps a subnet id to its availability zone (moto's view); ``seed`` makes throttling repeatable."""

    def __init__(self, subnet_zone: Callable[[str], str | None] = lambda subnet: None, *, region: str = "us-east-1", seed: int = 0) -> None:
        # Pending no longer than EC2 takes to show a new id: the sandbox's machine boots at once (on EC2 the
        # OS boots once the instance runs), and a machine that already serves must not show as pending.
        self.pending_seconds = 1.0
        self.unknown_seconds = 1.0
        self.profile_seconds = 10.0
        self.group_seconds = 1.0
        self.unlisted_seconds = 2.0  # more than unknown_seconds: known by id, not listed yet, for a second
        self.throttle = 0.0
        self.throttled = 0  # calls answered RequestLimitExceeded so far
        self.refusals: list[Refusal] = []
        self.on = False  # set once the sandbox's own set-up is done
        self.region = region
        self._subnet_zone = subnet_zone
        self._random = random.Random(seed)
        self._born: dict[str, float] = {}  # instance id, group id or "profile:NAME" -> when made (monotonic)
        self._pending: dict[str, tuple[Any, float]] = {}  # instance id -> (moto instance, when it runs)
        self._lock = threading.Lock()

    # -- what a test sets ------------------------------------------------------------------------------
    def refuse(
        self, code: str, *, zone: str | None = None, subnet: str | None = None, spot: bool | None = None, times: int | None = None
    ) -> Refusal:
        """Makes RunInstances fail with ``code`` where the refusal matches (:class:`Refusal`); returns it."""
        refusal = Refusal(code, zone, subnet, spot, times)
        self.refusals.append(refusal)
        return refusal

    def clear(self) -> None:
        """No more injected refusals."""
        self.refusals.clear()

    @contextlib.contextmanager
    def as_it_was(self) -> Iterator[StrictEC2]:
        """Whatever the block sets (knobs, throttling, refusals) is undone after it: one test's
        strictness, on a sandbox a session shares."""
        knobs = ("pending_seconds", "unknown_seconds", "profile_seconds", "group_seconds", "unlisted_seconds", "throttle")
        saved, refusals = {name: getattr(self, name) for name in knobs}, list(self.refusals)
        try:
            yield self
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
            self.refusals[:] = refusals

    def settle_everything(self) -> None:
        """Everything made so far is old (the sandbox's own account, as provisioned long ago)."""
        with self._lock:
            self._born.clear()
        self.settle(force=True)

    # -- moto's side: what was just made -------------------------------------------------------------------
    def launched(self, instances: Iterable[Any]) -> None:
        """Instances moto just made: new ids, pending and with no public IP yet. What an instance shows
        once it runs is kept on the instance itself (moto's state is the process's, which another
        sandbox's strict EC2 may settle)."""
        now = time.monotonic()
        with self._lock:
            for instance in instances:
                self._born[instance.id] = now
                if self.pending_seconds <= 0:
                    continue
                if not hasattr(instance, "_sandbox_public_ip"):  # (the first strict EC2 of the process to see it)
                    nic = instance.nics[0] if instance.nics else None
                    instance._sandbox_public_ip = nic.public_ip if nic is not None else None
                    if nic is not None:
                        nic.public_ip = None
                    instance._state.name, instance._state.code = "pending", 0
                self._pending[instance.id] = (instance, now + self.pending_seconds)

    def made(self, key: str) -> None:
        """A security group (its id) or an instance profile (``profile:NAME``) was just made."""
        with self._lock:
            self._born[key] = time.monotonic()

    @staticmethod
    def readdress(instance: Any, public_ip: str | None) -> None:
        """The public IP moto's ``instance`` shows once it runs (the sandbox's machine's, for one
        that gets one)."""
        if getattr(instance, "_sandbox_public_ip", None):
            instance._sandbox_public_ip = public_ip

    def settle(self, *, force: bool = False) -> None:
        """Pending instances whose time has come run, with their public IP."""
        now = time.monotonic()
        with self._lock:
            for instance_id, (instance, at) in list(self._pending.items()):
                if force or at <= now:
                    del self._pending[instance_id]
                    if instance._state.name == "pending":
                        instance._state.name, instance._state.code = "running", 16
                        if instance._sandbox_public_ip and instance.nics:
                            instance.nics[0].public_ip = instance._sandbox_public_ip

    def listed(self, reservations: list[Any]) -> list[Any]:
        """``reservations`` as a listing shows them: without the instances younger than ``unlisted_seconds``."""
        if not self.unlisted_seconds:
            return reservations
        shown = []
        for reservation in reservations:  # (moto's copies: leaving an instance out changes nothing else)
            instances = [i for i in reservation.instances if not self._young(i.id, self.unlisted_seconds)]
            if instances:
                reservation.instances = instances
                shown.append(reservation)
        return shown

    def _young(self, key: str, seconds: float) -> bool:
        born = self._born.get(key)
        return born is not None and time.monotonic() - born < seconds

    # -- the API's side ----------------------------------------------------------------------------------
    def wrap(self, app: Any) -> Any:
        """moto's WSGI ``app`` behind this strict EC2."""

        def strict(environ: dict[str, Any], start_response: Any) -> Any:
            if self.on and request_service(environ) == "ec2":
                self.settle()
                refused = self._refused(form_params(environ))
                if refused is not None:
                    return _error(start_response, *refused)
            elif self.on and request_service(environ) == "iam":
                params = form_params(environ)
                if params.get("Action") in ("CreateInstanceProfile", "AddRoleToInstanceProfile"):
                    self.made(f"profile:{params.get('InstanceProfileName')}")
            return app(environ, start_response)

        return strict

    def _refused(self, params: dict[str, str]) -> tuple[int, str, str] | None:
        """(HTTP status, code, message) of EC2's refusal of this call, or None."""
        action = params.get("Action", "")
        if self.throttle and self._random.random() < self.throttle:
            self.throttled += 1
            return 503, "RequestLimitExceeded", "Request limit exceeded."
        young = [value for key, value in params.items() if _INSTANCE_PARAM.fullmatch(key) and self._young(value, self.unknown_seconds)]
        if young:
            ids = ", ".join(young)
            return (
                400,
                "InvalidInstanceID.NotFound",
                f"The instance ID{'s' if len(young) > 1 else ''} '{ids}' do{'' if len(young) > 1 else 'es'} not exist",
            )
        for key, value in params.items():
            if _GROUP_PARAM.fullmatch(key) and value.startswith("sg-") and self._young(value, self.group_seconds):
                return 400, "InvalidGroup.NotFound", f"The security group '{value}' does not exist"
        if action == "RunInstances":
            return self._run_refused(params)
        return None

    def _run_refused(self, params: dict[str, str]) -> tuple[int, str, str] | None:
        if params.get("MetadataOptions.InstanceMetadataTags") == "enabled":
            reserved = [value for key, value in params.items() if _TAG_KEY_PARAM.fullmatch(key) and value in RESERVED_IMDS_TAG_KEYS]
            if reserved:
                return (
                    400,
                    "InvalidParameterValue",
                    f"The tag key '{reserved[0]}' is not valid for instance metadata tags: it must not be a reserved name "
                    "('.', '..', '_index')",
                )
        profile = params.get("IamInstanceProfile.Name") or params.get("IamInstanceProfile.Arn", "").rpartition("/")[2]
        if profile and self._young(f"profile:{profile}", self.profile_seconds):
            return (
                400,
                "InvalidParameterValue",
                f"Value ({profile}) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name",
            )
        subnet = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
        zone = params.get("Placement.AvailabilityZone") or (self._subnet_zone(subnet) if subnet else None) or f"{self.region}a"
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        with self._lock:
            for refusal in self.refusals:
                if refusal.matches(zone, subnet, spot):
                    if refusal.times is not None:
                        refusal.times -= 1
                    message = CAPACITY_MESSAGES.get(refusal.code, "{code} (injected by the sandbox)")
                    return 400, refusal.code, message.format(type=params.get("InstanceType"), zone=zone, subnet=subnet, code=refusal.code)
        return None


def request_service(environ: dict[str, Any]) -> str:
    """The service a signed request is for (its credential scope: ``ec2``, ``iam``…), ``?`` if unsigned."""
    credential = environ.get("HTTP_AUTHORIZATION", "").partition("Credential=")[2].split("/")
    return credential[3] if len(credential) > 3 else "?"


def form_params(environ: dict[str, Any]) -> dict[str, str]:
    """The parameters of a query-protocol request (EC2's, IAM's): its form body, which stays readable
    for the app behind; empty for other protocols."""
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return {}
    if "sandbox.form" not in environ:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["sandbox.form"] = {key: values[0] for key, values in parse_qs(body.decode(errors="replace")).items()}
    return environ["sandbox.form"]


def _error(start_response: Any, status: int, code: str, message: str) -> list[bytes]:
    """EC2's error answer (its XML, as botocore parses it)."""
    from xml.sax.saxutils import escape

    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{escape(message)}</Message>'
        f"</Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>"
    ).encode()
    reason = {400: "Bad Request", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
    return [body]


_ACTIVE: list[StrictEC2] = []  # the strict EC2s of this process's sandboxes (moto's state is the process's)
_LAUNCHING = threading.local()  # the reservation RunInstances just made, until its profile is associated


def install(strict: StrictEC2) -> None:
    """Hooks ``strict`` onto moto's models (once per process): new instances and security groups are stamped."""
    from moto.ec2.models.iam_instance_profile import IamInstanceProfileAssociationBackend
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.models.security_groups import SecurityGroupBackend

    if strict not in _ACTIVE:
        _ACTIVE.append(strict)
    if getattr(InstanceBackend.run_instances, "_sandbox_strict", False):
        return
    run_instances, create_security_group = InstanceBackend.run_instances, SecurityGroupBackend.create_security_group
    describe_instances = InstanceBackend.describe_instances
    associate_profile = IamInstanceProfileAssociationBackend.associate_iam_instance_profile

    def strict_describe_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
        reservations = describe_instances(backend, *args, **kwargs)  # a listing: moto answers requests with ids elsewhere
        for active in [each for each in _ACTIVE if each.on]:
            reservations = active.listed(reservations)
        return reservations

    def strict_run_instances(backend: Any, *args: Any, **kwargs: Any) -> Any:
        reservation = run_instances(backend, *args, **kwargs)
        _LAUNCHING.reservation = reservation
        for active in [each for each in _ACTIVE if each.on]:
            active.launched(reservation.instances)
        return reservation

    def associate_with_every_instance(backend: Any, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        # RunInstances' profile goes to every instance it launches, as on EC2 (moto associates the
        # first one only): each keeps its own association until it ends, whatever its siblings do.
        association = associate_profile(backend, instance_id, *args, **kwargs)
        reservation, _LAUNCHING.reservation = getattr(_LAUNCHING, "reservation", None), None
        if reservation is not None and reservation.instances[0].id == instance_id:
            for sibling in reservation.instances[1:]:
                associate_profile(backend, sibling.id, *args, **kwargs)
        return association

    def strict_create_security_group(backend: Any, *args: Any, **kwargs: Any) -> Any:
        group = create_security_group(backend, *args, **kwargs)
        for active in [each for each in _ACTIVE if each.on]:
            active.made(group.id)
        return group

    strict_run_instances._sandbox_strict = True  # type: ignore[attr-defined]
    InstanceBackend.run_instances = strict_run_instances  # type: ignore[method-assign]
    SecurityGroupBackend.create_security_group = strict_create_security_group  # type: ignore[method-assign]
    InstanceBackend.describe_instances = strict_describe_instances  # type: ignore[method-assign]
    IamInstanceProfileAssociationBackend.associate_iam_instance_profile = associate_with_every_instance  # type: ignore[method-assign]


def uninstall(strict: StrictEC2) -> None:
    """``strict``'s sandbox stopped."""
    if strict in _ACTIVE:
        _ACTIVE.remove(strict)
